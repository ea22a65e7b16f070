"""HumanML3D / KIT-ML directories: read, normalise, split into clips, batch.

Layout (Guo et al. 2022, "Generating Diverse and Natural 3D Human Motions from Text")::

    ROOT/new_joint_vecs/<id>.npy   float32 (T, 263) HumanML3D features, (T, 251) for KIT-ML
    ROOT/new_joints/<id>.npy       optional float32 (T, J, 3) joint positions
    ROOT/texts/<id>.txt            captions, see :mod:`easytune_lab.data.text`
    ROOT/{train,val,test}.txt      ids, one per line
    ROOT/Mean.npy, ROOT/Std.npy    (D,) normalisation statistics

The dataset follows T2M's ``Text2MotionDatasetV2``: a motion is kept when its length lies in
``[min_len, 200)`` frames (40 for HumanML3D at 20 fps, 24 for KIT at 12.5 fps); whole-motion captions share one
clip, each sub-clip caption (non-zero tags) becomes a clip of its own, kept under the same length rule; an
item's length is cut down to a multiple of ``unit_length`` (4) at a random offset when training and at the start
when evaluating; features are z-normalised, ``(x - Mean) / Std``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from ..runs import MIN_STD
from .text import Caption, Vocabulary, parse_caption_file

SPLITS = ("train", "val", "test")
FEATURES_DIR, JOINTS_DIR, TEXTS_DIR = "new_joint_vecs", "new_joints", "texts"


@dataclass(frozen=True)
class SkeletonSpec:
    """Per-dataset constants of the T2M conventions."""

    name: str
    dim: int          # feature width: 4 + 9 (J-1) + 3 J + 4 for J joints
    joints: int
    fps: float
    min_len: int      # shortest kept clip (frames)
    max_len: int = 200  # clips must be shorter than this (frames)


SKELETONS: dict[str, SkeletonSpec] = {
    "t2m": SkeletonSpec("t2m", dim=263, joints=22, fps=20.0, min_len=40),
    "kit": SkeletonSpec("kit", dim=251, joints=21, fps=12.5, min_len=24),
}


def infer_skeleton(dim: int) -> str:
    """``263 -> "t2m"``, ``251 -> "kit"``; UserError otherwise."""
    for spec in SKELETONS.values():
        if spec.dim == dim:
            return spec.name
    known = ", ".join(f"{s.dim} ({s.name})" for s in SKELETONS.values())
    raise UserError(f"feature width {dim} matches no skeleton (known widths: {known})")


def skeleton_spec(skeleton: str) -> SkeletonSpec:
    if skeleton not in SKELETONS:
        raise UserError(f"--skeleton: unknown skeleton '{skeleton}' (choose from {', '.join(SKELETONS)})")
    return SKELETONS[skeleton]


# ----------------------------------------------------------------------------------------------- files

_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def valid_id(motion_id: str) -> bool:
    """An id must be a plain file stem (no separators, whitespace or leading dot)."""
    return bool(_ID_RE.match(motion_id)) and not motion_id.startswith(".")


def features_path(root: str | os.PathLike, motion_id: str) -> Path:
    return Path(root) / FEATURES_DIR / f"{motion_id}.npy"


def text_path(root: str | os.PathLike, motion_id: str) -> Path:
    return Path(root) / TEXTS_DIR / f"{motion_id}.txt"


@dataclass(frozen=True)
class NpyHeader:
    """What an .npy file's header promises (read without loading the data)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    data_bytes: int      # bytes the data needs
    file_bytes: int      # bytes present after the header


