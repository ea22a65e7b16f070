"""A trained backbone run as a text-to-motion generator: ``load_generator(RUN).generate(texts, lengths, seed)``.

Lengths are in frames (HumanML3D: 20 fps, at most 196) and rounded down to a multiple of 4 (T2M's unit length).
Outputs are de-normalised HumanML3D features, ``x · Std + Mean`` with the training data's statistics, one
(length, D) float32 array per text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from ..runs import read_normalisation
from ..runtime import resolve_device
from .backbone import Backbone
from .trajectory import BackboneTrajectory, Hook
from .train import PretrainConfig, load_backbone


@dataclass
class MotionGenerator:
    """A loaded backbone with its defaults (sampler, steps, guidance) and normalisation statistics."""

    backbone: Backbone
    config: PretrainConfig
    mean: np.ndarray
    std: np.ndarray
    device: torch.device
    run_dir: Path

    @property
    def sampler(self) -> str:
        return self.config.model.diffusion.sampler

    @property
    def steps(self) -> int:
        return self.config.model.diffusion.sample_steps

    @property
    def guidance(self) -> float:
        return self.config.model.diffusion.guidance

    @property
    def max_frames(self) -> int:
        return self.config.model.max_frames

    def check_lengths(self, lengths: Sequence[int]) -> list[int]:
        out = []
        for n in lengths:
            n = int(n) // 4 * 4
            if not 4 <= n <= self.max_frames:
                raise UserError(f"--length: {n} frames is outside [4, {self.max_frames}] for this backbone")
            out.append(n)
        return out

    def sample_normalised(self, texts: Sequence[str], lengths: Sequence[int], seed: int = 0, *,
                          sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                          hook: Hook | None = None) -> torch.Tensor:
        """Normalised features (B, T_max, D), padded past each length."""
        if len(texts) != len(lengths):
            raise UserError(f"generate: {len(texts)} texts but {len(lengths)} lengths")
        lengths = self.check_lengths(lengths)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            trajectory = BackboneTrajectory(self.backbone, texts, lengths, sampler or self.sampler, steps or self.steps,
                                            self.guidance if guidance is None else guidance)
            x, _ = trajectory.run(generator, hook=hook)
            return self.backbone.decode(x, trajectory.cond)

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        return (x * self.std + self.mean).astype(np.float32)

    def generate(self, texts: Sequence[str], lengths: Sequence[int], seed: int = 0, batch_size: int = 64,
                 by_length: bool = True, **options) -> list[np.ndarray]:
        """De-normalised features, one (length, D) array per text, in the order given.

        Texts are sampled in batches of ``batch_size`` with seed ``seed + first position`` per batch. With
        ``by_length`` the batches are formed from the texts sorted by length (longest first), so that a batch pads
        to nearly its own lengths: on the T2M test split this halves the frames the denoiser runs over.
        """
        lengths = self.check_lengths(lengths)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i]) if by_length else list(range(len(texts)))
        out: list[np.ndarray | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            chunk_t, chunk_l = [texts[i] for i in idx], [lengths[i] for i in idx]
            x = self.sample_normalised(chunk_t, chunk_l, seed + start, **options).float().cpu().numpy()
            for b, (i, n) in enumerate(zip(idx, chunk_l)):
                out[i] = self.denormalise(x[b, :n])
        return out


def load_generator(run_dir: str | Path, device: str | torch.device = "auto") -> MotionGenerator:
    """Load ``RUN`` (a finished ``easytune pretrain`` run) on ``device`` (auto/cpu/cuda)."""
    run_dir = Path(run_dir)
    dev = resolve_device(device) if isinstance(device, str) else device
    backbone, config, manifest = load_backbone(run_dir, dev)
    width = manifest.get("feature_dim")
    mean, std = read_normalisation(run_dir, int(width) if isinstance(width, int) else None)
    return MotionGenerator(backbone, config, mean, std, dev, run_dir)
