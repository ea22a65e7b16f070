"""MDM-style motion diffusion backbone (Tevet et al. 2023, "Human Motion Diffusion Model").

A transformer encoder over the frames of the noisy normalised HumanML3D features predicts the clean motion x0
directly (MDM Sec. 3). The first token is the timestep embedding plus the projected text embedding; padded frames
are masked out of attention and out of the loss. Training: L_simple = E‖x0 - G(x_t, t, c)‖² over valid frames
with the text dropped for 10 % of the items (classifier-free guidance); sampling: DDPM with guidance 2.5.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import TransformerEncoder
from ..data.text import Vocabulary
from .registry import BackboneSpec, PretrainConfig
from .backbone import (Backbone, Condition, DiffusionConfig, TimestepEmbedding, keep_mask, masked_mse,
                       training_noise)
from .schedule import NoiseSchedule
from .embedding import sinusoidal_table
from .text_encoder import TextConditioner, TextEncoderConfig


@dataclass
class MDMConfig:
    """Sizes of the MDM-style backbone (the paper's: 8 layers × 512, 4 heads, ff 1024, dropout 0.1)."""

    feature_dim: int = 263
    max_frames: int = 196
    d_model: int = 512
    layers: int = 8
    heads: int = 4
    ff: int = 1024
    dropout: float = 0.1
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)


class MotionTransformer(nn.Module):
    """``net(x_t (B,T,D), t (B,), cond, drop_text) -> x̂0 (B,T,D)``."""

    prediction = "x0"

    def __init__(self, config: MDMConfig, text_dim: int):
        super().__init__()
        self.config = config
        d = config.d_model
        self.inp = nn.Linear(config.feature_dim, d)
        self.time = TimestepEmbedding(d)
        self.text_proj = nn.Linear(text_dim, d)
        self.register_buffer("pos", sinusoidal_table(config.max_frames + 1, d), persistent=False)
        layer = nn.TransformerEncoderLayer(d, config.heads, config.ff, config.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, config.feature_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, drop_text: bool = False) -> torch.Tensor:
        text = torch.zeros_like(cond.text) if drop_text else cond.text
        token = (self.time(t) + self.text_proj(text)).unsqueeze(1)           # (B, 1, d)
        h = torch.cat([token, self.inp(x_t)], dim=1) + self.pos[: x_t.shape[1] + 1].to(self.inp.weight.dtype)
        valid = torch.cat([torch.ones_like(cond.mask[:, :1]), cond.mask], dim=1)
        h = self.norm(self.encoder(h, src_key_padding_mask=~valid))
        return self.out(h[:, 1:])


class MDMBackbone(Backbone):
    """Text conditioner + :class:`MotionTransformer`, sampling in motion space."""

    kind = "mdm"
    stages = ("denoiser",)

    def __init__(self, config: MDMConfig, vocab: Vocabulary):
        super().__init__()
        self.config = config
        self.schedule = NoiseSchedule.create(config.diffusion.beta_schedule, config.diffusion.num_train_steps)
        self.text = TextConditioner(config.text, vocab)
        self.denoiser = MotionTransformer(config, self.text.dim)

    @property
    def net(self) -> nn.Module:
        return self.denoiser

    def sample_shape(self, cond: Condition) -> tuple[int, ...]:
        return (cond.mask.shape[0], cond.mask.shape[1], self.config.feature_dim)

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        return list(self.parameters())

    def loss(self, stage: str, batch, generator: torch.Generator) -> torch.Tensor:
        x0 = batch.features
        cond = Condition(text=self.text(batch.captions), mask=batch.mask)
        cond = cond.drop_text(keep_mask(x0.shape[0], self.config.diffusion.cond_drop, generator, x0.device))
        t, _, x_t = training_noise(x0, self.schedule, generator)
        return masked_mse(self.denoiser(x_t, t, cond), x0, batch.mask, getattr(batch, "norm_frames", None))


#: MDM's profiles. ``paper``: 8 layers × 512, 4 heads, ff 1024, batch 64, cosine schedule, DDPM 1000 steps,
#: guidance 2.5, lr 1e-4 (MDM's HumanML3D setting); ``quick``: 4 × 128 for a 2-core CPU; ``smoke``: 2 × 64, seconds.
PROFILES = {
    "smoke": PretrainConfig("mdm", "smoke",
                            MDMConfig(d_model=64, layers=2, heads=4, ff=128, dropout=0.1,
                                      text=TextEncoderConfig(dim=64, layers=1, heads=4, ff=128),
                                      diffusion=DiffusionConfig(sample_steps=20)),
                            steps=30, batch_size=8, lr=5e-4, warmup=5, checkpoint_every=10, log_every=5),
    "quick": PretrainConfig("mdm", "quick",
                            MDMConfig(d_model=128, layers=4, heads=4, ff=256, dropout=0.1,
                                      text=TextEncoderConfig(dim=128, layers=2, heads=4, ff=256),
                                      diffusion=DiffusionConfig(sample_steps=100)),
                            steps=800, batch_size=32, lr=4e-4, warmup=80, checkpoint_every=100, log_every=25),
    "paper": PretrainConfig("mdm", "paper",
                            MDMConfig(d_model=512, layers=8, heads=4, ff=1024, dropout=0.1,
                                      text=TextEncoderConfig(dim=256, layers=4, heads=4, ff=1024),
                                      diffusion=DiffusionConfig(sample_steps=1000)),
                            steps=200_000, batch_size=64, lr=1e-4, warmup=1000, checkpoint_every=5000,
                            log_every=100),
}

SPEC = BackboneSpec("mdm", MDMConfig, MDMBackbone, PROFILES,
                    description="motion-space x0 transformer (MDM)")


def mdm_profile(profile: str, feature_dim: int = 263) -> PretrainConfig:
    """PretrainConfig of the MDM-style backbone for ``profile`` (a fresh copy of its :data:`PROFILES` row)."""
    return SPEC.profile(profile, feature_dim)
