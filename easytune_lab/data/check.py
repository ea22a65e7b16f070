"""``easytune data check``: every problem of a HumanML3D/KIT-format directory, one line each.

The checks mirror what the loader (:mod:`easytune_lab.data.humanml`) and the T2M conventions need: the folders
and files exist; ``Mean.npy``/``Std.npy`` are 1-d of the skeleton's width, finite, with ``Std > 0``; split files
list valid ids, each once and in one split only; every listed id has a readable 2-d float feature file of the
right width, without NaN/Inf, and a caption file whose lines all parse; each motion yields at least one clip of
``[min_len, 200)`` frames (40 for HumanML3D, 24 for KIT) and sub-clip tags lie inside the motion. Nothing here
raises: a damaged file becomes a problem line naming it. Feature headers are memory-mapped, so only the
finiteness check reads the data.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..runs import MIN_STD
from .humanml import (FEATURES_DIR, JOINTS_DIR, SKELETONS, SPLITS, TEXTS_DIR, SkeletonSpec, features_path,
                      motion_clips, nonfinite_message, read_npy_header, text_path, valid_id)
from .text import Caption, CaptionError, parse_caption_line, read_caption_lines


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found: ``problems`` (one line each, naming the file) and summary numbers."""

    root: Path
    skeleton: str | None = None
    problems: list[str] = field(default_factory=list)
    split_ids: dict[str, list[str]] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)         # id -> number of frames
    captions: dict[str, int] = field(default_factory=dict)       # id -> number of caption lines
    subclip_captions: int = 0
    clips: dict[str, int] = field(default_factory=dict)          # split -> usable clips
    caption_words: Counter = field(default_factory=Counter)
    orphan_features: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: str | os.PathLike, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def length_histogram(self, bin_size: int = 20) -> list[tuple[int, int, int]]:
        """(lo, hi, count) bins of the motion lengths (frames) of all listed motions."""
        lengths = np.array(list(self.frames.values()), dtype=int)
        if lengths.size == 0:
            return []
        edges = np.arange(lengths.min() // bin_size * bin_size, lengths.max() + bin_size + 1, bin_size)
        counts, _ = np.histogram(lengths, bins=edges)
        return [(int(lo), int(hi), int(n)) for lo, hi, n in zip(edges[:-1], edges[1:], counts)]

    def summary(self, width: int = 40) -> str:
        spec = SKELETONS.get(self.skeleton or "")
        head = f"{self.root}: OK" + (f" (skeleton {spec.name}, {spec.dim}-d features, {spec.fps:g} fps)" if spec else "")
        lines = [head, f"  {'split':<6} {'motions':>8} {'clips':>7} {'captions':>9} {'frames min/median/max':>22}"]
        for split, ids in self.split_ids.items():
            lens = [self.frames[i] for i in ids if i in self.frames]
            caps = sum(self.captions.get(i, 0) for i in ids)
            stats = f"{min(lens)}/{int(np.median(lens))}/{max(lens)}" if lens else "-"
            lines.append(f"  {split:<6} {len(ids):>8} {self.clips.get(split, 0):>7} {caps:>9} {stats:>22}")
        n_caps = sum(self.captions.values())
        per = list(self.captions.values())
        if per:
            lines.append(f"captions: {n_caps} ({min(per)}-{max(per)} per motion, mean {np.mean(per):.2f}; "
                         f"{self.subclip_captions} describe sub-clips); {len(self.caption_words)} distinct words")
        hist = self.length_histogram()
        if hist:
            top = max(n for _, _, n in hist) or 1
            lines.append("motion lengths (frames):")
            for lo, hi, n in hist:
                lines.append(f"  [{lo:>4}, {hi:>4})  {'#' * max(int(round(width * n / top)), 1 if n else 0):<{width}} {n}")
        if self.orphan_features:
            lines.append(f"{self.orphan_features} feature file(s) in {FEATURES_DIR}/ belong to no split")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "skeleton": self.skeleton,
            "problems": list(self.problems),
            "motions": {s: len(ids) for s, ids in self.split_ids.items()},
            "clips": dict(self.clips),
            "captions": int(sum(self.captions.values())),
            "subclip_captions": self.subclip_captions,
            "distinct_words": len(self.caption_words),
            "length_histogram": [{"lo": lo, "hi": hi, "count": n} for lo, hi, n in self.length_histogram()],
            "orphan_features": self.orphan_features,
        }


