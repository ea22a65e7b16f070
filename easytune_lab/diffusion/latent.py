"""MLD-style latent diffusion backbone (Chen et al. 2023, "Executing your Commands via Motion Diffusion in
Latent Space").

Stage 1, a motion VAE: a transformer encoder reads the frames together with 2·L learned distribution tokens
whose outputs are μ and log σ² of L latent tokens (MLD's latent 1 × 256); z = μ + σ ε; a transformer decoder reads
[z tokens; one positional query per frame] and writes the frames. Loss: masked reconstruction MSE +
λ_KL · KL(N(μ, σ²) ‖ N(0, I)) with λ_KL = 1e-4 (MLD's setting).

Two options, off in MLD's configuration, make the VAE learn within a CPU budget (the ``quick`` profile):
``patch`` > 1 groups that many consecutive frames into one token (a strided linear embedding, as ViT's patches,
Dosovitskiy et al. 2021; temporal down-sampling as in TEMOS/T2M-GPT's motion encoders) and the decoder writes
``patch`` frames per query, so both transformers see T/patch tokens; ``z_queries`` also adds a projection of z to
every frame query (ACTOR's decoder reads z at every position through cross-attention, Petrovich et al. 2021), so
that the reconstruction depends on z from the first step instead of only through attention to the z tokens, which
the queries learn to use only slowly (the decoder first fits the mean motion and ignores z).

Stage 2, a latent denoiser: a transformer over [timestep token; text token; z_t tokens] predicting ε
(L_simple of DDPM eq. 14) on the VAE latents scaled to unit variance (the scale is measured once when stage 2
starts, as latent diffusion does), with the VAE frozen. Sampling: DDIM, 50 steps, guidance 7.5, then decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import TransformerEncoder
from ..data.text import Vocabulary
from ..distributed import as_random
from .registry import BackboneSpec, PretrainConfig
from .backbone import (Backbone, Condition, DiffusionConfig, TimestepEmbedding, keep_mask, masked_mse,
                       training_noise)
from .schedule import NoiseSchedule
from .embedding import sinusoidal_table
from .text_encoder import TextConditioner, TextEncoderConfig


def _encoder(d: int, heads: int, ff: int, dropout: float, layers: int) -> TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, activation="gelu", batch_first=True, norm_first=True)
    return TransformerEncoder(layer, layers, enable_nested_tensor=False)


@dataclass
class VAEConfig:
    """Motion VAE sizes (MLD: latent 1 × 256, 9 layers, 4 heads, ff 1024)."""

    latent_tokens: int = 1
    latent_dim: int = 256
    d_model: int = 256
    layers: int = 9
    heads: int = 4
    ff: int = 1024
    dropout: float = 0.1
    kl_weight: float = 1e-4
    patch: int = 1                 # frames per encoder token / decoder query (1: MLD)
    z_queries: bool = False        # add a projection of z to every decoder query (False: MLD)


@dataclass
class MLDConfig:
    """MLD-style backbone: VAE + latent denoiser (MLD: 9 layers × 256) + text conditioner."""

    feature_dim: int = 263
    max_frames: int = 196
    vae: VAEConfig = field(default_factory=VAEConfig)
    d_model: int = 256
    layers: int = 9
    heads: int = 4
    ff: int = 1024
    dropout: float = 0.1
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        beta_schedule="scaled_linear", sampler="ddim", sample_steps=50, guidance=7.5))


class MotionVAE(nn.Module):
    """Frames (B, T, D) + mask <-> latent tokens (B, L, latent_dim)."""

    def __init__(self, config: VAEConfig, feature_dim: int, max_frames: int):
        super().__init__()
        self.config = config
        d, L, p = config.d_model, config.latent_tokens, max(int(config.patch), 1)
        self.patch = p
        self.inp = nn.Linear(feature_dim * p, d)
        self.dist_tokens = nn.Parameter(torch.randn(2 * L, d) * 0.02)
        self.register_buffer("pos", sinusoidal_table(max_frames + 2 * L, d), persistent=False)
        self.enc = _encoder(d, config.heads, config.ff, config.dropout, config.layers)
        self.enc_norm = nn.LayerNorm(d)
        self.to_mu = nn.Linear(d, config.latent_dim)
        self.to_logvar = nn.Linear(d, config.latent_dim)
        self.z_proj = nn.Linear(config.latent_dim, d)
        self.z_query = nn.Linear(L * config.latent_dim, d) if config.z_queries else None
        self.dec = _encoder(d, config.heads, config.ff, config.dropout, config.layers)
        self.dec_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, feature_dim * p)

    def _tokens(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, D) frames -> (B, ⌈T/p⌉, p·D) patches (padded frames zeroed) and the patch mask (any frame valid)."""
        B, T, D = x.shape
        n = -(-T // self.patch)
        pad = n * self.patch - T
        x = x * mask.unsqueeze(-1).to(x.dtype)
        if pad:
            x = torch.cat([x, x.new_zeros(B, pad, D)], dim=1)
            mask = torch.cat([mask, mask.new_zeros(B, pad)], dim=1)
        return x.reshape(B, n, self.patch * D), mask.reshape(B, n, self.patch).any(-1)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = x.shape[0], self.config.latent_tokens
        x, mask = self._tokens(x, mask)
        tokens = self.dist_tokens.unsqueeze(0).expand(B, -1, -1)
        h = torch.cat([tokens, self.inp(x)], dim=1) + self.pos[: x.shape[1] + 2 * L].to(self.inp.weight.dtype)
        valid = torch.cat([torch.ones(B, 2 * L, dtype=torch.bool, device=x.device), mask], dim=1)
        h = self.enc_norm(self.enc(h, src_key_padding_mask=~valid))
        return self.to_mu(h[:, :L]), self.to_logvar(h[:, L:2 * L]).clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, T = z.shape[0], z.shape[1], mask.shape[1]
        n = -(-T // self.patch)
        patch_mask = torch.cat([mask, mask.new_zeros(B, n * self.patch - T)], dim=1).reshape(B, n, -1).any(-1)
        queries = self.pos[2 * L: 2 * L + n].to(self.inp.weight.dtype).unsqueeze(0).expand(B, -1, -1)
        if self.z_query is not None:
            queries = queries + self.z_query(z.flatten(1)).unsqueeze(1)
        h = torch.cat([self.z_proj(z), queries], dim=1)
        valid = torch.cat([torch.ones(B, L, dtype=torch.bool, device=z.device), patch_mask], dim=1)
        h = self.dec_norm(self.dec(h, src_key_padding_mask=~valid))
        out = self.out(h[:, L:]).reshape(B, n * self.patch, -1)[:, :T]
        return out * mask.unsqueeze(-1).to(z.dtype)

    @staticmethod
    def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, generator) -> torch.Tensor:
        eps = as_random(generator).randn(mu.shape, dtype=mu.dtype).to(mu.device)
        return mu + (0.5 * logvar).exp() * eps

    def loss(self, x: torch.Tensor, mask: torch.Tensor, generator, frames: float | None = None) -> torch.Tensor:
        """Reconstruction MSE over valid frames (normalised by ``frames``, see :func:`masked_mse`) + weighted KL."""
        mu, logvar = self.encode(x, mask)
        recon = self.decode(self.reparameterise(mu, logvar, generator), mask)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return masked_mse(recon, x, mask, frames) + self.config.kl_weight * kl


class LatentDenoiser(nn.Module):
    """``net(z_t (B,L,latent), t, cond, drop_text) -> ε̂`` over [time token; text token; latent tokens]."""

    prediction = "eps"

    def __init__(self, config: MLDConfig, text_dim: int):
        super().__init__()
        d, L = config.d_model, config.vae.latent_tokens
        self.inp = nn.Linear(config.vae.latent_dim, d)
        self.time = TimestepEmbedding(d)
        self.text_proj = nn.Linear(text_dim, d)
        self.register_buffer("pos", sinusoidal_table(L + 2, d), persistent=False)
        self.encoder = _encoder(d, config.heads, config.ff, config.dropout, config.layers)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, config.vae.latent_dim)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: Condition, drop_text: bool = False) -> torch.Tensor:
        text = torch.zeros_like(cond.text) if drop_text else cond.text
        h = torch.cat([self.time(t).unsqueeze(1), self.text_proj(text).unsqueeze(1), self.inp(z_t)], dim=1)
        h = self.norm(self.encoder(h + self.pos[: h.shape[1]].to(self.inp.weight.dtype)))
        return self.out(h[:, 2:])