def read_npy_header(path: str | os.PathLike) -> NpyHeader:
    """Parse the header of an .npy file; UserError naming the file if it is missing, not an .npy file, holds
    pickled objects, or is shorter than its header promises (a truncated copy)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
            except ValueError:
                raise UserError(f"{path}: not an .npy file (bad magic bytes)") from None
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            try:
                shape, _fortran, dtype = reader(fh)
            except ValueError as exc:
                raise UserError(f"{path}: unreadable .npy header ({exc})") from None
            offset = fh.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise UserError(f"{path}: holds pickled Python objects (dtype {dtype}), expected float32 numbers")
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size - offset < need:
        raise UserError(f"{path}: truncated ({size - offset} data bytes, the header {shape} {dtype} needs {need})")
    return NpyHeader(tuple(int(n) for n in shape), dtype, need, size - offset)


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickles, after :func:`read_npy_header`; UserError naming the file if unreadable."""
    path = Path(path)
    read_npy_header(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/... for damaged files
        raise UserError(f"{path}: unreadable .npy ({type(exc).__name__}: {exc})") from None


def nonfinite_message(finite: np.ndarray) -> str:
    """``"3 NaN/Inf value(s), first at frame 12"`` for a (T, D) mask of finite entries."""
    bad_rows = np.flatnonzero(~finite.all(axis=1)) if finite.ndim == 2 else np.flatnonzero(~finite)
    return f"{int(finite.size - np.count_nonzero(finite))} NaN/Inf value(s), first at frame {int(bad_rows[0])}"


def read_features(path: str | os.PathLike, dim: int | None = None) -> np.ndarray:
    """A float32 (T, D) feature array; UserError naming the file for wrong ndim/width/dtype, empty or non-finite."""
    path = Path(path)
    arr = load_npy(path)
    if arr.dtype.kind != "f":
        raise UserError(f"{path}: dtype {arr.dtype}, expected float32 (as `easytune data check` requires)")
    if arr.ndim != 2:
        raise UserError(f"{path}: expected a 2-d (frames, features) array, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise UserError(f"{path}: feature width {arr.shape[1]}, expected {dim}")
    if arr.shape[0] == 0:
        raise UserError(f"{path}: has no frames")
    arr = arr.astype(np.float32, copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        raise UserError(f"{path}: {nonfinite_message(finite)}")
    return arr


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Ids of ``ROOT/<split>.txt`` (blank lines ignored); UserError if missing, empty or holding bad ids."""
    path = Path(root) / f"{split}.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: unreadable split file ({exc})") from None
    ids = [line.strip() for line in lines if line.strip()]
    if not ids:
        raise UserError(f"{path}: split file lists no ids")
    bad = [i for i in ids if not valid_id(i)]
    if bad:
        raise UserError(f"{path}: invalid id(s) {bad[:3]}")
    return ids


def load_mean_std(root: str | os.PathLike, skeleton: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``Mean.npy`` and ``Std.npy`` as float32 (D,); UserError for wrong shape, non-finite values or Std <= 0."""
    root = Path(root)
    out = []
    for name in ("Mean.npy", "Std.npy"):
        path = root / name
        arr = load_npy(path)
        if arr.ndim != 1 or arr.dtype.kind not in "fiu":
            raise UserError(f"{path}: expected a 1-d numeric array, got shape {arr.shape} dtype {arr.dtype}")
        if skeleton is not None and arr.shape[0] != skeleton_spec(skeleton).dim:
            raise UserError(f"{path}: width {arr.shape[0]}, expected {skeleton_spec(skeleton).dim} for {skeleton}")
        if not np.isfinite(arr).all():
            raise UserError(f"{path}: holds NaN/Inf values")
        out.append(arr.astype(np.float32))
    mean, std = out
    if mean.shape != std.shape:
        raise UserError(f"{root / 'Std.npy'}: width {std.shape[0]} differs from Mean.npy's {mean.shape[0]}")
    if (std <= 0).any():
        raise UserError(f"{root / 'Std.npy'}: {int((std <= 0).sum())} entries are zero or negative")
    if (std < MIN_STD).any():
        raise UserError(f"{root / 'Std.npy'}: {int((std < MIN_STD).sum())} entries below {MIN_STD:g} (smallest "
                        f"{std.min():.3g}); normalising by them overflows")
    return mean, std


def normalise(x, mean, std):
    """``(x - mean) / std`` over the last axis (numpy arrays or torch tensors)."""
    if isinstance(x, torch.Tensor):
        mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return (x - mean) / std


def denormalise(x, mean, std):
    """``x * std + mean`` over the last axis, the inverse of :func:`normalise`."""
    if isinstance(x, torch.Tensor):
        mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
        std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    return x * std + mean


def read_motion(root: str | os.PathLike, motion_id: str) -> tuple[np.ndarray, list[str]]:
    """Raw (un-normalised) features (T, D) of one motion and its caption texts ([] when it has no caption file)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset directory not found")
    if not valid_id(motion_id):
        raise UserError(f"id '{motion_id}': not a valid motion id (a file stem in {root / FEATURES_DIR})")
    path = features_path(root, motion_id)
    if not path.is_file():
        raise UserError(f"{path}: no features for id '{motion_id}'")
    features = read_features(path)
    widths = sorted(spec.dim for spec in SKELETONS.values())
    if features.shape[1] not in widths:
        raise UserError(f"{path}: feature width {features.shape[1]} matches no skeleton (known widths: "
                        f"{', '.join(map(str, widths))})")
    tpath = text_path(root, motion_id)
    captions = [c.text for c in parse_caption_file(tpath)] if tpath.is_file() else []
    return features, captions


# ----------------------------------------------------------------------------------------------- clips

@dataclass
class Clip:
    """One trainable entry: a frame range of a motion and the captions that describe it."""

    motion_id: str
    start: int                 # first frame in the motion
    length: int                # frames
    captions: list[Caption]

    @property
    def name(self) -> str:
        """``<id>`` for the whole motion, ``<id>@<start>-<end>`` for a sub-clip (T2M used a random prefix)."""
        return self.motion_id if self.start == 0 and all(c.whole for c in self.captions) \
            else f"{self.motion_id}@{self.start}-{self.start + self.length}"


def motion_clips(motion_id: str, num_frames: int, captions: Sequence[Caption], spec: SkeletonSpec) -> list[Clip]:
    """T2M's expansion of one motion into clips: whole-motion captions -> one clip if ``num_frames`` is in
    ``[min_len, max_len)``; each sub-clip caption -> ``[int(start*fps), int(end*fps))`` if its length is too."""
    def usable(n: int) -> bool:
        return spec.min_len <= n < spec.max_len

    clips: list[Clip] = []
    whole = [c for c in captions if c.whole]
    if whole and usable(num_frames):
        clips.append(Clip(motion_id, 0, num_frames, whole))
    for cap in captions:
        if cap.whole:
            continue
        a, b = cap.clip_frames(spec.fps)
        b = min(b, num_frames)
        if b > a and usable(b - a):
            clips.append(Clip(motion_id, a, b - a, [cap]))
    return clips


# ----------------------------------------------------------------------------------------------- dataset

@dataclass
class MotionItem:
    """One dataset item. ``features`` are normalised (length, D); tokens follow T2M's sos/eos framing."""

    motion_id: str
    features: torch.Tensor     # float32 (length, D)
    length: int
    caption: str
    token_ids: torch.Tensor    # int64 (max_text_len + 2,)
    pos_one_hot: torch.Tensor  # float32 (max_text_len + 2, 15)
    sent_len: int
    words: list[str] = field(default_factory=list)


@dataclass
class MotionBatch:
    """A padded batch. ``mask[b, t]`` is True for the ``lengths[b]`` real frames of item b."""

    features: torch.Tensor     # float32 (B, T_max, D), zeros past each length
    mask: torch.Tensor         # bool (B, T_max)
    lengths: torch.Tensor      # int64 (B,)
    captions: list[str]
    token_ids: torch.Tensor    # int64 (B, L)
    pos_one_hot: torch.Tensor  # float32 (B, L, 15)
    sent_lens: torch.Tensor    # int64 (B,)
    motion_ids: list[str]
    # Valid frames a frame-averaged loss divides by (None: this batch's own). Sharded training sets it to the
    # global batch's count / number of ranks, so the ranks' mean gradient is that of the combined batch.
    norm_frames: float | None = None

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "MotionBatch":
        """On ``device``; with ``dtype``, the floating-point tensors (features, POS one-hots) cast to it."""
        def move(v):
            if not isinstance(v, torch.Tensor):
                return v
            if dtype is not None and v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device)
        return MotionBatch(**{k: move(v) for k, v in self.__dict__.items()})

    def rows(self, lo: int, hi: int) -> "MotionBatch":
        """Items ``lo..hi-1`` (padding kept at this batch's length)."""
        return MotionBatch(**{k: (v[lo:hi] if isinstance(v, (torch.Tensor, list)) else v)
                              for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.motion_ids)


def collate_motions(batch: Sequence[MotionItem], pad_to: int | None = None) -> MotionBatch:
    """Stack items, zero-padding features to the longest length (or ``pad_to``) with a boolean frame mask."""
    if not batch:
        raise ValueError("collate_motions: empty batch")
    lengths = torch.tensor([it.length for it in batch], dtype=torch.long)
    t_max = int(lengths.max()) if pad_to is None else int(pad_to)
    if t_max < int(lengths.max()):
        raise ValueError(f"collate_motions: pad_to={pad_to} is shorter than the longest item ({int(lengths.max())})")
    dim = batch[0].features.shape[-1]
    features = torch.zeros(len(batch), t_max, dim, dtype=batch[0].features.dtype)
    for b, it in enumerate(batch):
        features[b, : it.length] = it.features[: it.length]
    mask = torch.arange(t_max)[None, :] < lengths[:, None]
    return MotionBatch(
        features=features, mask=mask, lengths=lengths,
        captions=[it.caption for it in batch],
        token_ids=torch.stack([it.token_ids for it in batch]),
        pos_one_hot=torch.stack([it.pos_one_hot for it in batch]),
        sent_lens=torch.tensor([it.sent_len for it in batch], dtype=torch.long),
        motion_ids=[it.motion_id for it in batch],
    )


def build_vocabulary(root: str | os.PathLike, split: str = "train", min_count: int = 1) -> Vocabulary:
    """The vocabulary of the captions of ``ROOT/<split>.txt`` (ids without a caption file are skipped)."""
    captions = []
    for motion_id in read_split(root, split):
        path = text_path(root, motion_id)
        if path.is_file():
            captions.extend(parse_caption_file(path))
    return Vocabulary.build(captions, min_count=min_count)


class HumanMLDataset(Dataset):
    """A split of a HumanML3D/KIT-format directory as a torch Dataset of :class:`MotionItem`.

    All features are read once and kept normalised in one contiguous array. ``mode="train"`` picks a random
    caption and crop offset per access (from torch's global generator, so DataLoader workers and
    ``torch.manual_seed`` behave as usual); ``mode="eval"`` crops at the start and picks a caption by
    ``seed`` and the item index only (the same item gives the same sample on every access).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", mode: str = "train",
                 skeleton: str | None = None, max_text_len: int = 20, unit_length: int = 4,
                 vocab: Vocabulary | None = None, seed: int = 0, normalise: bool = True):
        if mode not in ("train", "eval"):
            raise UserError(f"mode: must be 'train' or 'eval' (got '{mode}')")
        if split not in SPLITS:
            raise UserError(f"split: must be one of {', '.join(SPLITS)} (got '{split}')")
        if unit_length < 1:
            raise UserError(f"unit_length: must be >= 1 (got {unit_length})")
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: dataset directory not found")
        self.split, self.mode, self.seed = split, mode, seed
        self.max_text_len, self.unit_length = max_text_len, unit_length

        mean, std = load_mean_std(self.root)
        self.skeleton = skeleton if skeleton is not None else infer_skeleton(mean.shape[0])
        self.spec = skeleton_spec(self.skeleton)
        if mean.shape[0] != self.spec.dim:
            raise UserError(f"{self.root / 'Mean.npy'}: width {mean.shape[0]}, expected {self.spec.dim} "
                            f"for skeleton {self.skeleton}")
        self.mean, self.std = mean, std
        self.normalised = normalise

        ids = read_split(self.root, split)
        chunks, clips, offset, dropped, all_captions = [], [], 0, [], []
        self._motion_offset: dict[str, int] = {}
        for motion_id in ids:
            if motion_id in self._motion_offset:
                continue
            path = features_path(self.root, motion_id)
            if not path.is_file():
                raise UserError(f"{path}: listed in {split}.txt but missing (run `easytune data check {self.root}`)")
            feats = read_features(path, dim=self.spec.dim)
            captions = parse_caption_file(text_path(self.root, motion_id))
            all_captions.extend(captions)
            motion_clips_ = motion_clips(motion_id, feats.shape[0], captions, self.spec)
            if not motion_clips_:
                dropped.append(motion_id)
                continue
            self._motion_offset[motion_id] = offset
            chunks.append(feats)
            clips.extend(motion_clips_)
            offset += feats.shape[0]
        if not clips:
            raise UserError(f"{self.root / (split + '.txt')}: no motion has a clip in "
                            f"[{self.spec.min_len}, {self.spec.max_len}) frames")
        frames = np.concatenate(chunks, axis=0)  # a fresh array: normalise in place, one copy in memory
        if normalise:
            frames -= mean
            frames /= std
        self.frames: np.ndarray = frames
        self.clips: list[Clip] = clips
        self.dropped_ids: list[str] = dropped
        # Without a given vocabulary: the words of every train caption (as build_vocabulary reads them).
        self.vocab = vocab if vocab is not None else (
            Vocabulary.build(all_captions) if split == "train" else build_vocabulary(self.root, "train"))

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def motion_ids(self) -> list[str]:
        return list(self._motion_offset)

    def crop_length(self, length: int) -> int:
        """Length cut down to a multiple of ``unit_length`` (T2M's 'single' coin)."""
        return (length // self.unit_length) * self.unit_length

    def clip_features(self, index: int) -> np.ndarray:
        """All frames of clip ``index`` (uncropped; normalised when the dataset is), a view of the stored array."""
        clip = self.clips[index]
        start = self._motion_offset[clip.motion_id] + clip.start
        return self.frames[start: start + clip.length]

    def __getitem__(self, index: int) -> MotionItem:
        if index < 0:
            index += len(self.clips)
        clip = self.clips[index]
        length = self.crop_length(clip.length)
        if self.mode == "train":
            cap_i = int(torch.randint(len(clip.captions), ()).item())
            shift = int(torch.randint(clip.length - length + 1, ()).item())
        else:
            rng = np.random.default_rng((self.seed, index))
            cap_i = int(rng.integers(len(clip.captions)))
            shift = 0
        caption = clip.captions[cap_i]
        start = self._motion_offset[clip.motion_id] + clip.start + shift
        features = torch.from_numpy(self.frames[start: start + length].copy())
        ids, pos, sent_len = self.vocab.encode(caption.tokens, self.max_text_len)
        return MotionItem(motion_id=clip.name, features=features, length=length, caption=caption.text,
                          token_ids=torch.from_numpy(ids), pos_one_hot=torch.from_numpy(pos), sent_len=sent_len,
                          words=caption.words)

    def denormalise(self, x):
        """Back to raw feature units with this dataset's Mean/Std."""
        return denormalise(x, self.mean, self.std)