def _load_header(report: DatasetReport, path: Path) -> np.ndarray | None:
    """Memory-map an .npy after checking its header; a problem line and None if it cannot be read."""
    try:
        read_npy_header(path)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except UserError as exc:
        report.problems.append(str(exc))
    except Exception as exc:  # anything else numpy rejects
        report.add(path, f"unreadable .npy ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    return None


def _check_stats(report: DatasetReport, root: Path) -> tuple[int | None, int | None]:
    """Check Mean.npy/Std.npy; return their widths (None where unusable)."""
    widths: list[int | None] = []
    for name in ("Mean.npy", "Std.npy"):
        path = root / name
        if not path.is_file():
            report.add(path, "missing (normalisation statistics, shape (D,))")
            widths.append(None)
            continue
        arr = _load_header(report, path)
        if arr is None:
            widths.append(None)
            continue
        if arr.dtype.kind not in "fiu" or arr.ndim != 1:
            report.add(path, f"expected a 1-d float array, got shape {arr.shape} dtype {arr.dtype}")
            widths.append(None)
            continue
        values = np.asarray(arr, dtype=np.float64)
        nonfinite = ~np.isfinite(values)
        if nonfinite.any():
            report.add(path, f"{int(nonfinite.sum())} NaN/Inf value(s) at indices {_indices(nonfinite)}")
        if name == "Std.npy":
            finite = np.where(nonfinite, 1.0, values)
            if (finite == 0).any():
                report.add(path, f"{int((finite == 0).sum())} zero entries at indices {_indices(finite == 0)} "
                                 "(normalisation would divide by zero)")
            if (finite < 0).any():
                report.add(path, f"{int((finite < 0).sum())} negative entries at indices {_indices(finite < 0)}")
            tiny = (finite > 0) & (finite < MIN_STD)
            if tiny.any():
                report.add(path, f"{int(tiny.sum())} entries below {MIN_STD:g} at indices {_indices(tiny)} "
                                 "(normalising by them overflows)")
        widths.append(arr.shape[0])
    return widths[0], widths[1]


def _indices(mask: np.ndarray, limit: int = 5) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in idx[:limit])
    return shown + (f", ... ({len(idx) - limit} more)" if len(idx) > limit else "")


def _read_splits(report: DatasetReport, root: Path) -> dict[str, list[str]]:
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        path = root / f"{split}.txt"
        if not path.is_file():
            report.add(path, "missing split file (ids, one per line)")
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            report.add(path, f"unreadable split file ({type(exc).__name__})")
            continue
        ids: list[str] = []
        seen: dict[str, list[int]] = {}
        for n, line in enumerate(lines, start=1):
            motion_id = line.strip()
            if not motion_id:
                continue
            if not valid_id(motion_id):
                report.add(path, f"line {n}: invalid id {motion_id!r} (must be a plain file stem)")
                continue
            if motion_id in seen:
                seen[motion_id].append(n)
                continue
            seen[motion_id] = [n]
            ids.append(motion_id)
        for motion_id, where in seen.items():
            if len(where) > 1:
                report.add(path, f"id '{motion_id}' listed {len(where)} times (lines {', '.join(map(str, where))})")
        if not ids:
            report.add(path, "lists no ids")
        splits[split] = ids
    owners: dict[str, list[str]] = {}
    for split, ids in splits.items():
        for motion_id in ids:
            owners.setdefault(motion_id, []).append(split)
    for motion_id, in_splits in owners.items():
        if len(in_splits) > 1:
            files = ", ".join(f"{s}.txt" for s in in_splits)
            report.add(root / f"{in_splits[0]}.txt", f"id '{motion_id}' is in several splits ({files})")
    return splits


def _resolve_spec(report: DatasetReport, root: Path, skeleton: str | None, mean_w: int | None,
                  std_w: int | None, first_ids: list[str]) -> SkeletonSpec | None:
    if skeleton is not None:
        if skeleton not in SKELETONS:
            report.add("--skeleton", f"unknown skeleton '{skeleton}' (choose from {', '.join(SKELETONS)})")
            return None
        spec = SKELETONS[skeleton]
        for name, w in (("Mean.npy", mean_w), ("Std.npy", std_w)):
            if w is not None and w != spec.dim:
                report.add(root / name, f"width {w}, expected {spec.dim} for skeleton {spec.name}")
        return spec
    by_dim = {s.dim: s for s in SKELETONS.values()}
    known = ", ".join(f"{s.dim} ({s.name})" for s in SKELETONS.values())
    if mean_w is not None and std_w is not None and std_w != mean_w:
        report.add(root / "Std.npy", f"width {std_w} differs from Mean.npy's {mean_w}")
    for name, w in (("Mean.npy", mean_w), ("Std.npy", std_w)):
        if w is not None:
            if w in by_dim:
                return by_dim[w]
            report.add(root / name, f"width {w} matches no skeleton (known widths: {known})")
    for motion_id in first_ids[:1]:  # no usable statistics: infer from the first feature file, if it reads
        try:
            arr = np.load(features_path(root, motion_id), mmap_mode="r", allow_pickle=False)
            if arr.ndim == 2 and arr.shape[1] in by_dim:
                return by_dim[arr.shape[1]]
        except Exception:
            pass
    return None


def _check_features(report: DatasetReport, path: Path, spec: SkeletonSpec | None) -> int | None:
    """Check one feature file; return its frame count when it is usable."""
    arr = _load_header(report, path)
    if arr is None:
        return None
    if arr.dtype.kind != "f":
        report.add(path, f"dtype {arr.dtype}, expected float32")
        return None
    if arr.ndim != 2:
        report.add(path, f"expected a 2-d (frames, features) array, got shape {arr.shape}")
        return None
    if spec is not None and arr.shape[1] != spec.dim:
        report.add(path, f"feature width {arr.shape[1]}, expected {spec.dim} ({spec.name})")
        return None
    if arr.shape[0] == 0:
        report.add(path, "has no frames")
        return None
    try:
        finite = np.isfinite(np.asarray(arr))
    except Exception as exc:  # an I/O error while reading the data
        report.add(path, f"unreadable data ({type(exc).__name__})")
        return None
    if not finite.all():
        report.add(path, nonfinite_message(finite))
        return None
    return int(arr.shape[0])


