"""Evaluation during fine-tuning with the T2M evaluator and the oracle: metrics at every evaluation, training RNG
streams untouched (same weights with or without it, and across a resume)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from easytune_lab.cli import main
from easytune_lab.errors import UserError
from easytune_lab.finetune.train import finetune_config, run_finetune
from easytune_lab.runs import load_tensors

from helpers import finetune_inputs

CPU = torch.device("cpu")
FAST = dict(iterations=2, eval_every=1, sample_steps=4, checkpoint_every=1)  # as the CLI run below
T2M = ("r_precision_top1", "r_precision_top2", "r_precision_top3", "fid", "mm_dist", "diversity", "oracle_accuracy")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return finetune_inputs(tmp_path_factory, evaluator=True)


def test_every_evaluation_gets_t2m_metrics_and_oracle_without_changing_training(runs, tmp_path, capsys):
    scored = tmp_path / "scored"
    assert main(["finetune", "--method", "easytune", "--base", str(runs["base"]), "--reward", str(runs["reward"]),
                 "--data", str(runs["data"]), "--profile", "smoke", "--out", str(scored), "--iterations", "2",
                 "--sample-steps", "4", "--eval-every", "1", "--evaluator", str(runs["evaluator"]),
                 "--eval-motions", "32", "--no-progress"]) == 0
    assert "r_precision_top1" in capsys.readouterr().out
    metrics = json.loads((scored / "metrics.json").read_text())
    evals = metrics["evaluations"]
    assert [e["iteration"] for e in evals] == [0, 1, 2]
    for entry in evals:
        assert all(math.isfinite(entry[key]) for key in (*T2M, "reward"))
        assert 0 <= entry["r_precision_top1"] <= entry["r_precision_top3"] <= 1
        assert 0 <= entry["oracle_accuracy"] <= 1 and entry["fid"] >= 0 and entry["eval_motions"] == 32
    manifest = json.loads((scored / "manifest.json").read_text())
    assert manifest["parents"]["evaluator"] == str(runs["evaluator"])
    assert manifest["finetune"]["eval_motions"] == 32

    # the same run interrupted without the evaluator and resumed with it: identical training
    cfg = finetune_config("easytune", "smoke", **FAST)
    part = tmp_path / "part"
    run_finetune(cfg, runs["base"], runs["reward"], runs["data"], part, CPU, progress=False, stop_after=1)
    resumed = run_finetune(cfg, runs["base"], runs["reward"], runs["data"], part, CPU, progress=False, resume=True,
                           evaluator=runs["evaluator"])
    assert [("fid" in e) for e in resumed["evaluations"]] == [False, False, True]
    assert [e["reward"] for e in resumed["evaluations"]] == [e["reward"] for e in evals]
    assert resumed["log"]["reward"] == metrics["log"]["reward"]
    a, b = load_tensors(scored / "weights.safetensors"), load_tensors(part / "weights.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert resumed["evaluations"][-1]["fid"] == pytest.approx(evals[-1]["fid"], rel=1e-4)


def test_eval_motions_below_one_r_precision_group_is_refused():
    with pytest.raises(UserError, match="eval_motions: must be 0"):
        finetune_config("easytune", "smoke", eval_motions=16)


def test_a_bad_evaluator_run_fails_before_training(runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["finetune", "--method", "easytune", "--base", str(runs["base"]), "--reward", str(runs["reward"]),
                 "--data", str(runs["data"]), "--profile", "smoke", "--out", str(out),
                 "--evaluator", str(runs["reward"]), "--no-progress"]) == 2
    assert "expected a 'evaluator' run" in capsys.readouterr().err
    assert not out.exists()