class MLDBackbone(Backbone):
    """VAE (stage ``vae``) + text conditioner and latent denoiser (stage ``denoiser``)."""

    kind = "mld"
    stages = ("vae", "denoiser")

    def __init__(self, config: MLDConfig, vocab: Vocabulary):
        super().__init__()
        self.config = config
        self.schedule = NoiseSchedule.create(config.diffusion.beta_schedule, config.diffusion.num_train_steps)
        self.vae = MotionVAE(config.vae, config.feature_dim, config.max_frames)
        self.text = TextConditioner(config.text, vocab)
        self.denoiser = LatentDenoiser(config, self.text.dim)
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def net(self) -> nn.Module:
        return self.denoiser

    def sample_shape(self, cond: Condition) -> tuple[int, ...]:
        return (cond.mask.shape[0], self.config.vae.latent_tokens, self.config.vae.latent_dim)

    def encode_latent(self, features: torch.Tensor, mask: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latents of normalised features: the mean, or a posterior sample when a generator is given."""
        mu, logvar = self.vae.encode(features, mask)
        z = mu if generator is None else self.vae.reparameterise(mu, logvar, generator)
        return z * self.latent_scale

    def decode(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.vae.decode(x / self.latent_scale, cond.mask)

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        if stage == "vae":
            return list(self.vae.parameters())
        return list(self.text.parameters()) + list(self.denoiser.parameters())

    @torch.no_grad()
    def prepare_stage(self, stage: str, batches) -> None:
        if stage != "denoiser":
            return
        self.vae.eval()
        mus = [self.vae.encode(b.features, b.mask)[0] for b in batches]
        std = torch.cat(mus).float().std()
        self.latent_scale.fill_(float(1.0 / std.clamp(min=1e-4)))

    def loss(self, stage: str, batch, generator: torch.Generator) -> torch.Tensor:
        if stage == "vae":
            return self.vae.loss(batch.features, batch.mask, generator, getattr(batch, "norm_frames", None))
        self.vae.eval()
        with torch.no_grad():
            z0 = self.encode_latent(batch.features, batch.mask, generator)
        cond = Condition(text=self.text(batch.captions), mask=batch.mask)
        cond = cond.drop_text(keep_mask(z0.shape[0], self.config.diffusion.cond_drop, generator, z0.device))
        t, eps, z_t = training_noise(z0, self.schedule, generator)
        return masked_mse(self.denoiser(z_t, t, cond), eps, None)


#: MLD's profiles (VAE first: half the steps, a fifth for quick). ``paper``: latent 1 × 256, VAE and denoiser
#: 9 layers × 256, batch 64, DDIM 50, guidance 7.5; ``quick`` (a 2-core CPU): latent 2 × 32, VAE 3 layers × 128 over
#: 4-frame patches with z added to every decoder query and no dropout, denoiser 4 layers × 128; 800 VAE steps then
#: 3200 cheap denoiser steps (its sequence is 4 tokens long), lr 1e-3; ``smoke``: tiny.
PROFILES = {
    "smoke": PretrainConfig("mld", "smoke",
                            MLDConfig(vae=VAEConfig(latent_tokens=1, latent_dim=16, d_model=64, layers=1, ff=128),
                                      d_model=64, layers=2, ff=128, text=TextEncoderConfig(dim=64, layers=1, ff=128),
                                      diffusion=DiffusionConfig(beta_schedule="scaled_linear", sampler="ddim",
                                                                sample_steps=10, guidance=7.5)),
                            steps=40, batch_size=8, lr=5e-4, warmup=5, checkpoint_every=10, log_every=5,
                            stage_fractions={"vae": 0.5}),
    "quick": PretrainConfig("mld", "quick",
                            MLDConfig(vae=VAEConfig(latent_tokens=2, latent_dim=32, d_model=128, layers=3, ff=256,
                                                    dropout=0.0, patch=4, z_queries=True),
                                      d_model=128, layers=4, ff=256, text=TextEncoderConfig(dim=128, layers=2, ff=256)),
                            steps=4000, batch_size=32, lr=1e-3, warmup=80, checkpoint_every=200, log_every=25,
                            stage_fractions={"vae": 0.2}),
    "paper": PretrainConfig("mld", "paper", MLDConfig(text=TextEncoderConfig(dim=256, layers=4, ff=1024)),
                            steps=300_000, batch_size=64, lr=1e-4, warmup=1000, checkpoint_every=5000, log_every=100,
                            stage_fractions={"vae": 0.5}),
}

SPEC = BackboneSpec("mld", MLDConfig, MLDBackbone, PROFILES, motion_space=False,
                    description="VAE + latent epsilon denoiser (MLD)")


def mld_profile(profile: str, feature_dim: int = 263) -> PretrainConfig:
    """PretrainConfig of the MLD-style backbone for ``profile`` (a fresh copy of its :data:`PROFILES` row)."""
    return SPEC.profile(profile, feature_dim)
