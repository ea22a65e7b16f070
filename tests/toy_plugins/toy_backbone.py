"""A toy backbone declared in one module outside the library: a per-frame MLP x0-denoiser conditioned on the
timestep and the library's text conditioner. Registering ``SPEC`` is all it takes to pretrain, fine-tune, sample
and evaluate it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from easytune_lab.diffusion.backbone import (Backbone, Condition, DiffusionConfig, TimestepEmbedding, keep_mask,
                                             masked_mse, training_noise)
from easytune_lab.diffusion.registry import BackboneSpec, PretrainConfig
from easytune_lab.diffusion.schedule import NoiseSchedule
from easytune_lab.diffusion.text_encoder import TextConditioner, TextEncoderConfig


@dataclass
class ToyConfig:
    feature_dim: int = 263
    max_frames: int = 196
    hidden: int = 32
    text: TextEncoderConfig = field(default_factory=lambda: TextEncoderConfig(dim=16, layers=1, heads=2, ff=32))
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(sampler="ddim", sample_steps=5))


class ToyNet(nn.Module):
    """``net(x_t (B,T,D), t (B,), cond, drop_text) -> x̂0 (B,T,D)``, frame by frame."""

    prediction = "x0"

    def __init__(self, config: ToyConfig, text_dim: int):
        super().__init__()
        self.inp = nn.Linear(config.feature_dim, config.hidden)
        self.time = TimestepEmbedding(config.hidden)
        self.text_proj = nn.Linear(text_dim, config.hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(config.hidden, config.feature_dim))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Condition, drop_text: bool = False) -> torch.Tensor:
        text = torch.zeros_like(cond.text) if drop_text else cond.text
        return self.out(self.inp(x_t) + (self.time(t) + self.text_proj(text)).unsqueeze(1))


class ToyBackbone(Backbone):
    kind = "toy"
    stages = ("denoiser",)

    def __init__(self, config: ToyConfig, vocab):
        super().__init__()
        self.config = config
        self.schedule = NoiseSchedule.create(config.diffusion.beta_schedule, config.diffusion.num_train_steps)
        self.text = TextConditioner(config.text, vocab)
        self.denoiser = ToyNet(config, self.text.dim)

    @property
    def net(self) -> nn.Module:
        return self.denoiser

    def sample_shape(self, cond: Condition) -> tuple[int, ...]:
        return (cond.mask.shape[0], cond.mask.shape[1], self.config.feature_dim)

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        return list(self.parameters())

    def loss(self, stage: str, batch, generator) -> torch.Tensor:
        x0 = batch.features
        cond = Condition(text=self.text(batch.captions), mask=batch.mask)
        cond = cond.drop_text(keep_mask(x0.shape[0], self.config.diffusion.cond_drop, generator, x0.device))
        t, _, x_t = training_noise(x0, self.schedule, generator)
        return masked_mse(self.denoiser(x_t, t, cond), x0, batch.mask, getattr(batch, "norm_frames", None))


SPEC = BackboneSpec("toy", ToyConfig, ToyBackbone,
                    {"smoke": PretrainConfig("toy", "smoke", ToyConfig(), steps=6, batch_size=4, lr=1e-3, warmup=2,
                                             checkpoint_every=3, log_every=3)},
                    description="per-frame MLP x0-denoiser (a test plugin)")
