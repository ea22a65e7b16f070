"""Similarity between noisy motions and their clean motion across noise levels (paper Fig. 4).

For clean motions x_0 and noise levels t, the forward process gives x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM Eq. 4).
The paper's observation is that x_t (and even more the predicted x̂0) stays closer to its own clean motion than
unrelated clean motions are to each other up to fairly large t, which is what makes a per-step (noise-aware or
x̂0) reward meaningful. This module computes the cosine similarity of ``embed(x_t)`` (or ``embed(x̂0)``) with
``embed(x_0)`` for each t, against the similarity of ``embed(x_0)`` with the embedding of a different motion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..diffusion.schedule import NoiseSchedule


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (B, ...) tensors."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return torch.nn.functional.cosine_similarity(a, b, dim=1)


@dataclass
class SimilarityCurve:
    timesteps: list[int]
    noisy: list[float]             # mean cos(embed(x_t), embed(x_0))
    noisy_std: list[float]
    predicted: list[float] | None  # mean cos(embed(x̂0(x_t)), embed(x_0)) when a predictor is given
    unrelated: float               # mean cos(embed(x_0), embed(x_0 of another motion))
    unrelated_std: float

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@torch.no_grad()
def similarity_curve(x0: torch.Tensor, timesteps: Sequence[int], schedule: NoiseSchedule,
                     embed: Callable[[torch.Tensor, int], torch.Tensor],
                     predict_x0: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                     generator: torch.Generator | None = None) -> SimilarityCurve:
    """Similarity of noisy (and denoised) motions to their clean motion, per t, vs unrelated pairs.

    Timesteps follow :class:`~easytune_lab.diffusion.schedule.NoiseSchedule` (0..N-1; -1 is the clean motion).
    ``embed(x, t)`` maps a batch to vectors (a reward/evaluator encoder, or the identity on joints for joint
    space); ``t`` lets a noise-aware encoder know the level. ``predict_x0(x_t, t)`` is the denoiser's x̂0.
    The unrelated baseline pairs motion b with motion (b + 1) mod B.
    """
    clean = embed(x0, 0)
    noisy, noisy_std, predicted = [], [], []
    for t in timesteps:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
        x_t = x0 if t < 0 else schedule.add_noise(x0, noise, tt)
        sims = cosine(embed(x_t, int(t)), clean)
        noisy.append(float(sims.mean()))
        noisy_std.append(float(sims.std()) if sims.numel() > 1 else 0.0)
        if predict_x0 is not None:
            predicted.append(float(cosine(embed(predict_x0(x_t, int(t)), 0), clean).mean()))
    unrelated = cosine(clean, clean.roll(1, dims=0))
    return SimilarityCurve(list(map(int, timesteps)), noisy, noisy_std, predicted if predict_x0 else None,
                           float(unrelated.mean()), float(unrelated.std()))


def crossing_step(curve: SimilarityCurve) -> int | None:
    """The first t at which x_t is no more similar to its clean motion than unrelated motions are."""
    for t, s in zip(curve.timesteps, curve.noisy):
        if s <= curve.unrelated:
            return t
    return None

