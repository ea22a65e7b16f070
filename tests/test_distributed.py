"""Data-parallel training under torchrun: 2 processes on gloo take the same steps as 1 process on the combined batch.

The runs compared use float64 and no dropout, so the only differences left are summation orders (~1e-14).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from easytune_lab import distributed as dist
from easytune_lab.cli import main
from easytune_lab.errors import UserError
from easytune_lab.runs import load_tensors

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*argv: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N -m easytune_lab.cli ARGV`` on this machine (gloo on CPU)."""
    launcher = [str(TORCHRUN)] if TORCHRUN.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1", "--master_port",
           str(_free_port()), "-m", "easytune_lab.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def max_difference(a: Path, b: Path) -> float:
    wa, wb = load_tensors(a / "weights.safetensors"), load_tensors(b / "weights.safetensors")
    assert wa.keys() == wb.keys() and wa
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def test_pretraining_on_two_processes_matches_one_process_on_the_combined_batch(smoke_runs, tmp_path):
    common = ["pretrain", "--backbone", "mdm", "--data", str(smoke_runs["data"]), "--profile", "smoke",
              "--iterations", "3", "--batch-size", "8", "--dropout", "0", "--dtype", "float64", "--device", "cpu",
              "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--out", str(one)]) == 0
    proc = torchrun(*common, "--out", str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_difference(one, two) < 1e-5
    assert max_difference(one, smoke_runs["base"]) > 1e-3  # it did train (and differently from the fixture)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["training"]["world_size"] == 2 and manifest["status"] == "complete"
    # the global loss is logged: the same curve as one process
    log1 = json.loads((one / "metrics.json").read_text())["log"]["loss"]
    log2 = json.loads((two / "metrics.json").read_text())["log"]["loss"]
    assert log1 == pytest.approx(log2, abs=1e-9)
    # only rank 0 wrote: no temporary or duplicate files
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert proc.stdout.count("finished at step 3/3") == 1  # one report, from rank 0


def test_easytune_finetuning_on_two_processes_matches_one_process(smoke_runs, tmp_path):
    common = ["finetune", "--method", "easytune", "--base", str(smoke_runs["base"]), "--reward",
              str(smoke_runs["reward"]), "--data", str(smoke_runs["data"]), "--profile", "smoke", "--iterations", "2",
              "--sample-steps", "5", "--batch-size", "4", "--dtype", "float64", "--device", "cpu", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*common, "--out", str(one)]) == 0
    proc = torchrun(*common, "--out", str(two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_difference(one, two) < 1e-5
    assert max_difference(one, smoke_runs["base"]) > 1e-4  # the weights moved
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    assert m1["optimizer_steps"] == m2["optimizer_steps"] == 2 * 5  # one update per denoising step
    assert m1["log"]["reward"] == pytest.approx(m2["log"]["reward"], abs=1e-9)  # rewards averaged over ranks


def test_global_batch_rows_and_noise_split_exactly_across_ranks():
    assert [dist.shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    with pytest.raises(ValueError):
        dist.shard_bounds(5, 0, 2)
    whole = dist.ShardedRandom(torch.Generator().manual_seed(3), 0, 1).randn((6, 4, 2))
    parts = [dist.ShardedRandom(torch.Generator().manual_seed(3), r, 3).randn((2, 4, 2)) for r in range(3)]
    assert torch.equal(torch.cat(parts), whole)  # the ranks' rows are the single process's draw
    ints = [dist.ShardedRandom(torch.Generator().manual_seed(1), r, 2).randint(0, 100, (3,)) for r in range(2)]
    assert torch.equal(torch.cat(ints), torch.randint(0, 100, (6,), generator=torch.Generator().manual_seed(1)))


def test_a_single_process_command_refuses_torchrun(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert main(["data", "synth", "--out", str(tmp_path / "d"), "--num-motions", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "start it without torchrun" in err[0]
    assert not (tmp_path / "d").exists()


def test_an_uneven_global_batch_is_refused(monkeypatch):
    monkeypatch.setattr(dist, "_CONTEXT", dist.Context(rank=0, world_size=2, local_rank=0, backend="gloo"))
    with pytest.raises(UserError, match="--batch-size: 5 does not split evenly over 2 processes"):
        dist.check_divisible(5, "--batch-size")


@pytest.mark.parametrize("accumulate", [False, True])
def test_one_gradient_all_reduce_per_optimiser_step(smoke_runs, accumulate):
    from easytune_lab.finetune.train import Finetuner, finetune_config

    cfg = finetune_config("easytune", "smoke", sample_steps=4, batch_size=2)
    tuner = Finetuner(cfg, smoke_runs["base"], smoke_runs["reward"], smoke_runs["data"], torch.device("cpu"),
                      accumulate=accumulate)
    stats = tuner.iteration()
    assert stats.optimizer_steps == (1 if accumulate else 4)  # EasyTune steps at each of the T = 4 steps
    assert tuner.sync.calls == stats.optimizer_steps
    assert len(stats.graph_calls) == 4  # accumulate still back-propagates each step's graph at once


def test_bad_input_under_torchrun_is_reported_once_and_writes_nothing(smoke_runs, tmp_path):
    out = tmp_path / "uneven"
    proc = torchrun("pretrain", "--data", str(smoke_runs["data"]), "--iterations", "2", "--batch-size", "5", "--out",
                    str(out), "--device", "cpu", "--no-progress")
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("easytune: error:")]
    assert ours == ["easytune: error: --batch-size: 5 does not split evenly over 2 processes (use a multiple of 2)"]
    assert not out.exists()
