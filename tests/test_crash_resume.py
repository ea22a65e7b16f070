"""Holding up: a run killed with SIGKILL resumes to the uninterrupted result, checkpoints are swapped in whole,
pickle checkpoints need --allow-pickle, and a NaN stops a run cleanly with its last good checkpoint kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from easytune_lab.cli import main
from easytune_lab.errors import UserError
from easytune_lab.runs import checkpoint_writer, find_checkpoint, load_tensors, pickle_allowed, write_json


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = load_tensors(a / "weights.safetensors"), load_tensors(b / "weights.safetensors")
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=k)


def run_and_kill(argv: list[str], checkpoint: Path, key: str, at_least: int, timeout: float = 120) -> int:
    """Start ``easytune ARGV`` in a subprocess and SIGKILL it as soon as ``checkpoint/state.json`` records
    ``key >= at_least``; return the recorded value."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "easytune_lab.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state = checkpoint / "state.json"
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if state.is_file():
                try:
                    value = json.loads(state.read_text())[key]
                except (json.JSONDecodeError, KeyError, OSError):
                    value = -1
                if value >= at_least:
                    proc.send_signal(signal.SIGKILL)
                    break
            assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
            time.sleep(0.005)
        else:
            pytest.fail("no checkpoint appeared in time")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return value


