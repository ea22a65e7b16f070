"""Every file each command reads, damaged every way: truncated, garbage, NaN, wrong kind, wrong shape.

The list of files is not written here: each command is run once on good inputs while an audit hook records what
it opens for reading (and :func:`easytune_lab.runs.load_tensors` announces the safetensors files it reads), so a
command that starts reading a new file is covered without editing this test. Every file read is mapped to a
format (:data:`FORMATS`); a file of no known format fails the test, asking for its damage kinds to be declared.

Each damaged case runs the command in-process (``easytune_lab.cli.main``) and asserts: exit status not 0, no
traceback, one line on stderr that names the damaged file (or, for a run's files, the run directory), no output
written, and every input file exactly as it was before the command ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from easytune_lab.cli import main

# ------------------------------------------------------------------------------------------------ recording reads

_recording: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _recording is None or event not in ("open", "easytune_lab.read") or _fingerprinting():
        return
    if event == "easytune_lab.read":
        _recording.append(os.path.realpath(args[0]))
    elif event == "open" and isinstance(args[0], (str, os.PathLike)):
        mode, flags = args[1], args[2]
        reading = (mode is not None and not set(str(mode)) & set("wax+")) or \
                  (mode is None and isinstance(flags, int) and not flags & (os.O_WRONLY | os.O_RDWR))
        if reading:
            _recording.append(os.path.realpath(os.fspath(args[0])))


def _fingerprinting() -> bool:
    """Reads of :func:`easytune_lab.runs.dataset_identity` hash files, they do not use them."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "dataset_identity":
            return True
        frame = frame.f_back
    return False


sys.addaudithook(_audit)


def record_reads(argv: list[str]) -> list[str]:
    global _recording
    _recording = []
    try:
        code = main(argv)
    finally:
        reads, _recording = _recording, None
    assert code == 0, argv
    return list(dict.fromkeys(reads))  # first-read order, once each


# ------------------------------------------------------------------------------------------------ damage kinds


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, len(data) // 2 - 3)])


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())


