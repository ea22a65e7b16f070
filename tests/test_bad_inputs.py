"""A catalogue of bad input across the commands: each gives a non-zero exit, exactly one line on stderr naming the
parameter or file, no traceback, and no partial output (the output path is not created, or left as it was).

Every case runs through ``easytune_lab.cli.main``; an exception escaping it would be a traceback.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from easytune_lab.cli import main

from helpers import small_dataset, write_random_dataset


@dataclass
class Env:
    """Runs and files the cases point at (built once per module)."""

    data: Path          # a valid procedural dataset (240 motions)
    base: Path          # a finished MDM run on it
    reward: Path        # a finished reward run on it
    kit: Path           # a valid dataset of 251-d (KIT) features
    small: Path         # a valid dataset too small for the reward's retrieval metrics
    unfinished: Path    # an interrupted pretraining run
    empty: Path         # an existing directory that is not a dataset
    features: Path      # a (40, 263) feature file
    odd: Path           # a (10, 7) array: neither features nor joints
    evaluator: Path     # a finished evaluator run on ``data`` (263-d)


@pytest.fixture(scope="module")
def env(smoke_runs, tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("bad-inputs")
    unfinished = root / "unfinished"
    assert main(["pretrain", "--data", str(smoke_runs["data"]), "--iterations", "2", "--stop-after", "1", "--out",
                 str(unfinished), "--device", "cpu", "--no-progress"]) == 0
    (root / "empty").mkdir()
    np.save(root / "features.npy", np.random.default_rng(0).normal(size=(40, 263)).astype(np.float32))
    np.save(root / "odd.npy", np.zeros((10, 7), np.float32))
    evaluator = root / "evaluator"
    assert main(["evaluator", "train", "--data", str(smoke_runs["data"]), "--profile", "smoke", "--epochs", "1",
                 "--out", str(evaluator), "--device", "cpu", "--no-progress"]) == 0
    return Env(data=smoke_runs["data"], base=smoke_runs["base"], reward=smoke_runs["reward"],
               kit=write_random_dataset(root / "kit", num_motions=12, dim=251, min_len=40, max_len=80),
               small=small_dataset(tmp_path_factory, num_motions=40), unfinished=unfinished,
               empty=root / "empty", features=root / "features.npy", odd=root / "odd.npy", evaluator=evaluator)


def _s(p) -> str:
    return str(p)


@dataclass
class Case:
    """``argv(env, out)`` -> command line; ``expect``: text the error line must contain. ``existing``: a copy of
    the base run is made at ``out`` first and must come out unchanged."""

    name: str
    argv: Callable[[Env, Path], list[str]]
    expect: str
    suffix: str = ""
    existing: bool = False


def ft(e: Env, out: Path, *extra: str, base=None, reward=None, data=None) -> list[str]:
    return ["finetune", "--method", "easytune", "--base", _s(base or e.base), "--reward", _s(reward or e.reward),
            "--data", _s(data or e.data), "--profile", "smoke", "--out", _s(out), "--device", "cpu",
            "--no-progress", *extra]


def pre(e: Env, out: Path, *extra: str, data=None) -> list[str]:
    return ["pretrain", "--data", _s(data or e.data), "--out", _s(out), "--device", "cpu", "--no-progress", *extra]


def ev_train(e: Env, out: Path, *extra: str, data=None) -> list[str]:
    return ["evaluator", "train", "--data", _s(data or e.data), "--profile", "smoke", "--out", _s(out),
            "--device", "cpu", "--no-progress", *extra]


def ev(e: Env, out: Path, *extra: str, evaluator=None, data=None) -> list[str]:
    return ["eval", "--model", "gt", "--evaluator", _s(evaluator or e.evaluator), "--data", _s(data or e.data),
            "--out", _s(out), "--device", "cpu", "--no-progress", *extra]


def bench(e: Env, out: Path, kind: str, *extra: str) -> list[str]:
    return ["bench", kind, "--base", _s(e.base), "--reward", _s(e.reward), "--data", _s(e.data), "--profile",
            "smoke", "--device", "cpu", "--out", _s(out), *extra]


CASES = [
    # data
    Case("data-synth-too-few", lambda e, o: ["data", "synth", "--out", _s(o), "--num-motions", "5"], "--num-motions"),
    Case("data-show-not-html", lambda e, o: ["data", "show", _s(e.data), "000000", "--out", _s(o)], "--out",
         suffix=".png"),
    Case("data-show-unknown-id", lambda e, o: ["data", "show", _s(e.data), "nosuch", "--out", _s(o)], "nosuch",
         suffix=".html"),
    # evaluator
    Case("evaluator-unknown-profile", lambda e, o: ev_train(e, o)[:4] + ["--profile", "huge", "--out", _s(o)],
         "--profile: unknown profile 'huge'"),
    Case("evaluator-zero-epochs", lambda e, o: ev_train(e, o, "--epochs", "0"), "--epochs"),
    Case("evaluator-negative-budget", lambda e, o: ev_train(e, o, "--max-seconds", "-1"), "--max-seconds"),
    Case("evaluator-not-a-dataset", lambda e, o: ev_train(e, o, data=e.empty), "train.txt"),
    Case("evaluator-resume-nothing", lambda e, o: ev_train(e, o, "--resume"), "--resume"),
    Case("evaluator-resume-a-finished-run", lambda e, o: ev_train(e, o, "--resume"), "finished run", existing=True),
    # eval
    Case("eval-zero-replications", lambda e, o: ev(e, o, "--replications", "0"), "--replications", suffix=".json"),
    Case("eval-output-not-json", lambda e, o: ev(e, o), "--out", suffix=".csv"),
    Case("eval-missing-evaluator", lambda e, o: ev(e, o, evaluator=e.empty / "nope"), "nope", suffix=".json"),
    Case("eval-reward-as-evaluator", lambda e, o: ev(e, o, evaluator=e.reward), "expected a 'evaluator' run",
         suffix=".json"),
    Case("eval-data-width", lambda e, o: ev(e, o, data=e.kit), "feature width 251", suffix=".json"),
    Case("eval-one-multimodality-repeat", lambda e, o: ev(e, o, "--mm-repeats", "1"), "--mm-repeats",
         suffix=".json"),
    # reward
    Case("reward-zero-epochs", lambda e, o: ["reward", "train", "--data", _s(e.data), "--profile", "smoke", "--out",
                                             _s(o), "--epochs", "0"], "--epochs"),
    Case("reward-test-split-too-small", lambda e, o: ["reward", "train", "--data", _s(e.small), "--profile",
                                                      "smoke", "--out", _s(o), "--device", "cpu"], "test.txt"),
    Case("reward-resume-nothing", lambda e, o: ["reward", "train", "--data", _s(e.data), "--profile", "smoke",
                                                "--out", _s(o), "--resume"], "--resume"),
    Case("spl-resume-a-finished-run", lambda e, o: ["reward", "spl", "--reward", _s(e.reward), "--data", _s(e.data),
                                                    "--profile", "smoke", "--out", _s(o), "--resume"], "finished run",
         existing=True),
    Case("spl-on-a-backbone-run", lambda e, o: ["reward", "spl", "--reward", _s(e.base), "--data", _s(e.data),
                                                "--profile", "smoke", "--out", _s(o)], "expected a reward run"),
    Case("spl-zero-k", lambda e, o: ["reward", "spl", "--reward", _s(e.reward), "--data", _s(e.data), "--profile",
                                     "smoke", "--out", _s(o), "--k", "0"], "--k"),
    Case("spl-k-beyond-the-gallery", lambda e, o: ["reward", "spl", "--reward", _s(e.reward), "--data", _s(e.data),
                                                   "--profile", "smoke", "--out", _s(o), "--k", "100000"], "--k 100000"),
    Case("spl-data-width", lambda e, o: ["reward", "spl", "--reward", _s(e.reward), "--data", _s(e.kit),
                                         "--profile", "smoke", "--out", _s(o)], "251-d"),
    Case("spl-negative-weight", lambda e, o: ["reward", "spl", "--reward", _s(e.reward), "--data", _s(e.data),
                                              "--profile", "smoke", "--out", _s(o), "--spl-weight", "-1"],
         "--spl-weight"),
    # pretrain
    Case("pretrain-zero-steps", lambda e, o: pre(e, o, "--iterations", "0"), "--iterations"),
    Case("pretrain-dropout-out-of-range", lambda e, o: pre(e, o, "--dropout", "1.5"), "--dropout"),
    Case("pretrain-zero-accumulate", lambda e, o: pre(e, o, "--accumulate", "0"), "--accumulate"),
    Case("pretrain-lcm-without-teacher", lambda e, o: pre(e, o, "--backbone", "lcm"), "--teacher"),
    Case("pretrain-teacher-without-lcm", lambda e, o: pre(e, o, "--teacher", _s(e.base)), "--teacher"),
    Case("pretrain-teacher-not-mld", lambda e, o: pre(e, o, "--backbone", "lcm", "--teacher", _s(e.base)),
         "is a 'mdm' run"),
    Case("pretrain-missing-data", lambda e, o: pre(e, o, data=e.empty / "nope"), "--data"),
    Case("pretrain-unknown-profile", lambda e, o: pre(e, o, "--profile", "huge"), "--profile"),
    Case("pretrain-out-not-empty", lambda e, o: pre(e, o), "--out", existing=True),
    Case("pretrain-resume-other-steps", lambda e, o: pre(e, o, "--resume", "--iterations", "7"), "--iterations 7",
         existing=True),
    Case("pretrain-resume-other-data", lambda e, o: pre(e, o, "--resume", data=e.kit), "--data", existing=True),
    Case("pretrain-resume-other-dtype", lambda e, o: pre(e, o, "--resume", "--dtype", "float64"), "--dtype",
         existing=True),
    # sample
    Case("sample-output-suffix", lambda e, o: ["sample", "--run", _s(e.base), "--text", "a", "--out", _s(o)],
         "--out", suffix=".txt"),
    Case("sample-zero-num", lambda e, o: ["sample", "--run", _s(e.base), "--text", "a", "--num", "0", "--out",
                                          _s(o)], "--num", suffix=".npy"),
    Case("sample-too-long", lambda e, o: ["sample", "--run", _s(e.base), "--text", "a", "--length", "400",
                                          "--device", "cpu", "--out", _s(o)], "--length", suffix=".npy"),
    Case("sample-unfinished-run", lambda e, o: ["sample", "--run", _s(e.unfinished), "--text", "a", "--device",
                                                "cpu", "--out", _s(o)], "did not finish", suffix=".npy"),
    # finetune
    Case("finetune-base-is-a-reward", lambda e, o: ft(e, o, base=e.reward), "expected a 'backbone' run"),
    Case("finetune-reward-is-a-backbone", lambda e, o: ft(e, o, reward=e.base), "expected a reward run"),
    Case("finetune-base-unfinished", lambda e, o: ft(e, o, base=e.unfinished), "did not finish"),
    Case("finetune-data-width", lambda e, o: ft(e, o, data=e.kit), "251-d"),
    Case("finetune-zero-batch", lambda e, o: ft(e, o, "--batch-size", "0"), "--batch-size"),
    Case("finetune-num-train-steps-over-T", lambda e, o: ft(e, o, "--train-steps", "last", "--num-train-steps", "999"),
         "--num-train-steps"),
    Case("finetune-zero-sample-steps", lambda e, o: ft(e, o, "--sample-steps", "0"), "--sample-steps"),
    Case("finetune-negative-reg-weight", lambda e, o: ft(e, o, "--reg-weight", "-1"), "--reg-weight"),
    Case("finetune-negative-checkpoint-every", lambda e, o: ft(e, o, "--checkpoint-every", "-1"),
         "--checkpoint-every"),
    Case("finetune-resume-nothing", lambda e, o: ft(e, o, "--resume"), "--resume"),
    Case("finetune-xt-needs-noise-aware-reward", lambda e, o: ft(e, o, "--reward-on", "x_t"), "--reward-on x_t"),
    Case("finetune-resume-a-pretraining-run", lambda e, o: ft(e, o, "--resume"), "not a fine-tuning run",
         existing=True),
    # bench
    Case("bench-unknown-method", lambda e, o: bench(e, o, "memory", "--methods", "sgd", "--sample-steps", "5"),
         "--methods", suffix=".json"),
    Case("bench-zero-steps", lambda e, o: bench(e, o, "memory", "--methods", "easytune", "--sample-steps", "0,5"),
         "--sample-steps", suffix=".json"),
    Case("bench-zero-budget", lambda e, o: bench(e, o, "speed", "--methods", "easytune", "--budget-seconds", "0"),
         "--budget-seconds", suffix=".json"),
    Case("bench-lrs-other-method", lambda e, o: bench(e, o, "speed", "--methods", "easytune", "--budget-seconds", "1",
                                                      "--lrs", "draft=1e-5"), "--lrs", suffix=".json"),
    Case("bench-data-width", lambda e, o: ["bench", "memory", "--base", _s(e.base), "--reward", _s(e.reward),
                                           "--data", _s(e.kit), "--methods", "easytune", "--sample-steps", "5", "--out",
                                           _s(o)], "251-d", suffix=".json"),
    Case("bench-output-not-json", lambda e, o: bench(e, o, "memory", "--methods", "easytune", "--sample-steps", "5"),
         "--out", suffix=".csv"),
    Case("bench-throughput-zero-repeats", lambda e, o: ["bench", "throughput", "--repeats", "0", "--out", _s(o)],
         "--repeats", suffix=".json"),
    Case("bench-throughput-base-without-reward", lambda e, o: ["bench", "throughput", "--base", _s(e.base),
                                                               "--out", _s(o)], "--base", suffix=".json"),
    Case("bench-throughput-unknown-trajectory", lambda e, o: ["bench", "throughput", "--trajectories", "sgd",
                                                              "--out", _s(o)], "--trajectories", suffix=".json"),
    Case("bench-throughput-zero-threads", lambda e, o: ["bench", "throughput", "--threads", "0", "--out", _s(o)],
         "--threads", suffix=".json"),
    # export
    Case("export-zero-scale", lambda e, o: ["export", "bvh", "--features", _s(e.features), "--scale", "0", "--out",
                                            _s(o)], "--scale", suffix=".bvh"),
    Case("export-caption-count", lambda e, o: ["export", "gif", "--features", _s(e.features), "--caption", "a",
                                               "--caption", "b", "--out", _s(o)], "--caption", suffix=".gif"),
    Case("export-unknown-skeleton", lambda e, o: ["export", "bvh", "--features", _s(e.odd), "--out", _s(o)],
         "--skeleton", suffix=".bvh"),
    Case("export-two-sources", lambda e, o: ["export", "html", "--features", _s(e.features), "--data", _s(e.data),
                                             "--id", "000000", "--out", _s(o)], "--features", suffix=".html"),
]


def _snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_and_no_output(env, tmp_path, capsys, case):
    out = tmp_path / f"out{case.suffix}"
    if case.existing:
        shutil.copytree(env.base, out)
        before = _snapshot(out)
    capsys.readouterr()
    try:
        code = main(case.argv(env, out))
    except SystemExit as exc:  # argparse's own errors exit with one line too
        code = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code not in (0, None), captured
    assert len(lines) == 1, lines
    assert case.expect in lines[0], lines[0]
    assert "error:" in lines[0] and "Traceback" not in captured.err
    if case.existing:
        assert _snapshot(out) == before
    else:
        assert not out.exists()


def test_the_catalogue_covers_every_command_group():
    groups = {c.name.split("-")[0] for c in CASES}
    assert {"data", "evaluator", "eval", "reward", "spl", "pretrain", "sample", "finetune", "bench",
            "export"} <= groups
    assert len(CASES) >= 25
