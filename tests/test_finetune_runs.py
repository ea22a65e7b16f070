"""Fine-tuning on real (smoke-sized) backbones and rewards: memory scaling, resume, CLI, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from easytune_lab.cli import main
from easytune_lab.finetune.bench import memory_benchmark
from easytune_lab.finetune.train import finetune_config, run_finetune
from easytune_lab.runs import load_tensors


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    data, base, reward = root / "data", root / "mdm", root / "reward"
    for argv in (["data", "synth", "--out", str(data), "--num-motions", "240", "--seed", "3", "--no-progress"],
                 ["pretrain", "--backbone", "mdm", "--data", str(data), "--profile", "smoke", "--out", str(base)],
                 ["reward", "train", "--data", str(data), "--profile", "smoke", "--out", str(reward)]):
        assert main(argv) == 0, argv
    return {"root": root, "data": data, "base": base, "reward": reward}


def test_memory_is_constant_in_T_for_easytune_and_linear_for_draft(runs):
    # The committed benchmark (results/smoke/finetune/memory_smoke.json) goes to T = 1000; CI checks the same
    # scaling on a shorter sweep so that it stays fast.
    device = torch.device("cpu")
    common = dict(device=device, batch_size=1, length=40, progress=False)
    rows = memory_benchmark(["easytune", "draft"], [5, 25], "smoke", runs["base"], runs["reward"], runs["data"],
                            **common)
    rows += memory_benchmark(["easytune"], [100], "smoke", runs["base"], runs["reward"], runs["data"], **common)
    peak = {(r["method"], r["steps"]): r["peak_bytes"] - r["baseline_bytes"] for r in rows}
    assert peak[("easytune", 5)] > 0
    assert abs(peak[("easytune", 100)] - peak[("easytune", 5)]) <= 0.05 * peak[("easytune", 5)]
    assert peak[("draft", 25)] >= 0.9 * 5 * peak[("draft", 5)]
    assert peak[("easytune", 25)] <= 0.10 * peak[("draft", 25)]
    graph_calls = {(r["method"], r["steps"]): r["graph_calls"] for r in rows}
    assert graph_calls[("draft", 25)] == 25 and graph_calls[("easytune", 100)] == 100


def test_easytune_raises_the_reward_and_writes_a_generator_run(runs, tmp_path):
    from easytune_lab.diffusion.generate import load_generator

    out = tmp_path / "ft"
    assert main(["finetune", "--method", "easytune", "--base", str(runs["base"]), "--reward", str(runs["reward"]),
                 "--data", str(runs["data"]), "--profile", "smoke", "--out", str(out), "--no-progress"]) == 0
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 4 * 10  # one update per denoising step, T = 10, 4 trajectories
    assert metrics["reward_after"] > metrics["reward_before"]
    assert set(metrics["time_per_phase"]) == {"sampling", "reward", "backward", "optimizer"}
    gen = load_generator(out, "cpu")
    motions = gen.generate(["a person walks forward"], [60], seed=0)
    assert motions[0].shape == (60, 263) and np.isfinite(motions[0]).all()
    base = load_tensors(runs["base"] / "weights.safetensors")
    tuned = load_tensors(out / "weights.safetensors")
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert changed and all(k.startswith("denoiser.") for k in changed)


@pytest.mark.parametrize("method", ["easytune", "draft"])
def test_resume_after_interruption_matches_uninterrupted_run(runs, tmp_path, method):
    device = torch.device("cpu")
    cfg = finetune_config(method, "smoke", iterations=4, checkpoint_every=1)
    run_finetune(cfg, runs["base"], runs["reward"], runs["data"], tmp_path / "full", device, progress=False)
    part = tmp_path / "part"
    run_finetune(cfg, runs["base"], runs["reward"], runs["data"], part, device, progress=False, stop_after=2)
    assert not (part / "weights.safetensors").exists()
    run_finetune(cfg, runs["base"], runs["reward"], runs["data"], part, device, progress=False, resume=True)
    full = load_tensors(tmp_path / "full" / "weights.safetensors")
    resumed = load_tensors(part / "weights.safetensors")
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6)


def test_nonfinite_reward_stops_with_a_clear_error(runs, tmp_path, monkeypatch):
    from easytune_lab.finetune import train

    real = train.reward_function

    def poisoned(reward_model, traj, *scale):
        f = real(reward_model, traj, *scale)
        return lambda x, t: f(x, t) * float("nan")

    monkeypatch.setattr(train, "reward_function", poisoned)
    cfg = finetune_config("easytune", "smoke")
    with pytest.raises(train.NonFiniteError, match="non-finite"):
        run_finetune(cfg, runs["base"], runs["reward"], runs["data"], tmp_path / "nan", torch.device("cpu"),
                     progress=False)
    assert not (tmp_path / "nan" / "weights.safetensors").exists()


@pytest.mark.parametrize("extra, message", [
    (["--method", "sgd"], "--method: unknown method 'sgd'"),
    (["--method", "draft", "--k", "11"], "--k: must be in [1, 10]"),
    (["--method", "easytune", "--profile", "huge"], "--profile: unknown profile 'huge'"),
    (["--method", "easytune", "--iterations", "0"], "--steps: must be an integer in [1,"),
])
def test_bad_finetune_input_gives_one_line_error(runs, tmp_path, extra, message):
    out = tmp_path / "bad"
    argv = ["finetune", "--base", str(runs["base"]), "--reward", str(runs["reward"]), "--data", str(runs["data"]),
            "--out", str(out), "--no-progress", *extra]
    if "--profile" not in extra:
        argv += ["--profile", "smoke"]
    proc = subprocess.run([sys.executable, "-m", "easytune_lab.cli", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_base_run_is_named(runs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "easytune_lab.cli", "finetune", "--method", "easytune", "--base",
                           str(tmp_path / "nope"), "--reward", str(runs["reward"]), "--data", str(runs["data"]),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_length_sorted_generation_keeps_the_callers_order(runs):
    from easytune_lab.diffusion.generate import load_generator

    gen = load_generator(runs["base"], "cpu")
    texts = ["a person walks forward", "a person jumps", "a person waves", "a person turns around"]
    lengths = [40, 120, 64, 96]
    motions = gen.generate(texts, lengths, seed=0, batch_size=2)
    assert [m.shape[0] for m in motions] == lengths
    # each batch is sampled from the sorted order: [120, 96] then [64, 40]; the second batch's seed is seed + 2
    alone = gen.generate(texts[2::-2][:1] + [texts[0]], [64, 40], seed=2, batch_size=2)
    np.testing.assert_allclose(motions[2], alone[0], atol=1e-5)
    np.testing.assert_allclose(motions[0], alone[1], atol=1e-5)
    unsorted = gen.generate(texts, lengths, seed=0, batch_size=2, by_length=False)
    assert [m.shape[0] for m in unsorted] == lengths


def test_speed_benchmark_interleaves_methods_and_counts_updates(runs):
    from easytune_lab.finetune.bench import speed_benchmark, speedup

    result = speed_benchmark(["easytune", "draft"], 0.01, "smoke", runs["base"], runs["reward"], runs["data"],
                             torch.device("cpu"), max_iterations=2, progress=False)
    for method, per_iteration in (("easytune", 10), ("draft", 1)):  # smoke T = 10: EasyTune updates every step
        curve = result["curves"][method]
        assert curve["iterations"] == [0, 1]                          # budget spent after one trajectory
        assert curve["optimizer_steps"] == [0, per_iteration]
        assert curve["seconds"][1] > 0 and len(curve["reward"]) == 2 and np.isfinite(curve["reward"]).all()
    # speed-up arithmetic: the fast method reaches the slow one's final reward at its second point
    fake = {"curves": {"draft": {"seconds": [0, 10, 20, 40], "reward": [0.0, 0.1, 0.2, 0.3]},
                       "easytune": {"seconds": [0, 4, 8], "reward": [0.0, 0.25, 0.35]}}}
    assert speedup(fake) == {"fast_curve": "easytune", "slow_curve": "draft", "target_reward": 0.3,
                             "slow_seconds": 40, "fast_seconds": 8.0, "speedup": 5.0,
                             "sustained_fast_seconds": 8.0, "sustained_speedup": 5.0, "start_reward": 0.0,
                             "fast_final_reward": 0.35, "fast_best_reward": 0.35}
    # a curve that touches the target once and falls back is not sustained there
    fake["curves"]["easytune"] = {"seconds": [0, 4, 8, 12, 16], "reward": [0.0, 0.31, 0.1, 0.32, 0.4]}
    got = speedup(fake)
    assert (got["fast_seconds"], got["speedup"], got["sustained_fast_seconds"], got["sustained_speedup"]) == (
        4.0, 10.0, 12.0, 40 / 12)
    fake["curves"]["easytune"]["reward"][-1] = 0.2                     # ends below: never sustained
    assert speedup(fake)["sustained_fast_seconds"] is None and speedup(fake)["sustained_speedup"] is None


def test_speed_benchmark_lr_grid_compares_each_method_at_its_best_lr(runs):
    from easytune_lab.finetune.bench import best_curve, speed_benchmark, speedup

    result = speed_benchmark(["easytune", "draft"], 0.01, "smoke", runs["base"], runs["reward"], runs["data"],
                             torch.device("cpu"), max_iterations=2, progress=False, eval_every=2,
                             lrs={"draft": [1e-5, 1e-4]})
    curves = result["curves"]
    assert set(curves) == {"easytune", "draft@1e-05", "draft@0.0001"}
    assert [curves[k]["lr"] for k in ("draft@1e-05", "draft@0.0001")] == [1e-5, 1e-4]
    assert curves["easytune"]["lr"] == 1e-4                          # the smoke profile's lr
    for curve in curves.values():                                     # evaluated at the start and at the end only
        assert curve["iterations"] == [0, 1] and len(curve["reward"]) == 2
    # the best curve of a grid is the one with the highest final reward, and speed-ups compare best curves
    fake = {"curves": {"draft@1": {"method": "draft", "seconds": [0, 10], "reward": [0.0, 0.2]},
                       "draft@2": {"method": "draft", "seconds": [0, 10], "reward": [0.0, 0.4]},
                       "easytune@1": {"method": "easytune", "seconds": [0, 5], "reward": [0.0, 0.3]},
                       "easytune@2": {"method": "easytune", "seconds": [0, 2, 5], "reward": [0.0, 0.45, 0.25]}}}
    assert best_curve(fake, "draft") == "draft@2" and best_curve(fake, "easytune") == "easytune@1"
    got = speedup(fake)
    assert (got["fast_curve"], got["slow_curve"], got["target_reward"], got["fast_seconds"]) == (
        "easytune@1", "draft@2", 0.4, None)                           # the best-by-final curve never got there
    with pytest.raises(KeyError):
        best_curve(fake, "alignprop")


@pytest.mark.parametrize("specs, expected", [
    (["1e-6,1e-5"], {"*": [1e-6, 1e-5]}),
    (["draft=2e-6, 2e-5", "easytune=3e-7"], {"draft": [2e-6, 2e-5], "easytune": [3e-7]}),
])
def test_parse_lrs(specs, expected):
    from easytune_lab.commands.bench import parse_lrs

    assert parse_lrs(specs, ["easytune", "draft"]) == expected


@pytest.mark.parametrize("specs, message", [
    (["refl=1e-6"], "not in --methods"),
    (["draft=fast"], "not a comma-separated list"),
    (["draft=0"], "must be positive"),
    (["draft=1e-6", "draft=1e-5"], "two grids for draft"),
])
def test_parse_lrs_rejects_bad_grids(specs, message):
    from easytune_lab.commands.bench import parse_lrs
    from easytune_lab.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_lrs(specs, ["easytune", "draft"])


def test_speed_benchmark_accumulated_variant_is_its_own_curve(runs):
    """``easytune+acc``: EasyTune's per-step gradients, one optimiser step per trajectory."""
    from easytune_lab.finetune.bench import best_curve, speed_benchmark

    result = speed_benchmark(["easytune", "easytune+acc"], 0.01, "smoke", runs["base"], runs["reward"],
                             runs["data"], torch.device("cpu"), max_iterations=1, progress=False,
                             lrs={"easytune+acc": [1e-5]})
    curves = result["curves"]
    assert set(curves) == {"easytune", "easytune+acc@1e-05"}
    assert curves["easytune"]["optimizer_steps"] == [0, 10]            # smoke T = 10: one update per step
    assert curves["easytune+acc@1e-05"]["optimizer_steps"] == [0, 1]   # the same gradients, summed
    assert curves["easytune+acc@1e-05"]["method"] == "easytune+acc"
    assert best_curve(result, "easytune") == "easytune"               # a variant never stands in for its method


@pytest.mark.parametrize("text, variants, message", [
    ("easytune,dpo", False, "unknown method 'dpo'"),
    ("easytune+acc", False, "unknown method 'easytune\\+acc'"),
    ("draft+sum", True, "optionally with '\\+acc'"),
    ("draft,draft", True, "listed twice"),
])
def test_parse_methods_rejects_unknown_names(text, variants, message):
    from easytune_lab.commands.bench import parse_methods
    from easytune_lab.errors import UserError

    with pytest.raises(UserError, match=message):
        parse_methods(text, variants=variants)


def test_parse_methods_accepts_accumulated_variants_for_speed():
    from easytune_lab.commands.bench import parse_methods

    assert parse_methods("easytune, easytune+acc,draft", variants=True) == ["easytune", "easytune+acc", "draft"]
