"""``easytune data check``: exit 0 and a summary on a valid dir; one corruption at a time is found and named."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from easytune_lab.cli import main
from easytune_lab.data.check import check_dataset
from easytune_lab.io import write_npy as _write_npy
from easytune_lab.io import write_text

from helpers import copy_dataset, small_dataset


def write_npy(path, array):  # the damaged datasets here hold NaN/Inf on purpose
    _write_npy(path, array, allow_nonfinite=True)

ROOT = Path(__file__).resolve().parents[1]


def _ids(root: Path, split: str) -> list[str]:
    return [line.strip() for line in (root / f"{split}.txt").read_text().splitlines() if line.strip()]


def _features(root: Path, motion_id: str) -> Path:
    return root / "new_joint_vecs" / f"{motion_id}.npy"


def _texts(root: Path, motion_id: str) -> Path:
    return root / "texts" / f"{motion_id}.txt"


# Each corruption changes a fresh copy and returns the name that must appear in the output.
def missing_features(root: Path) -> str:
    motion_id = _ids(root, "train")[0]
    _features(root, motion_id).unlink()
    return f"{motion_id}.npy"


def missing_texts(root: Path) -> str:
    motion_id = _ids(root, "val")[0]
    _texts(root, motion_id).unlink()
    return f"{motion_id}.txt"


def unknown_id_in_split(root: Path) -> str:
    write_text(root / "test.txt", (root / "test.txt").read_text() + "ghost_001\n")
    return "ghost_001.npy"


def wrong_width(root: Path) -> str:
    motion_id = _ids(root, "train")[1]
    write_npy(_features(root, motion_id), np.zeros((80, 200), np.float32))
    return f"{motion_id}.npy"


def wrong_ndim(root: Path) -> str:
    motion_id = _ids(root, "train")[2]
    write_npy(_features(root, motion_id), np.zeros((80, 263, 1), np.float32))
    return f"{motion_id}.npy"


def nan_features(root: Path) -> str:
    motion_id = _ids(root, "test")[0]
    arr = np.load(_features(root, motion_id))
    arr[3, 5] = np.nan
    write_npy(_features(root, motion_id), arr)
    return f"{motion_id}.npy"


def inf_features(root: Path) -> str:
    motion_id = _ids(root, "train")[3]
    arr = np.load(_features(root, motion_id))
    arr[-1, 0] = np.inf
    write_npy(_features(root, motion_id), arr)
    return f"{motion_id}.npy"


def garbage_npy(root: Path) -> str:
    motion_id = _ids(root, "train")[4]
    _features(root, motion_id).write_bytes(b"this is not a numpy file")
    return f"{motion_id}.npy"


def truncated_npy(root: Path) -> str:
    motion_id = _ids(root, "train")[5]
    path = _features(root, motion_id)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{motion_id}.npy"


def pickled_npy(root: Path) -> str:
    motion_id = _ids(root, "train")[6]
    np.save(_features(root, motion_id), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return f"{motion_id}.npy"


def too_short(root: Path) -> str:
    motion_id = _ids(root, "train")[7]
    write_npy(_features(root, motion_id), np.zeros((12, 263), np.float32))
    write_text(_texts(root, motion_id), "a person stands.#a/DET person/NOUN stand/VERB#0.0#0.0\n")
    return f"{motion_id}.npy"


def empty_caption_file(root: Path) -> str:
    motion_id = _ids(root, "train")[8]
    write_text(_texts(root, motion_id), "")
    return f"{motion_id}.txt"


def empty_caption_line(root: Path) -> str:
    motion_id = _ids(root, "train")[9]
    lines = _texts(root, motion_id).read_text().splitlines()
    write_text(_texts(root, motion_id), "\n".join([lines[0], "", *lines[1:]]) + "\n")
    return f"{motion_id}.txt"


def malformed_caption_line(root: Path) -> str:
    motion_id = _ids(root, "val")[1]
    write_text(_texts(root, motion_id), _texts(root, motion_id).read_text() + "a caption#a/DET caption/NOUN\n")
    return f"{motion_id}.txt"


def untagged_token(root: Path) -> str:
    motion_id = _ids(root, "test")[1]
    write_text(_texts(root, motion_id), "a person walks.#a/DET person walk/VERB#0.0#0.0\n")
    return f"{motion_id}.txt"


def mean_wrong_width(root: Path) -> str:
    write_npy(root / "Mean.npy", np.zeros(100, np.float32))
    return "Mean.npy"


def std_zero(root: Path) -> str:
    std = np.load(root / "Std.npy")
    std[10] = 0.0
    write_npy(root / "Std.npy", std)
    return "Std.npy"


def std_negative(root: Path) -> str:
    std = np.load(root / "Std.npy")
    std[:3] = -1.0
    write_npy(root / "Std.npy", std)
    return "Std.npy"


def std_nan(root: Path) -> str:
    std = np.load(root / "Std.npy")
    std[7] = np.nan
    write_npy(root / "Std.npy", std)
    return "Std.npy"


def missing_std(root: Path) -> str:
    (root / "Std.npy").unlink()
    return "Std.npy"


def duplicated_id(root: Path) -> str:
    ids = _ids(root, "train")
    write_text(root / "train.txt", "\n".join(ids + [ids[0]]) + "\n")
    return "train.txt"


def id_in_two_splits(root: Path) -> str:
    write_text(root / "val.txt", (root / "val.txt").read_text() + _ids(root, "test")[0] + "\n")
    return "test.txt"


def missing_split(root: Path) -> str:
    (root / "test.txt").unlink()
    return "test.txt"


def missing_texts_folder(root: Path) -> str:
    for path in (root / "texts").iterdir():
        path.unlink()
    (root / "texts").rmdir()
    return "texts"


CORRUPTIONS: list[Callable[[Path], str]] = [
    missing_features, missing_texts, unknown_id_in_split, wrong_width, wrong_ndim, nan_features, inf_features,
    garbage_npy, truncated_npy, pickled_npy, too_short, empty_caption_file, empty_caption_line,
    malformed_caption_line, untagged_token, mean_wrong_width, std_zero, std_negative, std_nan, missing_std,
    duplicated_id, id_in_two_splits, missing_split, missing_texts_folder,
]


@pytest.fixture()
def dataset(tmp_path_factory) -> Path:
    return small_dataset(tmp_path_factory)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_valid_dataset_passes_with_summary(dataset, capsys):
    code, out = _run(["data", "check", str(dataset)], capsys)
    assert code == 0, out
    report = check_dataset(dataset)
    assert report.problems == []
    assert "OK" in out and "train" in out and "test" in out and "motion lengths (frames)" in out
    n_train = len(_ids(dataset, "train"))
    assert re.search(rf"^\s+train\s+{n_train}\s", out, flags=re.M)
    hist = report.length_histogram()
    assert sum(n for _, _, n in hist) == len(report.frames) == sum(len(ids) for ids in report.split_ids.values())
    as_dict = json.loads(json.dumps(report.as_dict()))
    assert as_dict["motions"]["train"] == n_train and as_dict["problems"] == []
    assert sum(b["count"] for b in as_dict["length_histogram"]) == len(report.frames)


def test_valid_dataset_passes_as_a_subprocess(dataset):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "easytune_lab.cli", "data", "check", str(dataset)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_corrupted_dataset_fails_in_a_subprocess(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "copy")
    name = garbage_npy(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "easytune_lab.cli", "data", "check", str(root)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and name in out and "Traceback" not in out


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_each_corruption_is_reported_naming_the_file(corrupt, dataset, tmp_path, capsys):
    root = copy_dataset(dataset, tmp_path / "copy")
    name = corrupt(root)
    code, out = _run(["data", "check", str(root)], capsys)
    assert code != 0
    assert "Traceback" not in out
    offending = [line for line in out.splitlines() if name in line]
    assert offending, f"{name} not named in:\n{out}"
    assert all(line.startswith(str(root)) or line.startswith("--") for line in out.splitlines()[:-1])


def test_every_problem_is_reported_not_just_the_first(dataset, tmp_path):
    root = copy_dataset(dataset, tmp_path / "copy")
    before = set(check_dataset(root).problems)  # empty for a valid base (asserted by the test above)
    names = [corrupt(root) for corrupt in (nan_features, missing_texts, std_zero, duplicated_id, untagged_token)]
    new = [line for line in check_dataset(root).problems if line not in before]
    assert len(new) == 5, new
    for name in names:
        assert sum(name in line for line in new) == 1


def test_skeleton_option_and_missing_directory(dataset, tmp_path, capsys):
    code, out = _run(["data", "check", str(dataset), "--skeleton", "kit"], capsys)
    assert code == 1 and "Mean.npy: width 263, expected 251" in out and "Traceback" not in out
    code, out = _run(["data", "check", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and "nowhere: dataset directory not found" in out
