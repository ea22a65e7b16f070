"""Faults around the commands: concurrent writers, stale locks, resume against other parents or data, a full or
read-only disk, NaN weights and non-finite results. Each gives one line, the documented exit code, and nothing
half-written."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from easytune_lab.cli import main
from easytune_lab.errors import NonFiniteError, OutputError

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "EASYTUNE_THREADS": "1"}


def _run(argv: list[str], capsys) -> tuple[int, list[str], str]:
    code, err = run_cli(argv, capsys)
    return code, err.strip().splitlines(), err


def _snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ the lock


def test_a_second_writer_on_one_out_is_refused_within_a_second_and_the_first_completes(smoke_runs, tmp_path, capsys):
    from easytune_lab.runs import lock_path

    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(smoke_runs["data"]), "--profile", "smoke", "--iterations", "30", "--out", str(out),
            "--device", "cpu", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "easytune_lab.cli", *argv], env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (lock_path(out).is_file() and lock_path(out).read_text().split()[:1] == [str(first.pid)]):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        t0 = time.perf_counter()
        code, lines, err = _run(argv, capsys)
        seconds = time.perf_counter() - t0
        assert first.poll() is None, "the first writer finished before the second was tried; the test proves nothing"
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert code == OutputError.exit_code and len(lines) == 1 and "Traceback" not in err, err
    assert f"pid {first.pid}" in lines[0] and str(out) in lines[0], lines[0]
    assert seconds < 1.0, seconds
    assert first.returncode == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in smoke_runs["base"].iterdir())
    # the lock went with its holder: the run can be resumed (a no-op on a finished run) by the next process
    assert main(argv + ["--resume"]) == 0


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    from easytune_lab.runs import lock_path, run_lock

    out = tmp_path / "run"
    script = ("import os, signal, sys; from easytune_lab.runs import run_lock; "
              f"lock = run_lock({str(out)!r}); lock.__enter__(); print('held', flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    dead = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=60)
    assert dead.returncode == -signal.SIGKILL and "held" in dead.stdout
    assert lock_path(out).read_text().split()[0] != str(os.getpid())  # the dead holder's pid is still noted
    t0 = time.perf_counter()
    with run_lock(out):
        assert lock_path(out).read_text().split()[0] == str(os.getpid())
    assert time.perf_counter() - t0 < 1.0


def test_a_live_holder_is_named(tmp_path):
    from easytune_lab.runs import run_lock

    out = tmp_path / "run"
    script = ("import sys, time; from easytune_lab.runs import run_lock; "
              f"lock = run_lock({str(out)!r}); lock.__enter__(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {holder.pid}"):
            with run_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(out):  # released by the kernel with its holder
        pass


# ------------------------------------------------------------------------------------------------ resume


@pytest.fixture(scope="module")
def finetuned(smoke_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "ft"
    assert main(["finetune", "--method", "easytune", "--base", str(smoke_runs["base"]), "--reward",
                 str(smoke_runs["reward"]), "--data", str(smoke_runs["data"]), "--profile", "smoke", "--iterations", "1",
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    return out


def _ft(smoke_runs, out, **override) -> list[str]:
    named = {"base": smoke_runs["base"], "reward": smoke_runs["reward"], "data": smoke_runs["data"], **override}
    return ["finetune", "--method", "easytune", "--base", str(named["base"]), "--reward", str(named["reward"]),
            "--data", str(named["data"]), "--profile", "smoke", "--iterations", "1", "--out", str(out), "--device",
            "cpu", "--no-progress", "--resume"]


def test_resume_with_another_parent_or_dataset_is_refused(smoke_runs, finetuned, tmp_path, capsys):
    before = _snapshot(finetuned)
    other_reward = tmp_path / "reward-copy"
    shutil.copytree(smoke_runs["reward"], other_reward)
    other_data = tmp_path / "data-copy"
    shutil.copytree(smoke_runs["data"], other_data)
    std = np.load(other_data / "Std.npy")
    np.save(other_data / "Std.npy", std * 1.5)  # same layout, other content
    other_base = tmp_path / "base-copy"
    shutil.copytree(smoke_runs["base"], other_base)
    for override, flag in (({"reward": other_reward}, "--reward"), ({"base": other_base}, "--base"),
                           ({"data": other_data}, "--data")):
        code, lines, err = _run(_ft(smoke_runs, finetuned, **override), capsys)
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert flag in lines[0] and str(finetuned) in lines[0], lines[0]
    assert _snapshot(finetuned) == before
    # a moved copy of the same dataset is the same dataset
    same_data = tmp_path / "data-moved"
    shutil.copytree(smoke_runs["data"], same_data)
    assert main(_ft(smoke_runs, finetuned, data=same_data)) == 0


def test_a_damaged_checkpoint_state_is_one_line(smoke_runs, finetuned, tmp_path, capsys):
    run = tmp_path / "ft"
    shutil.copytree(finetuned, run)
    state = run / "checkpoint" / "state.json"
    state.write_text(state.read_text()[:40])
    code, lines, err = _run(_ft(smoke_runs, run), capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and str(state) in lines[0], err


# ------------------------------------------------------------------------------------------------ disk full, read-only


def test_a_full_disk_is_one_line_and_leaves_nothing(smoke_runs, tmp_path):
    """A real write failure: the process may write at most 64 KiB per file (RLIMIT_FSIZE, SIGXFSZ ignored)."""
    out = tmp_path / "motions.npy"

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))

    proc = subprocess.run([sys.executable, "-m", "easytune_lab.cli", "sample", "--run", str(smoke_runs["base"]),
                           "--text", "a person walks", "--num", "40", "--device", "cpu", "--out", str(out)],
                          env=_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == OutputError.exit_code, proc.stderr
    assert len(lines) == 1 and str(out) in lines[0] and "File too large" in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # no result, no temporary file


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_an_os_error_while_writing_weights_is_one_line(tmp_path, monkeypatch, err):
    import torch

    from easytune_lab import io
    from easytune_lab.runs import save_tensors

    def failing(*a, **k):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(io.os, "replace", failing)
    target = tmp_path / "weights.safetensors"
    with pytest.raises(OutputError, match=os.strerror(err)) as info:
        save_tensors(target, {"w": torch.zeros(3)})
    assert str(target) in str(info.value) and list(tmp_path.iterdir()) == []


def test_reward_train_finds_a_read_only_out_before_training(smoke_runs, tmp_path, monkeypatch, capsys):
    import tempfile

    from easytune_lab.reward import pipeline

    out = tmp_path / "ro" / "reward"
    out.parent.mkdir()
    real = tempfile.mkstemp

    def read_only(*a, dir=None, **k):
        if dir is not None and Path(dir) == out.parent:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(pipeline, "train_run", lambda *a, **k: pytest.fail("training started"))
    code, lines, err = _run(["reward", "train", "--data", str(smoke_runs["data"]), "--profile", "smoke", "--out",
                             str(out), "--device", "cpu"], capsys)
    assert code == 2 and len(lines) == 1 and "--out" in lines[0] and "Read-only file system" in lines[0], err
    assert not out.exists()


@pytest.mark.parametrize("argv,what", [
    (lambda o: ["sample", "--run", "RUN", "--text", "a", "--out", str(o / "x.npy")], "x.npy"),
    (lambda o: ["data", "show", "DATA", "000000", "--out", str(o / "x.html")], "x.html"),
    (lambda o: ["eval", "--model", "gt", "--evaluator", "E", "--data", "DATA", "--out", str(o / "x.json")], "x.json"),
    (lambda o: ["reward", "eval", "--reward", "R", "--data", "DATA", "--out", str(o / "x.json")], "x.json"),
    (lambda o: ["export", "bvh", "--features", "F", "--out", str(o / "x.bvh")], "x.bvh"),
])
def test_an_existing_directory_where_a_file_is_expected(tmp_path, capsys, argv, what):
    (tmp_path / what).mkdir()
    code, lines, err = _run(argv(tmp_path), capsys)
    assert code == 2 and len(lines) == 1 and "is a directory" in lines[0] and what in lines[0], err


def test_an_existing_file_where_a_run_directory_is_expected(smoke_runs, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("keep me")
    code, lines, err = _run(["finetune", "--method", "easytune", "--base", str(smoke_runs["base"]), "--reward",
                             str(smoke_runs["reward"]), "--data", str(smoke_runs["data"]), "--out", str(out)], capsys)
    assert code == 2 and len(lines) == 1 and "not a directory" in lines[0], err
    assert out.read_text() == "keep me"


# ------------------------------------------------------------------------------------------------ non-finite values


def test_a_run_with_a_nan_weight_writes_no_motions(smoke_runs, tmp_path, capsys):
    from easytune_lab.runs import load_tensors, save_tensors

    run = tmp_path / "nan-run"
    shutil.copytree(smoke_runs["base"], run)
    tensors = load_tensors(run / "weights.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_tensors(run / "weights.safetensors", tensors, allow_nonfinite=True)
    out = tmp_path / "m.npy"
    code, lines, err = _run(["sample", "--run", str(run), "--text", "a person walks", "--device", "cpu", "--out",
                             str(out)], capsys)
    assert code == NonFiniteError.exit_code and len(lines) == 1 and name in lines[0], err
    assert not out.exists()


def test_every_writer_refuses_non_finite_values_unless_asked(tmp_path):
    import pandas as pd
    import torch

    from easytune_lab.io import write_csv, write_json, write_npy
    from easytune_lab.runs import save_tensors
    from easytune_lab.viz.plots import write_table

    nan = float("nan")
    writers = {
        "a.json": lambda p, **k: write_json(p, {"metrics": {"fid": [1.0, nan]}}, **k),
        "a.npy": lambda p, **k: write_npy(p, np.array([1.0, np.inf]), **k),
        "a.csv": lambda p, **k: write_csv(p, pd.DataFrame({"fid": [1.0, nan], "m": ["x", "y"]}), index=False, **k),
        "a.safetensors": lambda p, **k: save_tensors(p, {"w": torch.tensor([nan])}, **k),
        "t.csv": lambda p, **k: write_table(pd.DataFrame({"fid": [np.inf]}), p, "smoke", 0, **k),   # notebooks' tables
    }
    for name, write in writers.items():
        with pytest.raises(NonFiniteError, match=name):
            write(tmp_path / name)
        assert not (tmp_path / name).exists()
        write(tmp_path / name, allow_nonfinite=True)  # asked for: written
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "a.json").read_text()) == {"metrics": {"fid": [1.0, None]}}  # strict JSON


RAW_WRITERS = (".to_csv(", "json.dump(", "np.save(", "torch.save(", "save_file(", ".write_text(json")


def _code_sources():
    """Every library module and every notebook code cell, as (name, source)."""
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "easytune_lab").rglob("*.py")):
        yield str(path.relative_to(root)), path.read_text()
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                yield f"{path.relative_to(root)} cell {i}", "".join(cell["source"])


def test_results_are_written_only_through_the_finite_writers():
    """No module or notebook writes a result file around easytune_lab.io / runs.save_tensors, whose writers refuse
    NaN/Inf unless asked: the one place a non-finite value could slip into a result is closed."""
    allowed = {"easytune_lab/io.py", "easytune_lab/runs.py"}   # the writers themselves
    found = [(name, w) for name, src in _code_sources() if name not in allowed for w in RAW_WRITERS if w in src]
    assert not found, found
    assert any("notebooks/" in name for name, _ in _code_sources())   # the scan saw the notebooks


def test_a_bvh_of_nan_features_is_refused(tmp_path, capsys):
    features = tmp_path / "f.npy"
    np.save(features, np.full((40, 263), np.nan, np.float32))
    code, lines, err = _run(["export", "bvh", "--features", str(features), "--out", str(tmp_path / "m.bvh")], capsys)
    assert code == 2 and len(lines) == 1 and str(features) in lines[0], err
    assert not (tmp_path / "m.bvh").exists()


def test_tiny_std_is_a_dataset_problem_and_a_loader_error(smoke_runs, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(smoke_runs["data"], data)
    std = np.load(data / "Std.npy")
    std[3] = 1e-30
    np.save(data / "Std.npy", std)
    capsys.readouterr()
    assert main(["data", "check", str(data)]) == 1
    assert any("Std.npy" in line and "below" in line for line in capsys.readouterr().out.splitlines())
    out = tmp_path / "reward"
    code, lines, err = _run(["reward", "train", "--data", str(data), "--profile", "smoke", "--epochs", "1", "--out",
                             str(out), "--device", "cpu"], capsys)
    assert code == 2 and len(lines) == 1 and "Std.npy" in lines[0], err
    assert not out.exists()


def test_a_killed_data_synth_leaves_no_temporary_directory_behind(tmp_path):
    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "easytune_lab.cli", "data", "synth", "--out", str(out),
                             "--num-motions", "400", "--workers", "1", "--no-progress"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".data.tmp-*/new_joint_vecs/*.npy")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert list(tmp_path.glob(".data.tmp-*")) and not out.exists()  # what a kill leaves
    assert main(["data", "synth", "--out", str(out), "--num-motions", "20", "--workers", "1", "--no-progress"]) == 0
    assert not list(tmp_path.glob(".data.tmp-*")) and (out / "train.txt").is_file()
