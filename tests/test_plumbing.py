"""The trainer plumbing every trainer shares: the one learning-rate schedule, the one sinusoidal embedding (identical to
the copies it replaced), and the one checkpoint format with its resume path — including checkpoints written in the
formats before it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from easytune_lab.cli import main
from easytune_lab.diffusion.embedding import sinusoidal_embedding, sinusoidal_table
from easytune_lab.errors import UserError
from easytune_lab.finetune.train import finetune_config, run_finetune
from easytune_lab.runs import load_tensors, save_tensors
from easytune_lab.runtime import available_cores, default_threads
from easytune_lab.training import has_checkpoint, load_checkpoint, lr_at, lr_scheduler, save_checkpoint

# ------------------------------------------------------------------------------------------------ the schedule


def test_lr_at_gives_the_documented_warmup_cosine_sequence():
    got = [lr_at(s, 1.0, 2, 6, "cosine") for s in range(8)]
    want = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 - math.cos(math.pi / 4)), 0.0, 0.0]
    assert got == pytest.approx(want, abs=1e-12)
    assert round(got[3], 3) == 0.854 and round(got[5], 3) == 0.146   # the docstring's numbers


def test_lr_at_constant_and_min_ratio():
    assert [lr_at(s, 3e-4, 2, 10, "constant") for s in range(5)] == [1.5e-4, 3e-4, 3e-4, 3e-4, 3e-4]
    assert [lr_at(s, 2.0, 0, 4, "cosine", 0.1) for s in (0, 2, 4, 9)] == pytest.approx([2.0, 1.1, 0.2, 0.2])
    with pytest.raises(UserError, match="lr_schedule"):
        lr_at(0, 1.0, 0, 10, "linear")


def _old_pretrain(lr, warmup, min_ratio, s, n):  # diffusion/train.py learning_rate before the shared schedule
    warm = min(warmup, max(n // 4, 1))
    if s < warm:
        return lr * (s + 1) / warm
    progress = (s - warm) / max(n - warm, 1)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _old_reward(step, total, base, warmup):  # reward/train.py _lr_at before
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _old_finetune(step, warmup, total, schedule):  # finetune/train.py lr_lambda before
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return 1.0


def test_lr_at_reproduces_the_three_schedules_it_replaced_bit_for_bit():
    for lr in (5e-4, 1e-3, 2e-4):
        for warmup, n in ((5, 40), (80, 800), (2, 20), (0, 7), (10, 3)):
            warm = min(warmup, max(n // 4, 1))
            for s in range(n + 2):
                assert lr_at(s, lr, warm, n, "cosine", 0.1) == _old_pretrain(lr, warmup, 0.1, s, n)
                assert lr_at(s, lr, warmup, n, "cosine", 0.1) == _old_reward(s, n, lr, warmup)
                for schedule in ("constant", "cosine"):
                    assert lr_at(s, 1.0, warmup, n, schedule) == _old_finetune(s, warmup, n, schedule)


def test_lr_scheduler_applies_lr_at_per_optimiser_step():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = lr_scheduler(opt, warmup=3, total=9, schedule="cosine")
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [0.4 * lr_at(s, 1.0, 3, 9, "cosine") for s in range(10)]
    with pytest.raises(UserError, match="lr_schedule"):
        lr_scheduler(opt, 0, 9, "step")


# ------------------------------------------------------------------------------------------------ the embedding


def _old_table(length, dim):  # text_encoder.sinusoidal_table before
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return table


def _old_timestep(t, dim, max_period=10000.0):  # backbone.timestep_features before
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _old_reward_embedding(positions, dim):  # reward.retrieval.sinusoidal before
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = positions.float()[..., None] * freqs
    return F.pad(torch.cat([torch.sin(args), torch.cos(args)], dim=-1), (0, dim % 2))


@pytest.mark.parametrize("dim", [2, 7, 12, 32, 48, 63, 64, 128, 256, 512])
def test_the_one_embedding_equals_each_copy_it_replaced_exactly(dim):
    t = torch.tensor([0, 1, 17, 250, 999])
    assert torch.equal(sinusoidal_table(203, dim), _old_table(203, dim))
    assert torch.equal(sinusoidal_embedding(t, dim, "cos_sin"), _old_timestep(t, dim))
    assert torch.equal(sinusoidal_embedding(t, dim, "sin_cos"), _old_reward_embedding(t, dim))
    assert torch.equal(sinusoidal_embedding(torch.arange(9), dim, "sin_cos"), _old_reward_embedding(torch.arange(9), dim))


def test_embedding_layouts_hold_the_same_values():
    p = torch.arange(6)
    inter, cs, sc = (sinusoidal_embedding(p, 8, layout) for layout in ("interleaved", "cos_sin", "sin_cos"))
    assert inter.shape == cs.shape == sc.shape == (6, 8)
    assert torch.equal(inter[0], torch.tensor([0.0, 1.0] * 4))           # PE(0): sin 0, cos 0
    torch.testing.assert_close(inter[:, 0::2], sc[:, :4], rtol=0, atol=1e-6)   # same frequencies, up to rounding
    assert torch.equal(cs[:, :4], sc[:, 4:]) and torch.equal(cs[:, 4:], sc[:, :4])
    with pytest.raises(ValueError, match="layout"):
        sinusoidal_embedding(p, 8, "random")


# ------------------------------------------------------------------------------------------------ the checkpoint


def _toy(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, lr_scheduler(opt, 2, 12, "cosine")


def _toy_steps(model, opt, sched, noise, rng, n):
    for _ in range(n):
        x = torch.randn(5, 3, generator=noise) + float(rng.normal())
        loss = (model(x) - torch.rand(5, 1)).pow(2).mean()   # torch.rand: the global generator
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    model, opt, sched = _toy()
    noise, rng = torch.Generator().manual_seed(1), np.random.default_rng(2)
    _toy_steps(model, opt, sched, noise, rng, 4)
    save_checkpoint(tmp_path, model.state_dict(), opt, {"step": 4, "log": [1, 2]}, generators={"noise": noise},
                    numpy_generators={"rng": rng}, scheduler=sched, config={"lr": 1e-2})
    _toy_steps(model, opt, sched, noise, rng, 5)
    want = [p.detach().clone() for p in model.parameters()]

    state = json.loads((tmp_path / "checkpoint" / "state.json").read_text())
    assert state["format"] == 2 and state["config"] == {"lr": 1e-2} and state["scheduler"]["last_epoch"] == 4
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["optimizer.safetensors", "state.json",
                                                                          "weights.safetensors"]
    model2, opt2, sched2 = _toy(seed=9)  # other weights: everything must come from the checkpoint
    noise2, rng2 = torch.Generator(), np.random.default_rng(0)
    torch.manual_seed(123)
    ckpt = load_checkpoint(tmp_path, model2, required=("step", "log"), generators=("noise",),
                           numpy_generators=("rng",), params=lambda s: list(model2.parameters()))
    ckpt.restore(opt2, sched2, {"noise": noise2}, {"rng": rng2})
    assert ckpt.state["step"] == 4 and ckpt.state["log"] == [1, 2] and not ckpt.legacy
    assert sched2.last_epoch == 4 and opt2.param_groups[0]["lr"] == 1e-2 * lr_at(4, 1.0, 2, 12, "cosine")
    _toy_steps(model2, opt2, sched2, noise2, rng2, 5)
    for a, b in zip(want, model2.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_files_that_do_not_fit_are_one_line_naming_the_file(tmp_path):
    model, opt, sched = _toy()
    _toy_steps(model, opt, sched, torch.Generator(), np.random.default_rng(0), 1)
    save_checkpoint(tmp_path, model.state_dict(), opt, {"step": 1}, generators={"noise": torch.Generator()})
    other = torch.nn.Linear(3, 2)
    with pytest.raises(UserError, match="weights.safetensors"):
        load_checkpoint(tmp_path, other, required=("step",))
    with pytest.raises(UserError, match=r"optimizer.safetensors: not this run's optimiser state \(no rng.train\)"):
        load_checkpoint(tmp_path, model, generators=("train",))
    with pytest.raises(UserError, match="optimizer.safetensors: optimiser state state.0.exp_avg does not fit"):
        load_checkpoint(tmp_path, model, params=lambda s: [torch.zeros(7)] * 4)
    with pytest.raises(UserError, match="state.json: damaged checkpoint state"):
        load_checkpoint(tmp_path, model, required=("iteration",))
    with pytest.raises(UserError, match="has no checkpoint"):
        load_checkpoint(tmp_path / "elsewhere", model)


# ------------------------------------------------------------------------------------------------ the trainers


def _same_weights(a, b):
    wa, wb = load_tensors(a / "weights.safetensors"), load_tensors(b / "weights.safetensors")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _pretrain(runs, out, *extra):
    assert main(["pretrain", "--backbone", "mdm", "--data", str(runs["data"]), "--profile", "smoke", "--steps", "4",
                 "--checkpoint-every", "2", "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(out),
                 *extra]) == 0


def test_pretraining_checkpoint_is_the_shared_format_and_an_old_one_still_resumes(smoke_runs, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    _pretrain(smoke_runs, full)
    _pretrain(smoke_runs, cut, "--stop-after", "2")
    state_path = cut / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    assert state["format"] == 2 and state["config"]["backbone"] == "mdm" and state["step"] == 2
    # the format before: no scheduler, config, format or named NumPy generators
    old = {k: v for k, v in state.items() if k not in ("scheduler", "config", "format")}
    old["rng"] = {k: v for k, v in state["rng"].items() if k != "generators"}
    state_path.write_text(json.dumps(old))
    assert main(["pretrain", "--backbone", "mdm", "--data", str(smoke_runs["data"]), "--out", str(cut), "--resume",
                 "--device", "cpu", "--no-progress"]) == 0
    _same_weights(full, cut)


def _to_legacy_finetune_checkpoint(ckpt):
    """Rewrite a fine-tuning checkpoint as the code before the shared format wrote it."""
    weights, extra = load_tensors(ckpt / "weights.safetensors"), load_tensors(ckpt / "optimizer.safetensors")
    state = json.loads((ckpt / "state.json").read_text())
    tensors = {f"model.{k}": v for k, v in weights.items()}
    tensors.update({f"optim.{k[len('state.'):]}": v for k, v in extra.items() if k.startswith("state.")})
    tensors.update({k: extra[k] for k in ("rng.noise", "rng.torch")})
    for name in ("weights.safetensors", "optimizer.safetensors"):
        (ckpt / name).unlink()
    save_tensors(ckpt / "state.safetensors", tensors)
    old = {k: state[k] for k in ("iteration", "elapsed", "log", "evals")}
    old.update(numpy_rng=state["rng"]["generators"]["rng"], scheduler=state["scheduler"])
    (ckpt / "state.json").write_text(json.dumps(old))


@pytest.mark.parametrize("method", ["easytune", "draft"])
def test_finetuning_checkpoint_round_trip_and_an_old_format_checkpoint_resumes(smoke_runs, tmp_path, method):
    r, cpu = smoke_runs, torch.device("cpu")
    cfg = finetune_config(method, "smoke", iterations=3, checkpoint_every=1, sample_steps=4, batch_size=2,
                          warmup=1, lr_schedule="cosine", **({"k": 2} if method == "draft" else {}))
    run_finetune(cfg, r["base"], r["reward"], r["data"], tmp_path / "full", cpu, progress=False)
    for name, legacy in (("new", False), ("old", True)):
        part = tmp_path / name
        run_finetune(cfg, r["base"], r["reward"], r["data"], part, cpu, progress=False, stop_after=1)
        assert has_checkpoint(part) and not (part / "weights.safetensors").exists()
        state = json.loads((part / "checkpoint" / "state.json").read_text())
        assert state["format"] == 2 and state["config"]["method"] == method and state["iteration"] == 1
        if legacy:
            _to_legacy_finetune_checkpoint(part / "checkpoint")
        metrics = run_finetune(cfg, r["base"], r["reward"], r["data"], part, cpu, progress=False, resume=True)
        _same_weights(tmp_path / "full", part)
        full = json.loads((tmp_path / "full" / "metrics.json").read_text())
        assert metrics["log"]["lr"] == full["log"]["lr"] and metrics["log"]["reward"] == full["log"]["reward"]


def test_a_damaged_old_format_checkpoint_is_one_line_naming_the_file(smoke_runs, tmp_path):
    r = smoke_runs
    cfg = finetune_config("easytune", "smoke", iterations=2, checkpoint_every=1, sample_steps=4, batch_size=2)
    part = tmp_path / "part"
    run_finetune(cfg, r["base"], r["reward"], r["data"], part, torch.device("cpu"), progress=False, stop_after=1)
    _to_legacy_finetune_checkpoint(part / "checkpoint")
    path = part / "checkpoint" / "state.safetensors"
    tensors = load_tensors(path)
    del tensors["rng.noise"]
    save_tensors(path, tensors)
    with pytest.raises(UserError, match=f"{path}: not this run's checkpoint state"):
        run_finetune(cfg, r["base"], r["reward"], r["data"], part, torch.device("cpu"), progress=False, resume=True)


def test_default_threads_follow_the_users_thread_settings(monkeypatch):
    """EASYTUNE_THREADS, then OMP_NUM_THREADS, then the available cores shared by torchrun's local processes; a bad
    value is a one-line UserError naming the variable."""
    for name in ("EASYTUNE_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert default_threads() == available_cores() >= 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(available_cores() * 2))
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.setenv("EASYTUNE_THREADS", "5")
    assert default_threads() == 5
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("EASYTUNE_THREADS", bad)
        with pytest.raises(UserError, match=f"EASYTUNE_THREADS: must be a positive integer \\(got '{bad}'\\)"):
            default_threads()
