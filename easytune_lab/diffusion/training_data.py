"""The training data of a backbone: a HumanML3D-format directory's train split, its vocabulary and statistics.

Shared by ``easytune pretrain`` and the notebook workbench (:mod:`easytune_lab.pipeline`), so both train on the
same items in the same order for a given seed.
"""

from __future__ import annotations

from pathlib import Path

from ..data.humanml import HumanMLDataset, collate_motions
from ..errors import UserError
from .text_encoder import build_text_vocabulary
from .train import PretrainData


def load_training_data(root: Path, seed: int) -> PretrainData:
    """The train split of ``root`` as :class:`~easytune_lab.diffusion.train.PretrainData` (items shuffled and
    cropped by ``seed``, the vocabulary of its captions, the directory's Mean/Std)."""
    if not root.is_dir():
        raise UserError(f"--data {root}: dataset directory not found")
    ds = HumanMLDataset(root, split="train", mode="train", seed=seed)
    vocab = build_text_vocabulary(c.text for clip in ds.clips for c in clip.captions)
    return PretrainData(ds, collate_motions, vocab, ds.mean, ds.std, source=str(root))