def _check_captions(report: DatasetReport, path: Path, frames: int | None,
                    spec: SkeletonSpec | None) -> list[Caption] | None:
    """Check one caption file line by line; return the parsed captions when all lines are good."""
    try:
        numbered = read_caption_lines(path)
    except UserError as exc:
        report.problems.append(str(exc))
        return None
    if not numbered:
        report.add(path, "no captions (empty file)")
        return None
    captions, good = [], True
    for n, line in numbered:
        try:
            cap = parse_caption_line(line, where=f"{path}: line {n}")
        except CaptionError as exc:
            report.problems.append(str(exc))
            good = False
            continue
        if not cap.whole and frames is not None and spec is not None:
            a, b = cap.clip_frames(spec.fps)
            if a >= frames:  # T2M truncates a clip that runs past the end; one starting there is empty
                report.add(path, f"line {n}: clip {cap.start:g}-{cap.end:g} s starts at frame {a}, after the "
                                 f"motion's {frames} frames")
                good = False
                continue
        captions.append(cap)
    return captions if good else None


def check_dataset(root: str | os.PathLike, skeleton: str | None = None) -> DatasetReport:
    """Check a HumanML3D/KIT-format directory; never raises for a bad dataset (see the module docstring)."""
    root = Path(root)
    report = DatasetReport(root=root, skeleton=skeleton)
    if not root.is_dir():
        report.add(root, "dataset directory not found" if not root.exists() else "not a directory")
        return report
    feat_dir, text_dir = root / FEATURES_DIR, root / TEXTS_DIR
    mean_w, std_w = _check_stats(report, root)
    splits = _read_splits(report, root)
    report.split_ids = splits
    all_ids = list(dict.fromkeys(i for ids in splits.values() for i in ids))
    for folder, what in ((feat_dir, "<id>.npy feature arrays"), (text_dir, "<id>.txt caption files")):
        if not folder.is_dir():
            report.add(folder, f"missing folder ({what}; {len(all_ids)} listed id(s) have none)")
    spec = _resolve_spec(report, root, skeleton, mean_w, std_w, all_ids)
    report.skeleton = spec.name if spec is not None else skeleton
    joints_dir = root / JOINTS_DIR
    has_joints = joints_dir.is_dir()
    listed_in = {i: s for s, ids in splits.items() for i in ids}

    motion_clip_counts: dict[str, int] = {}
    for motion_id in all_ids:
        fpath, tpath = features_path(root, motion_id), text_path(root, motion_id)
        frames = None
        if not fpath.is_file():
            if feat_dir.is_dir():
                report.add(fpath, f"missing (id listed in {listed_in[motion_id]}.txt)")
        else:
            frames = _check_features(report, fpath, spec)
        if frames is not None:
            report.frames[motion_id] = frames
        captions = None
        if not tpath.is_file():
            if text_dir.is_dir():
                report.add(tpath, f"missing (id listed in {listed_in[motion_id]}.txt)")
        else:
            captions = _check_captions(report, tpath, frames, spec)
        if captions is not None:
            report.captions[motion_id] = len(captions)
            report.subclip_captions += sum(not c.whole for c in captions)
            for c in captions:
                report.caption_words.update(c.words)
        if has_joints and spec is not None:
            _check_joints(report, joints_dir / f"{motion_id}.npy", spec)
        if frames is not None and captions is not None and spec is not None:
            n_clips = len(motion_clips(motion_id, frames, captions, spec))
            motion_clip_counts[motion_id] = n_clips
            if n_clips == 0:
                report.add(fpath, f"{frames} frames: no clip of [{spec.min_len}, {spec.max_len}) frames "
                                  f"(length out of range for {spec.name}; the loader would drop this motion)")
    report.clips = {s: sum(motion_clip_counts.get(i, 0) for i in ids) for s, ids in splits.items()}
    if feat_dir.is_dir():
        try:
            listed = set(all_ids)
            report.orphan_features = sum(1 for e in os.scandir(feat_dir)
                                         if e.name.endswith(".npy") and e.name[:-4] not in listed)
        except OSError as exc:
            report.add(feat_dir, f"unreadable folder ({exc})")
    return report


def _check_joints(report: DatasetReport, path: Path, spec: SkeletonSpec) -> None:
    """Optional ``new_joints/<id>.npy``: when present it must be (T, J, 3) for the skeleton's J joints."""
    if not path.is_file():
        return
    arr = _load_header(report, path)
    if arr is None:
        return
    if arr.ndim != 3 or arr.shape[1:] != (spec.joints, 3):
        report.add(path, f"shape {arr.shape}, expected (frames, {spec.joints}, 3) for {spec.name}")