def _npy(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        arr = np.load(path, allow_pickle=False)
        with open(path, "wb") as fh:
            np.save(fh, transform(arr), allow_pickle=False)
    return damage


def _nan_rows(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=arr.dtype)
    arr[..., 1] = np.nan
    return arr


def _narrow(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr[..., :-1])


def _text(content: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(content)


def _json_edit(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return damage


def _other_kind(manifest: dict) -> dict:
    return {**manifest, "kind": "evaluator" if manifest["kind"] != "evaluator" else "backbone"}


def _weights(transform: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        import torch

        from easytune_lab.runs import load_tensors, save_tensors

        tensors = load_tensors(path)
        name = next(k for k, v in tensors.items() if v.is_floating_point() and v.ndim >= 1 and v.shape[0] > 1)
        if transform == "nan":
            tensors[name] = tensors[name].clone().fill_(float("nan"))
        elif transform == "shape":
            tensors[name] = tensors[name][:-1].clone()
        else:  # another kind of run's weights
            tensors = {"other.weight": torch.zeros(4, 4), "other.bias": torch.zeros(4)}
        save_tensors(path, tensors, allow_nonfinite=True)
    return damage


def _npz(transform: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        if transform == "nan":
            arrays["mean"] = _nan_rows(arrays["mean"][None])[0]
        elif transform == "shape":
            arrays = {k: _narrow(v) for k, v in arrays.items()}
        else:
            arrays = {"weights": np.zeros(3, np.float32)}
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    return damage


def _caption_tag(path: Path) -> None:
    lines = path.read_text().splitlines()
    text, tokens, _, _ = lines[0].split("#")
    path.write_text("\n".join([f"{text}#{tokens}#0.0#1e308"] + lines[1:]) + "\n")


def _caption_cut(path: Path) -> None:  # cut inside the first line's tokens
    text = path.read_text()
    path.write_text(text[: text.index("#") + 4])


def _split_cut(path: Path) -> None:  # cut in the middle of the second id
    ids = path.read_text().split()
    path.write_text("\n".join(ids[:1] + [ids[1][:3]]) + "\n")


DAMAGES = ("truncated", "garbage", "nan", "wrong-kind", "wrong-shape")

FORMATS: dict[str, dict[str, Callable[[Path], None]]] = {
    "manifest": {"truncated": _truncate, "garbage": _garbage, "nan": _text("NaN"),
                 "wrong-kind": _json_edit(_other_kind), "wrong-shape": _text("[]"),
                 "null": _text("null"), "no-config": _json_edit(lambda m: {k: v for k, v in m.items()
                                                                            if k != "config"})},
    "weights": {"truncated": _truncate, "garbage": _garbage, "nan": _weights("nan"), "wrong-kind": _weights("kind"),
                "wrong-shape": _weights("shape")},
    "vocabulary": {"truncated": _truncate, "garbage": _garbage, "nan": _text("NaN"),
                   "wrong-kind": _text('{"kind": "backbone", "config": {}}'),
                   "wrong-shape": _text('{"format": "easytune-vocabulary", "words": []}')},
    "stats": {"truncated": _truncate, "garbage": _garbage, "nan": _npy(lambda a: _nan_rows(a[None])[0]),
              "wrong-kind": _npy(lambda a: a.astype(str)), "wrong-shape": _npy(_narrow),
              "tiny-std": _npy(lambda a: np.full_like(a, 1e-30))},
    "stats-npz": {"truncated": _truncate, "garbage": _garbage, "nan": _npz("nan"), "wrong-kind": _npz("kind"),
                  "wrong-shape": _npz("shape")},
    "features": {"truncated": _truncate, "garbage": _garbage, "nan": _npy(_nan_rows),
                 "wrong-kind": _npy(lambda a: a.astype(np.int32)), "wrong-shape": _npy(_narrow)},
    "captions": {"truncated": _caption_cut, "garbage": _garbage, "nan": _caption_tag,
                 "wrong-kind": _text('{"caption": "a person walks"}\n'),
                 "wrong-shape": _text("a person walks#a/DET person/NOUN#0.0#0.0#1\n")},
    "split": {"truncated": _split_cut, "garbage": _garbage, "nan": _text("nan\n"), "wrong-kind": _text("[1, 2]\n"),
              "wrong-shape": _text("\n")},
    "attributes": {"truncated": _truncate, "garbage": _garbage,
                   "nan": _text('{"id": "000000", "actions": [{"family": "walk", "start": NaN, "end": 40}]}\n'),
                   "wrong-kind": _text("[1, 2, 3]\n"),
                   "wrong-shape": _text('{"id": "000000", "actions": {"family": "walk"}}\n')},
    "state": {"truncated": _truncate, "garbage": _garbage, "nan": _text("NaN"), "wrong-kind": _text("[]"),
              "wrong-shape": _text('{"step": 1}')},
}

# "stats" damage of Std only; "tiny-std" of a Mean is a valid mean
SKIP = {("Mean.npy", "tiny-std"), ("mean.npy", "tiny-std")}


def file_format(relative: str) -> str | None:
    name = Path(relative).name
    if name == "manifest.json":
        return "manifest"
    if name.endswith(".safetensors"):
        return "weights"
    if name in ("vocab.json", "vocabulary.json"):
        return "vocabulary"
    if name.lower() in ("mean.npy", "std.npy"):
        return "stats"
    if name == "normalisation.npz":
        return "stats-npz"
    if relative.startswith("new_joint_vecs/"):
        return "features"
    if relative.startswith("texts/"):
        return "captions"
    if name in ("train.txt", "val.txt", "test.txt"):
        return "split"
    if name == "attributes.jsonl":
        return "attributes"
    if relative.endswith("checkpoint/state.json"):
        return "state"
    return None


# ------------------------------------------------------------------------------------------------ commands


@dataclass
class Inputs:
    roots: dict[str, Path]    # name -> a dataset or run directory the commands read


@pytest.fixture(scope="module")
def inputs(smoke_runs, tmp_path_factory) -> Inputs:
    """Own copies of the shared runs (damaged in place and restored), an evaluator and four resumable runs."""
    root = tmp_path_factory.mktemp("damage")
    roots = {name: root / name for name in ("data", "base", "reward")}
    for name in roots:
        shutil.copytree(smoke_runs[name], roots[name])
    roots["evaluator"] = root / "evaluator"
    assert main(["evaluator", "train", "--data", str(roots["data"]), "--profile", "smoke", "--epochs", "1",
                 "--out", str(roots["evaluator"]), "--device", "cpu", "--no-progress"]) == 0
    roots["stopped"] = root / "stopped"
    assert main(["pretrain", "--data", str(roots["data"]), "--profile", "smoke", "--iterations", "2", "--stop-after", "1",
                 "--out", str(roots["stopped"]), "--device", "cpu", "--no-progress"]) == 0
    roots["finetuned"] = root / "finetuned"
    assert main(FT(roots, roots["finetuned"])) == 0
    roots["stopped-evaluator"] = root / "stopped-evaluator"
    assert main(EV(roots, roots["stopped-evaluator"], "--stop-after", "1")) == 0
    roots["stopped-reward"] = root / "stopped-reward"
    assert main(RW(roots, roots["stopped-reward"], "--stop-after", "1")) == 0
    return Inputs(roots)


def EV(r, out, *extra) -> list[str]:
    return ["evaluator", "train", "--data", str(r["data"]), "--profile", "smoke", "--epochs", "2", "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def RW(r, out, *extra) -> list[str]:
    return ["reward", "train", "--data", str(r["data"]), "--profile", "smoke", "--epochs", "2", "--out", str(out),
            "--device", "cpu", *extra]


def FT(r, out, *extra) -> list[str]:
    return ["finetune", "--method", "easytune", "--base", str(r["base"]), "--reward", str(r["reward"]), "--data",
            str(r["data"]), "--profile", "smoke", "--iterations", "1", "--checkpoint-every", "1", "--out", str(out),
            "--device", "cpu", "--no-progress", *extra]


def first_id(r) -> str:
    return (r["data"] / "train.txt").read_text().split()[0]


# name -> (argv(roots, out), output suffix or "" for a run directory; None: the command's input is the output)
COMMANDS: dict[str, tuple[Callable, str | None]] = {
    "sample": (lambda r, o: ["sample", "--run", str(r["base"]), "--text", "a person walks", "--length", "40",
                             "--sample-steps", "2", "--device", "cpu", "--out", str(o)], ".npy"),
    "data show": (lambda r, o: ["data", "show", str(r["data"]), first_id(r), "--out", str(o)], ".html"),
    "export bvh": (lambda r, o: ["export", "bvh", "--data", str(r["data"]), "--id", first_id(r), "--out", str(o)],
                   ".bvh"),
    "pretrain": (lambda r, o: ["pretrain", "--data", str(r["data"]), "--profile", "smoke", "--iterations", "1", "--out",
                               str(o), "--device", "cpu", "--no-progress"], ""),
    "pretrain --resume": (lambda r, o: ["pretrain", "--data", str(r["data"]), "--out", str(r["stopped"]),
                                        "--resume", "--stop-after", "1", "--device", "cpu", "--no-progress"], None),
    "reward train": (lambda r, o: ["reward", "train", "--data", str(r["data"]), "--profile", "smoke", "--epochs", "1",
                                   "--out", str(o), "--device", "cpu"], ""),
    "reward eval": (lambda r, o: ["reward", "eval", "--reward", str(r["reward"]), "--data", str(r["data"]), "--out",
                                  str(o), "--device", "cpu"], ".json"),
    "evaluator train": (lambda r, o: ["evaluator", "train", "--data", str(r["data"]), "--profile", "smoke",
                                      "--epochs", "1", "--out", str(o), "--device", "cpu", "--no-progress"], ""),
    "eval": (lambda r, o: ["eval", "--model", "gt", "--evaluator", str(r["evaluator"]), "--data", str(r["data"]),
                           "--replications", "1", "--out", str(o), "--device", "cpu", "--no-progress"], ".json"),
    "finetune": (lambda r, o: FT(r, o, "--evaluator", str(r["evaluator"]), "--eval-motions", "32"), ""),
    "finetune --resume": (lambda r, o: FT(r, r["finetuned"], "--resume"), None),
    # resumed at the checkpoint's epoch: everything is read and checked, nothing trained or written
    "evaluator train --resume": (lambda r, o: EV(r, r["stopped-evaluator"], "--resume", "--stop-after", "1"), None),
    "reward train --resume": (lambda r, o: RW(r, r["stopped-reward"], "--resume", "--stop-after", "1"), None),
}


# while working on one command: DAMAGE_COMMANDS="sample,eval" runs only those (CI runs them all)
ONLY = [c.strip() for c in os.environ.get("DAMAGE_COMMANDS", "").split(",") if c.strip()]
if ONLY:
    COMMANDS = {k: v for k, v in COMMANDS.items() if k in ONLY}


@dataclass
class Target:
    command: str
    root: str          # which input directory
    relative: str      # the file inside it
    fmt: str


@pytest.fixture(scope="module")
def catalogue(inputs, tmp_path_factory) -> list[Target]:
    """What each command reads, recorded on good inputs: every run file, the dataset's statistics and split lists,
    and the first feature and caption file the command opens (all of them are read alike)."""
    out_root = tmp_path_factory.mktemp("good-outputs")
    targets, unknown = [], []
    by_path = {os.path.realpath(p): name for name, p in inputs.roots.items()}
    for command, (argv, suffix) in COMMANDS.items():
        out = out_root / f"{command.replace(' ', '_')}{suffix or ''}"
        seen_kinds: set[tuple[str, str]] = set()
        for path in record_reads(argv(inputs.roots, out)):
            owner = next((root for root in by_path if path.startswith(root + os.sep)), None)
            if owner is None:
                continue
            name, relative = by_path[owner], os.path.relpath(path, owner)
            if relative.startswith(("checkpoint.", ".")) or "/." in relative:
                continue
            fmt = file_format(relative)
            if fmt is None:
                unknown.append(f"{command}: {name}/{relative}")
                continue
            if fmt in ("features", "captions"):
                if (name, fmt) in seen_kinds:
                    continue
                seen_kinds.add((name, fmt))
            targets.append(Target(command, name, relative, fmt))
    assert not unknown, f"files read by a command with no declared damage kinds: {unknown}"
    return targets


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _check_case(inputs: Inputs, target: Target, damage: str, out: Path, capsys) -> str | None:
    """Run one damaged case; return a failure description or None."""
    argv_of, suffix = COMMANDS[target.command]
    root = inputs.roots[target.root]
    path = root / target.relative
    original = path.read_bytes()
    try:
        FORMATS[target.fmt][damage](path)
        before = {name: _snapshot(r) for name, r in inputs.roots.items()}
        capsys.readouterr()
        try:
            code = main(argv_of(inputs.roots, out))
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - an escaped exception is a traceback for the user
            return f"traceback: {type(exc).__name__}: {exc}"
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        where = f"{target.command} / {target.root}/{target.relative} / {damage}"
        if code in (0, None):
            return f"{where}: exit 0"
        if len(lines) != 1 or "Traceback" in err:
            return f"{where}: {len(lines)} lines: {err[-500:]}"
        named = str(path) in lines[0] or target.relative in lines[0] \
            or (target.root not in ("data",) and str(root) in lines[0])
        if not named:
            return f"{where}: the line names neither the file nor its run: {lines[0]}"
        if suffix is not None and (out.exists() or any(p.name.startswith(out.name) and not p.name.endswith(".lock")
                                                       for p in out.parent.iterdir())):
            return f"{where}: partial output {out}"
        after = {name: _snapshot(r) for name, r in inputs.roots.items()}
        if after != before:
            changed = [f"{n}/{k}" for n in before for k in set(before[n]) | set(after[n])
                       if before[n].get(k) != after[n].get(k)]
            return f"{where}: inputs changed: {changed[:5]}"
        return None
    finally:
        path.write_bytes(original)


def test_every_file_every_command_reads_survives_every_damage(inputs, catalogue, tmp_path, capsys):
    failures, cases = [], 0
    for i, target in enumerate(catalogue):
        for damage in FORMATS[target.fmt]:
            if (Path(target.relative).name, damage) in SKIP:
                continue
            cases += 1
            out = tmp_path / f"case{cases}{COMMANDS[target.command][1] or ''}"
            problem = _check_case(inputs, target, damage, out, capsys)
            if problem:
                failures.append(problem)
    files = {(t.root, t.relative) for t in catalogue}
    with capsys.disabled():
        print(f"\ndamage catalogue: {len(catalogue)} (command, file) pairs over {len(files)} distinct files and "
              f"{len(COMMANDS)} commands, {cases} damaged cases")
    Path(os.environ.get("DAMAGE_REPORT", os.devnull)).write_text("\n".join(failures))
    assert not failures, "\n".join(failures)
    for fmt, kinds in FORMATS.items():
        assert set(DAMAGES) <= set(kinds), fmt
    assert {t.command for t in catalogue} == set(COMMANDS)
