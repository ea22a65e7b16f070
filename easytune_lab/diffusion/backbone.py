"""What every text-to-motion diffusion backbone shares: the condition, timestep embeddings, the diffusion config
and the :class:`Backbone` interface used by pretraining, sampling and fine-tuning.

A backbone owns a text conditioner, a denoising network ``net(x_t, t, cond, drop_text) -> x0 | ε`` (the
:class:`~easytune_lab.diffusion.sampling.Predictor` contract) and, for latent models, a decoder from the sampled
space back to normalised HumanML3D features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import nn

from ..distributed import as_random
from .embedding import sinusoidal_embedding
from .sampling import Predictor
from .schedule import NoiseSchedule


@dataclass
class DiffusionConfig:
    """Training schedule and default sampler of a backbone."""

    beta_schedule: str = "cosine"
    num_train_steps: int = 1000
    sampler: str = "ddpm"
    sample_steps: int = 1000
    guidance: float = 2.5          # classifier-free guidance scale s at sampling
    cond_drop: float = 0.1         # probability of training without text (enables guidance)


@dataclass
class Condition:
    """What the networks are conditioned on: sentence embeddings (B, d_text) and the frame mask (B, T)."""

    text: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)

    def drop_text(self, keep: torch.Tensor) -> "Condition":
        """Zero the text embedding of the items where ``keep`` is False (MDM's condition masking)."""
        return replace(self, text=self.text * keep.to(self.text.dtype).unsqueeze(-1))


def frame_mask(lengths: Sequence[int] | torch.Tensor, max_len: int | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=device)
    t_max = int(lengths.max()) if max_len is None else max_len
    return torch.arange(t_max, device=device)[None, :] < lengths[:, None]


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of integer timesteps (DDPM's transformer position embedding of t), (B, dim):
    :func:`~easytune_lab.diffusion.embedding.sinusoidal_embedding`, cosines first."""
    return sinusoidal_embedding(t, dim, "cos_sin", max_period)


class TimestepEmbedding(nn.Module):
    """t -> sinusoidal features -> Linear-SiLU-Linear (MDM's TimestepEmbedder)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t, self.dim).to(self.mlp[0].weight.dtype))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
               frames: float | None = None) -> torch.Tensor:
    """Mean squared error over the valid frames (mask (B, T)) and all feature channels.

    ``frames`` replaces the mask's own count of valid frames as the normaliser (sharded training passes the
    global batch's count divided by the number of ranks; see ``MotionBatch.norm_frames``).
    """
    se = (pred - target).pow(2)
    if mask is None:
        return se.mean()
    m = mask.to(se.dtype).unsqueeze(-1)
    count = m.sum() if frames is None else torch.as_tensor(float(frames), dtype=se.dtype, device=se.device)
    return (se * m).sum() / (count * se.shape[-1]).clamp(min=1.0)


class Backbone(nn.Module):
    """Interface of MDM-, MLD- and LCM-style backbones.

    ``stages`` name the pretraining phases (one optimiser each, in order); ``loss(stage, batch, generator)``
    returns that phase's scalar loss for a :class:`~easytune_lab.data.humanml.MotionBatch`.
    """

    kind: str = "base"
    stages: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.schedule: NoiseSchedule | None = None

    # sampling ---------------------------------------------------------------------------------------------
    @property
    def net(self) -> nn.Module:
        raise NotImplementedError

    def predictor(self) -> Predictor:
        return Predictor(self.net, self.schedule)

    def condition(self, texts: Sequence[str], lengths: Sequence[int] | torch.Tensor,
                  max_len: int | None = None) -> Condition:
        device = next(self.parameters()).device
        mask = frame_mask(lengths, max_len, device)
        return Condition(text=self.text(list(texts)), mask=mask)

    def sample_shape(self, cond: Condition) -> tuple[int, ...]:
        raise NotImplementedError

    def decode(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Sampled tensor -> normalised features (B, T, D); identity for motion-space models."""
        return x

    # training ---------------------------------------------------------------------------------------------
    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        raise NotImplementedError

    def loss(self, stage: str, batch, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, stage: str) -> None:
        """Hook run after every optimiser step (e.g. the EMA target of consistency distillation)."""

    def prepare_stage(self, stage: str, batches) -> None:
        """Hook run once when a stage starts (e.g. measuring the latent scale); ``batches`` yields batches."""


def training_noise(x0: torch.Tensor, schedule: NoiseSchedule, generator
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """t ~ U{0..N-1}, ε ~ N(0, I), x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPM Alg. 1), drawn from ``generator``.

    ``generator`` is a ``torch.Generator`` or a :class:`~easytune_lab.distributed.ShardedRandom` (this rank's rows
    of the draws for a global batch); the same holds for every ``generator`` of a backbone's ``loss``.
    """
    rand = as_random(generator)
    t = rand.randint(0, schedule.num_train_steps, (x0.shape[0],)).to(x0.device)
    eps = rand.randn(x0.shape, dtype=x0.dtype).to(x0.device)
    return t, eps, schedule.add_noise(x0, eps, t)


def keep_mask(batch_size: int, drop: float, generator, device) -> torch.Tensor:
    """True for the items that keep their text (classifier-free guidance training, Ho & Salimans 2022)."""
    u = as_random(generator).rand((batch_size,)).to(device)
    return u >= drop
