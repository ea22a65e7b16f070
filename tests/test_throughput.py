"""``easytune bench throughput`` at smoke: every measurement present, ratios to the sampling-only trajectory
consistent with the seconds, the machine named, and the trajectories doing the work their policies name."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from easytune_lab.cli import main


def test_throughput_bench_reports_every_measure_against_the_sampling_floor(smoke_runs, tmp_path):
    out = tmp_path / "throughput.json"
    assert main(["bench", "throughput", "--profile", "smoke", "--data", str(smoke_runs["data"]), "--threads", "1",
                 "--repeats", "1", "--trajectories", "easytune-last10,draft", "--out", str(out),
                 "--no-progress"]) == 0
    result = json.loads(out.read_text())
    machine = result["machine"]
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == 1
    assert machine["cpu_count"] == os.cpu_count() and machine["cores_available"] >= 1
    assert "initialisation" in result["weights"]
    for key in ("forward", "forward_backward", "adamw_step"):
        assert result["denoiser"][key]["seconds"] > 0
    floor = result["sampling"]["seconds"]
    assert floor > 0 and set(result["trajectories"]) == {"easytune-last10", "draft"}
    T = result["batch"]["sample_steps"]
    for label, row in result["trajectories"].items():
        assert abs(row["ratio_to_sampling"] - row["seconds"] / floor) < 1e-9
        assert len(row["runs"]) == 1 and row["cpu_seconds"] > 0
    last = result["trajectories"]["easytune-last10"]
    assert last["graph_calls"] == last["optimizer_steps"] == min(10, T)
    draft = result["trajectories"]["draft"]
    assert draft["graph_calls"] == draft["k"] and draft["optimizer_steps"] == 1
    assert result["pretrain_step"]["seconds"] > 0 and result["evaluator"]["motions"] == 100


def test_throughput_in_two_processes_reports_their_combined_rate(smoke_runs, tmp_path):
    """``--processes 2`` (what ``reproduce --jobs 2`` does to the CPU): both processes' results, each with the
    thread count asked for, and per measurement their seconds and combined rate (sum of 1 / seconds)."""
    out = tmp_path / "two.json"
    assert main(["bench", "throughput", "--profile", "smoke", "--data", str(smoke_runs["data"]), "--processes", "2",
                 "--threads", "1", "--repeats", "1", "--trajectories", "draft", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["processes"] == 2 and result["threads_per_process"] == 1 and len(result["runs"]) == 2
    assert all(run["machine"]["torch_threads"] == 1 for run in result["runs"])
    assert set(result["combined"]) == {"sampling", "draft", "pretrain_step", "evaluator"}
    for label, row in result["combined"].items():
        expected = [(run["trajectories"].get(label) or run[label])["seconds"] for run in result["runs"]]
        assert row["seconds"] == [round(x, 4) for x in expected]
        assert abs(row["per_second"] - sum(1 / x for x in expected)) < 1e-9


def _recorded_trajectory(smoke_runs, method: str, reference: bool):
    """One smoke trajectory of ``method`` (the profile's lr), with every gradient the optimiser applied."""
    import contextlib

    import numpy as np

    from easytune_lab.finetune.train import Finetuner, finetune_config
    from easytune_lab.runtime import reference_path

    with reference_path() if reference else contextlib.nullcontext():
        cfg = finetune_config(method, "smoke", seed=3, batch_size=3)
        assert cfg.lr == 1e-4
        tuner = Finetuner(cfg, smoke_runs["base"], smoke_runs["reward"], smoke_runs["data"], torch.device("cpu"))
        grads, step = [], tuner.optimizer.step

        def recording_step(*args, **kwargs):
            grads.append(torch.cat([p.grad.detach().flatten() for p in tuner.params]))
            return step(*args, **kwargs)

        tuner.optimizer.step = recording_step
        texts, lengths = tuner.prompts.draw(3, np.random.default_rng(0))
        stats = tuner.iteration(probe_kind="none", texts=texts, lengths=lengths)
        with torch.no_grad():
            samples = tuner.generator.sample_normalised(texts, lengths, seed=1, steps=5)
        weights = torch.cat([p.detach().flatten() for p in tuner.params])
    return grads, stats, samples, weights


def test_optimised_path_gives_the_old_samples_and_gradients(smoke_runs):
    """The speed-ups (runtime.FAST_PATHS: attention path on CPU, fused AdamW, the reward's caption embedding once per
    trajectory) change no result beyond float32 rounding: samples, every applied gradient and the rewards of EasyTune
    (one update per step) and DRaFT (through the chain) equal the previous path within 1e-5."""
    for method in ("easytune", "draft"):
        new_g, new_s, new_x, new_w = _recorded_trajectory(smoke_runs, method, reference=False)
        old_g, old_s, old_x, old_w = _recorded_trajectory(smoke_runs, method, reference=True)
        assert len(new_g) == len(old_g) == new_s.optimizer_steps >= 1
        for a, b in zip(new_g, old_g):
            assert float(b.abs().max()) > 0
            assert float((a - b).abs().max()) <= 1e-5, method
        assert np.allclose(new_s.rewards, old_s.rewards, atol=1e-5, rtol=0)
        assert float((new_x - old_x).abs().max()) <= 1e-5
        # Adam divides by sqrt(v): float32 rounding of a near-zero gradient can move a weight by a fraction of
        # one step of size lr (smoke lr 1e-4), never by whole steps
        assert float((new_w - old_w).abs().max()) <= 0.5 * 1e-4


def test_compiled_denoiser_matches_eager(smoke_runs):
    """``--compile`` (opt-in torch.compile of the denoiser's forward) gives eager's outputs within 1e-5 (forward only:
    compiling the backward too takes minutes on two shared cores); skipped, saying why, where torch.compile cannot run (no C compiler, unsupported Python)."""
    import pytest

    from easytune_lab.diffusion.generate import load_generator
    from easytune_lab.runtime import compile_forward, compile_unavailable

    device = torch.device("cpu")
    reason = compile_unavailable(device)
    if reason is not None:
        pytest.skip(f"torch.compile unavailable: {reason}")
    backbone = load_generator(smoke_runs["base"], device).backbone
    net = backbone.net
    with torch.no_grad():
        cond = backbone.condition(["a person walks forward", "someone jumps"], [40, 24])
    x = torch.randn(2, 40, backbone.config.feature_dim, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 20])

    def output():
        with torch.no_grad():
            return net(x, t, cond)

    eager = output()
    assert compile_forward(net, device)
    compiled = output()
    assert net.forward.uses_compiled(), "the compiled forward failed and fell back to eager"
    assert float((compiled - eager).abs().max()) <= 1e-5
