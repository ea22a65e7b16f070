"""``easytune bench throughput`` at smoke: every measurement present, ratios to the sampling-only trajectory
consistent with the seconds, the machine named, and the trajectories doing the work their policies name."""

from __future__ import annotations

import json
import os

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
