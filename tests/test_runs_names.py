"""Run names: ``--name`` on the training commands, ``easytune runs``, names accepted by every run option; sample's
output exported as it is; unknown caption words named in one warning."""

import json
import re

import numpy as np
import pytest

from easytune_lab.cli import build_parser, main
from easytune_lab.commands.eval import evaluator_argument, model_argument
from easytune_lab.runs import list_runs, resolve_run, run_path
from easytune_lab.runtime import NumberRange


def _options():
    """(command, option) for every option of every subcommand, read from the parser itself."""
    def walk(parser, prefix):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{prefix} {name}".strip())
            elif action.option_strings:
                yield prefix, action
    yield from walk(build_parser(), "")


def test_every_run_option_accepts_a_name():
    """An option whose help speaks of a run it reads (not the --out it writes) resolves names through run_path;
    every training command (the distributed ones) takes --name."""
    run_options = []
    for command, action in _options():
        text = (action.help or "").lower()
        # written (--out, --runs), a name, or "run" in another sense (notebooks "to run", "the run's" sampler)
        reads_run = re.search(r"\brun\b", text) and action.dest not in ("out", "runs", "name", "notebooks", "sampler")
        numeric = action.type in (int, float) or isinstance(action.type, NumberRange)
        takes_path = not numeric and action.nargs != 0 and not action.choices
        if reads_run and takes_path:
            assert action.type in (run_path, model_argument, evaluator_argument), f"{command} {action.option_strings[0]}: {action.type}"
            run_options.append(f"{command} {action.option_strings[0]}")
    assert {"finetune --base", "finetune --reward", "finetune --evaluator", "sample --run", "eval --model",
            "eval --evaluator", "bench speed --base", "bench memory --reward", "pretrain --teacher", "reward spl --reward",
            "reward train --init", "reward eval --reward"} <= set(run_options), run_options
    parser = build_parser()
    training = {c for c, a in _options() if "--name" in a.option_strings}
    assert training == {"pretrain", "finetune", "reward train", "reward spl", "evaluator train"}, training
    for command in training:
        args = parser.parse_args(command.split() + _required(command))
        assert getattr(args, "distributed", False), command


def _required(command):
    return {"pretrain": ["--backbone", "mdm", "--data", "d", "--out", "o"],
            "finetune": ["--method", "easytune", "--base", "b", "--reward", "r", "--data", "d", "--out", "o"],
            "reward train": ["--data", "d", "--out", "o"], "reward spl": ["--reward", "r", "--data", "d", "--out", "o"],
            "evaluator train": ["--data", "d", "--out", "o"]}[command]