def test_pretraining_killed_mid_run_resumes_to_the_uninterrupted_weights(smoke_runs, tmp_path):
    common = ["pretrain", "--backbone", "mdm", "--data", str(smoke_runs["data"]), "--profile", "smoke",
              "--iterations", "12", "--checkpoint-every", "2", "--batch-size", "4", "--dtype", "float64", "--device",
              "cpu", "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, "--out", str(full)]) == 0
    step = run_and_kill([*common, "--out", str(cut)], cut / "checkpoint", "step", 2)
    assert step < 12 and not (cut / "weights.safetensors").exists()
    assert json.loads((cut / "manifest.json").read_text())["status"] == "running"
    assert main([*common, "--out", str(cut), "--resume"]) == 0
    assert_same_weights(full, cut)
    logs = [json.loads((d / "metrics.json").read_text())["log"] for d in (full, cut)]
    assert logs[0] == logs[1]


def test_finetuning_killed_mid_run_resumes_to_the_uninterrupted_weights(smoke_runs, tmp_path):
    common = ["finetune", "--method", "easytune", "--base", str(smoke_runs["base"]), "--reward",
              str(smoke_runs["reward"]), "--data", str(smoke_runs["data"]), "--profile", "smoke", "--iterations", "8",
              "--sample-steps", "4", "--batch-size", "2", "--checkpoint-every", "1", "--dtype", "float64",
              "--device", "cpu", "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*common, "--out", str(full)]) == 0
    done = run_and_kill([*common, "--out", str(cut)], cut / "checkpoint", "iteration", 2)
    assert done < 8 and not (cut / "weights.safetensors").exists()
    assert main([*common, "--out", str(cut), "--resume"]) == 0
    assert_same_weights(full, cut)
    assert json.loads((cut / "metrics.json").read_text())["optimizer_steps"] == 8 * 4


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(smoke_runs, tmp_path):
    common = ["pretrain", "--backbone", "mdm", "--data", str(smoke_runs["data"]), "--iterations", "2", "--batch-size",
              "4", "--device", "cpu", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    early = tmp_path / "early"
    early.mkdir()
    (early / ".manifest.json.x1y2.tmp").write_text("{")  # what a kill during the first write leaves
    assert main([*common, "--out", str(early), "--resume"]) == 0
    assert_same_weights(tmp_path / "full", early, atol=0)


@pytest.mark.parametrize("moment", ["building", "between_renames", "before_cleanup"])
def test_a_checkpoint_swap_cut_short_leaves_a_complete_checkpoint(tmp_path, moment):
    def write(step: int) -> None:
        with checkpoint_writer(tmp_path) as new:
            write_json(new / "weights.json", {"step": step})
            write_json(new / "state.json", {"step": step})

    write(1)
    write(2)
    ckpt, new, old = tmp_path / "checkpoint", tmp_path / "checkpoint.new", tmp_path / "checkpoint.old"
    if moment == "building":  # killed while the next checkpoint was half written
        new.mkdir()
        write_json(new / "weights.json", {"step": 3})
        expected = 2
    elif moment == "between_renames":  # checkpoint -> .old done, .new -> checkpoint not yet
        shutil.copytree(ckpt, new)
        write_json(new / "state.json", {"step": 3})
        ckpt.rename(old)
        expected = 3
    else:  # .new is in place, the old one not yet removed
        shutil.copytree(ckpt, old)
        expected = 2
    found = find_checkpoint(tmp_path)
    assert found == ckpt and json.loads((ckpt / "state.json").read_text())["step"] == expected
    assert not new.exists() and not old.exists()


# ------------------------------------------------------------------------------------------------ pickles

def test_pickle_checkpoints_are_refused_unless_allowed(smoke_runs, tmp_path, capsys):
    run = tmp_path / "pickled"
    shutil.copytree(smoke_runs["base"], run, ignore=shutil.ignore_patterns("checkpoint"))
    state = load_tensors(run / "weights.safetensors")
    (run / "weights.safetensors").unlink()
    torch.save({"state_dict": state, "epoch": 3}, run / "weights.pt")
    out = tmp_path / "x.npy"
    argv = ["sample", "--run", str(run), "--text", "a person walks", "--length", "40", "--sample-steps", "2",
            "--device", "cpu", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights.pt" in err[0] and "--allow-pickle" in err[0]
    assert not out.exists()
    assert main([*argv, "--allow-pickle"]) == 0  # the user vouches for the file
    assert out.is_file()
    with pytest.raises(UserError, match="--allow-pickle"):
        load_tensors(run / "weights.pt")
    with pickle_allowed():
        assert set(load_tensors(run / "weights.pt")) == set(state)


def test_a_text_model_directory_with_only_pickle_weights_is_refused(smoke_runs, tmp_path, capsys):
    model = tmp_path / "hf-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(2)}, model / "pytorch_model.bin")
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(smoke_runs["data"]), "--text-encoder", str(model), "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pytorch_model.bin" in err[0] and "--allow-pickle" in err[0]
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ NaN

def test_a_nan_loss_stops_pretraining_and_keeps_the_last_good_checkpoint(smoke_runs, tmp_path, capsys, monkeypatch):
    from easytune_lab.diffusion.denoiser import MDMBackbone

    common = ["pretrain", "--backbone", "mdm", "--data", str(smoke_runs["data"]), "--iterations", "5",
              "--checkpoint-every", "2", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    real, calls = MDMBackbone.loss, []

    def poisoned(self, stage, batch, generator):
        calls.append(1)
        loss = real(self, stage, batch, generator)
        return loss * float("nan") if len(calls) == 3 else loss  # step 3 diverges

    monkeypatch.setattr(MDMBackbone, "loss", poisoned)
    run = tmp_path / "nan"
    assert main([*common, "--out", str(run)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nan at step 3" in err[0] and "checkpoint (step 2)" in err[0]
    assert "Traceback" not in err[0]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (run / "weights.safetensors").exists()
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    # the kept checkpoint is good: resumed, the run ends where an undisturbed run does
    monkeypatch.setattr(MDMBackbone, "loss", real)
    assert main([*common, "--out", str(run), "--resume"]) == 0
    assert main([*common, "--out", str(tmp_path / "clean")]) == 0
    assert_same_weights(tmp_path / "clean", run, atol=0)


def test_a_nan_reward_stops_finetuning_from_the_command_line(smoke_runs, tmp_path, capsys, monkeypatch):
    from easytune_lab.finetune import train

    real, calls = train.reward_function, []

    def poisoned(reward_model, traj, *scale):
        calls.append(1)
        f = real(reward_model, traj, *scale)
        return (lambda x, t: f(x, t) * float("nan")) if len(calls) == 3 else f  # evaluation, iteration 1, 2

    monkeypatch.setattr(train, "reward_function", poisoned)
    run = tmp_path / "nan"
    argv = ["finetune", "--method", "easytune", "--base", str(smoke_runs["base"]), "--reward",
            str(smoke_runs["reward"]), "--data", str(smoke_runs["data"]), "--iterations", "3", "--sample-steps", "3",
            "--batch-size", "2", "--checkpoint-every", "1", "--out", str(run), "--device", "cpu", "--no-progress"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite" in err[0] and "iteration 2" in err[0] and "(iteration 1)" in err[0]
    assert json.loads((run / "checkpoint" / "state.json").read_text())["iteration"] == 1
    assert not (run / "weights.safetensors").exists()
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
