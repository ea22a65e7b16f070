"""Shared test utilities: small HumanML3D-format directories, built once per test session.

``small_dataset(tmp_path_factory)`` returns a directory made by ``easytune data synth`` (40 motions) when the
procedural generator is installed, else one written by :func:`write_random_dataset`. Tests that modify a
dataset must work on ``copy_dataset(...)``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np

from easytune_lab.io import write_npy, write_text

# A few tagged captions in HumanML3D's style (lemmatised words, spaCy universal POS tags).
CAPTION_TEMPLATES = [
    ("a person walks forward slowly.", "a/DET person/NOUN walk/VERB forward/ADV slowly/ADV"),
    ("someone jumps up and down.", "someone/PRON jump/VERB up/ADP and/CCONJ down/ADV"),
    ("a man waves his right hand.", "a/DET man/NOUN wave/VERB his/DET right/ADJ hand/NOUN"),
    ("the figure turns around twice.", "the/DET figure/NOUN turn/VERB around/ADV twice/ADV"),
    ("a person kicks with the left leg.", "a/DET person/NOUN kick/VERB with/ADP the/DET left/ADJ leg/NOUN"),
    ("a person sits down on a chair.", "a/DET person/NOUN sit/VERB down/ADP on/ADP a/DET chair/NOUN"),
]

_CACHE: dict[tuple, Path] = {}


def synth_available() -> bool:
    return importlib.util.find_spec("easytune_lab.motion.synth") is not None


def write_random_dataset(root: Path, num_motions: int = 24, seed: int = 0, dim: int = 263,
                         min_len: int = 40, max_len: int = 200, captions_per_motion: int = 3,
                         subclip_every: int = 5) -> Path:
    """A valid dataset of random finite features (width ``dim``) and tagged captions; ids ``000000``...

    Every ``subclip_every``-th motion gets one extra caption on a sub-clip (tags in seconds at 20 fps).
    Splits: the first 60% train, then 20% val, 20% test. Mean/Std are the statistics of all frames.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    ids = [f"{i:06d}" for i in range(num_motions)]
    frames = []
    for k, motion_id in enumerate(ids):
        length = int(rng.integers(min_len, max_len))
        feats = (rng.normal(size=(length, dim)) * 0.5 + np.linspace(-1, 1, dim)).astype(np.float32)
        frames.append(feats)
        write_npy(root / "new_joint_vecs" / f"{motion_id}.npy", feats)
        picks = rng.choice(len(CAPTION_TEMPLATES), size=captions_per_motion, replace=False)
        lines = [f"{CAPTION_TEMPLATES[p][0]}#{CAPTION_TEMPLATES[p][1]}#0.0#0.0" for p in picks]
        if subclip_every and k % subclip_every == 0 and length >= 2 * min_len:
            end = length / 20.0
            lines.append(f"{CAPTION_TEMPLATES[0][0]}#{CAPTION_TEMPLATES[0][1]}#0.0#{end / 2 + 1:.2f}")
        write_text(root / "texts" / f"{motion_id}.txt", "\n".join(lines) + "\n")
    all_frames = np.concatenate(frames)
    write_npy(root / "Mean.npy", all_frames.mean(0).astype(np.float32))
    write_npy(root / "Std.npy", all_frames.std(0).astype(np.float32))
    n_train, n_val = int(0.6 * num_motions), int(0.2 * num_motions)
    parts = {"train": ids[:n_train], "val": ids[n_train:n_train + n_val], "test": ids[n_train + n_val:]}
    for split, split_ids in parts.items():
        write_text(root / f"{split}.txt", "\n".join(split_ids) + "\n")
    return root


def small_dataset(tmp_path_factory, num_motions: int = 40, seed: int = 0) -> Path:
    """A valid dataset dir shared by the session: procedural (``easytune data synth``) when available."""
    key = ("synth" if synth_available() else "random", num_motions, seed)
    if key not in _CACHE:
        root = tmp_path_factory.mktemp(f"dataset-{key[0]}-{num_motions}") / "data"
        if synth_available():
            from easytune_lab.cli import main

            code = main(["data", "synth", "--out", str(root), "--num-motions", str(num_motions),
                         "--seed", str(seed), "--workers", "1", "--no-progress"])
            assert code == 0, "easytune data synth failed"
        else:
            write_random_dataset(root, num_motions=num_motions, seed=seed)
        _CACHE[key] = root
    return _CACHE[key]


def copy_dataset(src: Path, dst: Path) -> Path:
    """A writable copy of a dataset directory."""
    shutil.copytree(src, dst)
    return dst


def wrap_fixture(fixture_dir: Path, dst: Path, captions: list[str] | None = None,
                 splits: tuple[str, ...] = ("train",)) -> Path:
    """The real one-motion fixture (id 012314) inside a dataset dir: split file(s) and a caption file added."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("new_joint_vecs", "new_joints"):
        (dst / name).mkdir()
        shutil.copy(fixture_dir / name / "012314.npy", dst / name / "012314.npy")
    for name in ("Mean.npy", "Std.npy"):
        shutil.copy(fixture_dir / name, dst / name)
    captions = captions or [f"{CAPTION_TEMPLATES[0][0]}#{CAPTION_TEMPLATES[0][1]}#0.0#0.0"]
    write_text(dst / "texts" / "012314.txt", "\n".join(captions) + "\n")
    for split in splits:
        write_text(dst / f"{split}.txt", "012314\n")
    for path in dst.rglob("*"):  # the shared fixture is read-only; copies must be writable
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dst


def finetune_inputs(tmp_path_factory, evaluator: bool = False) -> dict[str, Path]:
    """What a fine-tuning run needs, built once per test session: ``data`` (240 procedural motions), ``base`` (a
    smoke MDM run), ``reward`` (a smoke reward run) and, with ``evaluator``, ``evaluator`` (a one-epoch smoke
    evaluator: its numbers mean nothing, it exercises the protocol)."""
    import torch

    from easytune_lab.cli import main

    threads = torch.get_num_threads()  # training commands set their own thread count; the tests keep theirs
    key = ("finetune-inputs",)
    if key not in _CACHE:
        root = tmp_path_factory.mktemp("finetune-inputs")
        data, base, reward = root / "data", root / "mdm", root / "reward"
        for argv in (["data", "synth", "--out", str(data), "--num-motions", "240", "--seed", "3", "--workers", "1",
                      "--no-progress"],
                     ["pretrain", "--backbone", "mdm", "--data", str(data), "--profile", "smoke", "--out", str(base)],
                     ["reward", "train", "--data", str(data), "--profile", "smoke", "--out", str(reward)]):
            assert main(argv) == 0, argv
        _CACHE[key] = root
    root = _CACHE[key]
    runs = {"root": root, "data": root / "data", "base": root / "mdm", "reward": root / "reward"}
    if evaluator:
        runs["evaluator"] = root / "evaluator"
        if not (runs["evaluator"] / "manifest.json").is_file():
            assert main(["evaluator", "train", "--data", str(runs["data"]), "--profile", "smoke", "--epochs", "1",
                         "--out", str(runs["evaluator"]), "--device", "cpu", "--no-progress"]) == 0
    torch.set_num_threads(threads)
    return runs


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``easytune ARGV`` in-process: its exit code (returned, or raised by argparse as SystemExit) and stderr."""
    from easytune_lab.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err
