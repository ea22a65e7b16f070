"""The shared trainer plumbing in reward and evaluator training: a run stopped with ``--stop-after`` (the interruption
pretraining's resume tests use) and continued with ``--resume`` ends with the weights of the uninterrupted run; the
checkpoint holds the model, optimiser, scheduler, RNG states and config; and every trainer's learning rate comes
from :func:`easytune_lab.training.lr_at`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from easytune_lab.cli import main
from easytune_lab.runs import load_tensors
from easytune_lab.training import LRSchedule, lr_at

from helpers import run_cli
from test_reward import write_toy_dataset

# these tests build float32 models: keep them independent of a default dtype set elsewhere
pytestmark = pytest.mark.usefixtures("float32_default")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "data")


def _weights_equal(a: Path, b: Path) -> None:
    wa, wb = load_tensors(a), load_tensors(b)
    assert wa.keys() == wb.keys() and len(wa) > 10
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _history(run: Path) -> list[dict]:
    """The training history without its clock readings."""
    rows = json.loads((run / "metrics.json").read_text())["history"]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _check_checkpoint(run: Path, epoch: int, generators: tuple[str, ...] = (), numpy_generators: tuple[str, ...] = (),
                      extra: tuple[str, ...] = ()) -> dict:
    """The checkpoint of ``run`` holds the model, the optimiser's moments, the scheduler, the RNG states and the
    config; returns its state.json."""
    ckpt = run / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["epoch"] == epoch and state["format"] == 2
    model = load_tensors(ckpt / "weights.safetensors")
    assert len(model) > 10
    for name in extra:
        assert load_tensors(ckpt / f"{name}.safetensors").keys() == model.keys()
    opt = load_tensors(ckpt / "optimizer.safetensors")
    moments = [k for k in opt if k.endswith(".exp_avg_sq")]
    assert moments and all(float(opt[k].abs().sum()) > 0 for k in moments[:3])
    assert {"rng.torch", "rng.numpy", *(f"rng.{g}" for g in generators)} <= set(opt)
    assert set(numpy_generators) <= set(state["rng"]["generators"]) and "python" in state["rng"]
    assert state["param_groups"] and state["param_groups"][0]["lr"] > 0
    assert isinstance(state["scheduler"], dict) and state["scheduler"]["last_epoch"] > 0
    assert isinstance(state["config"], dict) and state["config"]["train"]["epochs"] > epoch
    return state


# ------------------------------------------------------------------------------------------------ evaluator


@pytest.mark.parametrize("loss", ["infonce", "margin"])   # margin also draws from the shift generator
def test_evaluator_stopped_and_resumed_ends_as_the_uninterrupted_run(toy, tmp_path, loss):
    common = ["evaluator", "train", "--data", str(toy), "--profile", "smoke", "--epochs", "3", "--loss", loss,
              "--device", "cpu", "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, "--out", str(full)]) == 0
    assert main([*common, "--out", str(cut), "--stop-after", "1"]) == 0
    assert sorted(p.name for p in cut.iterdir()) == ["checkpoint"]          # no run yet: only the checkpoint
    state = _check_checkpoint(cut, 1, generators=("loader",), numpy_generators=("shift",), extra=("best",))
    assert state["config"]["train"]["loss"] == loss and state["config"]["seed"] == 2022
    assert state["scheduler"]["schedule"] == "constant"
    assert main([*common, "--out", str(cut), "--resume"]) == 0
    _weights_equal(full / "weights.safetensors", cut / "weights.safetensors")
    _weights_equal(full / "checkpoint" / "weights.safetensors", cut / "checkpoint" / "weights.safetensors")
    assert _history(full) == _history(cut) and len(_history(cut)) == 3
    assert json.loads((cut / "manifest.json").read_text())["kind"] == "evaluator"


def test_evaluator_resume_refuses_other_settings_and_finished_runs(toy, tmp_path, capsys):
    common = ["evaluator", "train", "--data", str(toy), "--profile", "smoke", "--device", "cpu", "--no-progress"]
    cut = tmp_path / "cut"
    assert main([*common, "--epochs", "3", "--out", str(cut), "--stop-after", "1"]) == 0
    before = (cut / "checkpoint" / "state.json").read_bytes()
    code, err = run_cli([*common, "--epochs", "4", "--out", str(cut), "--resume"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "train.epochs" in lines[0] and str(cut / "checkpoint") in lines[0]
    assert (cut / "checkpoint" / "state.json").read_bytes() == before
    code, err = run_cli([*common, "--epochs", "3", "--out", str(cut)], capsys)            # not without --resume
    assert code == 2 and "--resume" in err
    assert main([*common, "--epochs", "3", "--out", str(cut), "--resume"]) == 0
    code, err = run_cli([*common, "--epochs", "3", "--out", str(cut), "--resume"], capsys)
    assert code == 2 and "finished run" in err


# ------------------------------------------------------------------------------------------------ reward


def test_noise_aware_reward_stopped_and_resumed_ends_as_the_uninterrupted_run(toy, tmp_path):
    common = ["reward", "train", "--data", str(toy), "--profile", "smoke", "--epochs", "3", "--noise-aware",
              "--device", "cpu"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, "--out", str(full)]) == 0
    assert main([*common, "--out", str(cut), "--stop-after", "1"]) == 0
    assert sorted(p.name for p in cut.iterdir()) == ["checkpoint"]
    state = _check_checkpoint(cut, 1)
    assert state["config"]["train"]["model"]["noise_aware"] and state["config"]["spl"] is None
    assert state["scheduler"]["schedule"] == "cosine" and state["step"] == state["scheduler"]["last_epoch"]
    assert main([*common, "--out", str(cut), "--resume", "--checkpoint-every", "2"]) == 0   # interval may change
    _weights_equal(full / "weights.safetensors", cut / "weights.safetensors")
    _weights_equal(full / "checkpoint" / "optimizer.safetensors", cut / "checkpoint" / "optimizer.safetensors")
    assert _history(full) == _history(cut) and len(_history(cut)) == 3
    metrics = [json.loads((run / "metrics.json").read_text())["retrieval"] for run in (full, cut)]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("mode", ["ours", "official"])
def test_spl_stopped_and_resumed_ends_as_the_uninterrupted_run(toy, tmp_path, mode):
    reward = tmp_path / "reward"
    assert main(["reward", "train", "--data", str(toy), "--profile", "smoke", "--epochs", "1", "--out", str(reward),
                 "--device", "cpu"]) == 0
    common = ["reward", "spl", "--reward", str(reward), "--data", str(toy), "--profile", "smoke", "--epochs", "2",
              "--spl-mode", mode, "--device", "cpu"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, "--out", str(full)]) == 0
    assert main([*common, "--out", str(cut), "--stop-after", "1"]) == 0
    state = _check_checkpoint(cut, 1)
    assert state["config"]["spl"]["mode"] == mode
    assert state["config"]["parents"] == {"reward": str(reward.resolve())}
    assert main([*common, "--out", str(cut), "--resume"]) == 0
    _weights_equal(full / "weights.safetensors", cut / "weights.safetensors")
    assert _history(full) == _history(cut) and len(_history(cut)) == 2
    assert json.loads((cut / "manifest.json").read_text())["kind"] == "reward-spl"


def test_reward_resume_refuses_another_parent_run(toy, tmp_path, capsys):
    runs = [tmp_path / "r1", tmp_path / "r2"]
    for seed, run in enumerate(runs):
        assert main(["reward", "train", "--data", str(toy), "--profile", "smoke", "--epochs", "1", "--seed", str(seed),
                     "--out", str(run), "--device", "cpu"]) == 0
    cut = tmp_path / "cut"
    common = ["reward", "spl", "--data", str(toy), "--profile", "smoke", "--epochs", "2", "--device", "cpu",
              "--out", str(cut)]
    assert main([*common, "--reward", str(runs[0]), "--stop-after", "1"]) == 0
    code, err = run_cli([*common, "--reward", str(runs[1]), "--resume"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "parents.reward" in lines[0]
    code, err = run_cli([*common, "--reward", str(runs[0]), "--resume", "--seed", "3"], capsys)
    assert code == 2 and "seed" in err


# ------------------------------------------------------------------------------------------------ the schedule


def test_lr_schedule_gives_lr_at_bit_for_bit_per_optimiser_step():
    p = torch.nn.Parameter(torch.zeros(3))
    base, warmup, total = 3e-4, 7, 40
    opt = torch.optim.AdamW([p], lr=base)
    schedule = LRSchedule(opt, warmup, total, "cosine", 0.1)
    got = []
    for _ in range(total + 2):
        got.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
        schedule.step()
    assert got == [lr_at(s, base, warmup, total, "cosine", 0.1) for s in range(total + 2)]   # exactly


def test_every_trainer_takes_its_learning_rate_from_lr_at(smoke_runs, toy, tmp_path, monkeypatch):
    """With ``training.lr_at`` replaced by 0.37 times its value, every trainer's logged rate is one the replacement
    gave: none computes its rate another way."""
    import easytune_lab.diffusion.train as pretrain_module
    import easytune_lab.eval.evaluator_train as evaluator_module
    import easytune_lab.finetune.train as finetune_module
    import easytune_lab.reward.train as reward_module
    import easytune_lab.training as training

    real, given = training.lr_at, []

    def scaled(step, base_lr, *args, **kwargs):
        value = 0.37 * real(step, base_lr, *args, **kwargs)
        given.append(value)
        return value

    monkeypatch.setattr(training, "lr_at", scaled)
    for module in (pretrain_module, evaluator_module, finetune_module, reward_module):
        if hasattr(module, "lr_at"):                       # a module that imported the name: the same function
            assert module.lr_at is real, module.__name__
            monkeypatch.setattr(module, "lr_at", scaled)

    # pretraining: the rate of the logged steps
    run = tmp_path / "pretrain"
    assert main(["pretrain", "--data", str(smoke_runs["data"]), "--profile", "smoke", "--iterations", "2",
                 "--batch-size", "4", "--out", str(run), "--device", "cpu", "--no-progress"]) == 0
    rates = json.loads((run / "metrics.json").read_text())["log"]["lr"]
    assert rates and all(r in given for r in rates), (rates, given[-4:])
    # fine-tuning: the LambdaLR multiplier (smoke: a constant 1e-4)
    run = tmp_path / "finetune"
    assert main(["finetune", "--method", "easytune", "--base", str(smoke_runs["base"]), "--reward",
                 str(smoke_runs["reward"]), "--data", str(smoke_runs["data"]), "--profile", "smoke", "--iterations", "1",
                 "--sample-steps", "2", "--batch-size", "2", "--out", str(run), "--device", "cpu",
                 "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["log"]["lr"] == [1e-4 * 0.37]
    # evaluator (constant): the epoch at 0.37 times the profile's rate
    run = tmp_path / "evaluator"
    assert main(["evaluator", "train", "--data", str(toy), "--profile", "smoke", "--epochs", "1", "--out", str(run),
                 "--device", "cpu", "--no-progress"]) == 0
    assert [row["lr"] for row in _history(run)] == [0.37 * 3e-3]
    # reward (warm-up, cosine): the rate of each epoch's last step
    run = tmp_path / "reward"
    given.clear()
    assert main(["reward", "train", "--data", str(toy), "--profile", "smoke", "--epochs", "2", "--out", str(run),
                 "--device", "cpu"]) == 0
    rates = [row["lr"] for row in _history(run)]
    assert len(rates) == 2 and all(r in given for r in rates), (rates, given)
    assert rates[-1] == 0.37 * real(5, 3e-4, 2, 6, "cosine", reward_module.MIN_LR_RATIO)   # 57 clips: 3 steps/epoch