def test_resolve_run_paths_names_and_cached_folders(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run = cache / "runs" / "backbone-mdm-0123456789ab"
    run.mkdir(parents=True)
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (cache / "names.json").write_text(json.dumps({"my-base": str(elsewhere)}))
    monkeypatch.setenv("EASYTUNE_CACHE", str(cache))
    assert resolve_run("my-base") == elsewhere
    assert resolve_run("backbone-mdm-0123456789ab") == run
    assert resolve_run(str(run)) == run                               # a path stays a path
    assert resolve_run("no-such-run") == resolve_run("no-such-run").__class__("no-such-run")
    assert resolve_run("sub/dir") .as_posix() == "sub/dir"
    assert model_argument("gt") == "gt" and model_argument("my-base") == str(elsewhere)
    assert evaluator_argument("t2m:/data/t2m") == "t2m:/data/t2m" and evaluator_argument("my-base") == str(elsewhere)


def test_named_runs_end_to_end(tmp_path, monkeypatch, capsys, smoke_runs):
    """pretrain --name, easytune runs, sample --run NAME (one warning for unknown words), export of what sample
    wrote, batch files with --index; name clashes refused before training."""
    monkeypatch.setenv("EASYTUNE_CACHE", str(tmp_path / "cache"))
    data = str(smoke_runs["data"])
    base = tmp_path / "tiny"
    assert main(["pretrain", "--backbone", "mdm", "--data", data, "--profile", "smoke", "--iterations", "1", "--out",
                 str(base), "--device", "cpu", "--no-progress", "--name", "tiny-mdm"]) == 0
    rows = {r["name"]: r for r in list_runs(tmp_path / "cache")}
    assert rows["tiny-mdm"]["stage"] == "backbone" and rows["tiny-mdm"]["what"] == "mdm"
    assert rows["tiny-mdm"]["profile"] == "smoke" and rows["tiny-mdm"]["path"] == str(base.resolve())
    assert json.loads((base / "manifest.json").read_text())["name"] == "tiny-mdm"
    assert json.loads((base / "metrics.json").read_text())["log"]["lr"]          # lr per logged step
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert not (base / "tensorboard").exists()
    else:
        assert any((base / "tensorboard").glob("events.out.tfevents.*"))
    capsys.readouterr()
    assert main(["runs", "--cache", str(tmp_path / "cache")]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["name", "stage", "backbone/method", "profile"]
    assert any(line.startswith("tiny-mdm") and str(base.resolve()) in line for line in listing[1:])

    # a name already taken by another run is refused before anything is made
    other = tmp_path / "other"
    assert main(["pretrain", "--backbone", "mdm", "--data", data, "--profile", "smoke", "--iterations", "1", "--out",
                 str(other), "--device", "cpu", "--no-progress", "--name", "tiny-mdm"]) == 2
    assert "already names" in capsys.readouterr().err and not other.exists()
    assert main(["pretrain", "--backbone", "mdm", "--data", data, "--profile", "smoke", "--iterations", "1", "--out",
                 str(other), "--device", "cpu", "--no-progress", "--name", "a/b"]) == 2
    assert not other.exists()

    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    assert main(["sample", "--run", "tiny-mdm", "--text", "a person zorbles forward and flimps", "--length", "40",
                 "--out", str(one), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "zorbles" in err and "flimps" in err and "person" not in err
    assert np.load(one).shape == (1, 40, 263)
    assert main(["export", "bvh", "--features", str(one), "--out", str(tmp_path / "one.bvh")]) == 0
    assert (tmp_path / "one.bvh").read_text().startswith("HIERARCHY")

    assert main(["sample", "--run", str(base), "--text", "a person walks", "--num", "2", "--length", "40",
                 "--out", str(two), "--device", "cpu"]) == 0
    assert capsys.readouterr().err.count("warning") == 0
    assert main(["export", "bvh", "--features", str(two), "--out", str(tmp_path / "x.bvh")]) == 2
    assert "--index" in capsys.readouterr().err and not (tmp_path / "x.bvh").exists()
    assert main(["export", "bvh", "--features", str(two), "--index", "5", "--out", str(tmp_path / "x.bvh")]) == 2
    assert "holds 2 motion(s)" in capsys.readouterr().err
    assert main(["export", "bvh", "--features", str(two), "--index", "1", "--out", str(tmp_path / "x.bvh")]) == 0
    assert main(["export", "html", "--features", str(two), "--out", str(tmp_path / "both.html")]) == 0
    assert "two[1]" in (tmp_path / "both.html").read_text()


def test_training_series_and_tensorboard(tmp_path, monkeypatch):
    """Curves read from a run's metrics.json; TensorBoard event files only when tensorboard is importable."""
    import sys

    from easytune_lab.runs import training_series, write_tensorboard
    from easytune_lab.viz.plots import training_curves

    metrics = {"log": {"iteration": [1, 2, 3], "reward": [0.1, 0.5, 0.9], "lr": [1e-3, 1e-3, 5e-4],
                       "optimizer_steps": [10, 20, 30], "time": [{"a": 1}] * 3, "short": [1.0]},
               "evaluations": [{"iteration": 0, "reward": 0.0}, {"iteration": 3, "reward": 0.8}],
               "history": [{"epoch": 1, "loss": 2.0, "seconds": 1.0}, {"epoch": 2, "loss": 1.5, "seconds": 1.0}]}
    series = training_series(metrics)
    assert set(series) == {"train/reward", "train/lr", "eval/reward", "train/loss"}
    assert series["train/lr"] == ("iteration", [1.0, 2.0, 3.0], [1e-3, 1e-3, 5e-4])
    assert series["train/loss"] == ("epoch", [1.0, 2.0], [2.0, 1.5])
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps(metrics))
    fig = training_curves(run, tmp_path / "curves.png")
    assert len(fig.axes) >= 4 and (tmp_path / "curves.png").stat().st_size > 1000
    assert fig._repr_png_().startswith(b"\x89PNG")          # a notebook shows the figure, not <Figure size ...>
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert write_tensorboard(run) is None and not (run / "tensorboard").exists()
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(write_tensorboard(run)))
        events.Reload()
        assert set(events.Tags()["scalars"]) == set(series)
        assert [e.value for e in events.Scalars("train/reward")] == pytest.approx([0.1, 0.5, 0.9])
        assert write_tensorboard(run) == run / "tensorboard"     # rewritten whole, no leftovers
        assert sorted(p.name for p in run.iterdir()) == ["metrics.json", "tensorboard"]
    monkeypatch.setitem(sys.modules, "tensorboard", None)       # not installed: nothing is written
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps(metrics))
    assert write_tensorboard(other) is None and not (other / "tensorboard").exists()
