"""easytune_lab.data: HumanML3D/KIT-format directories (loader, captions, vocabulary, checks)."""

from .check import DatasetReport, check_dataset
from .humanml import (SKELETONS, HumanMLDataset, MotionBatch, MotionItem, collate_motions, denormalise,
                      infer_skeleton, load_mean_std, normalise, read_motion)
from .text import POS_CATEGORIES, Caption, Vocabulary, parse_caption_file, parse_caption_line

__all__ = [
    "SKELETONS", "POS_CATEGORIES", "Caption", "DatasetReport", "HumanMLDataset", "MotionBatch", "MotionItem",
    "Vocabulary", "check_dataset", "collate_motions", "denormalise", "infer_skeleton", "load_mean_std",
    "normalise", "parse_caption_file", "parse_caption_line", "read_motion",
]
