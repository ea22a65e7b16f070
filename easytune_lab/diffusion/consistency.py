"""MotionLCM-style latent consistency distillation of an MLD-style teacher (Dai et al. 2024, "MotionLCM";
Luo et al. 2023, "Latent Consistency Models").

The student is the teacher's latent denoiser (initialised from it) read through the consistency
parameterisation f_θ(z_t, t) = c_skip(t) z_t + c_out(t) ẑ0_θ(z_t, t) (LCM eq. 9), so f_θ(z, 0) = z. One training
step (LCM Alg. 2, latent consistency distillation):

1. z0 = scaled VAE latent of a training motion; t = t_{n+k} on the skipping-step grid (k = 20 of the teacher's
   1000 steps, i.e. its 50-step DDIM grid), z_t = √ᾱ_t z0 + √(1-ᾱ_t) ε;
2. the teacher with classifier-free guidance w (ε_w = ε_u + w(ε_c - ε_u)) takes one DDIM step t → s = t - k
   (DDIM eq. 12, the "ODE solver" Ψ);
3. loss d(f_θ(z_t, t), f_θ⁻(ẑ_s, s)) with the pseudo-Huber metric d(a, b) = √(‖a-b‖² + c²) - c, c = 0.001;
4. the target θ⁻ follows θ by an exponential moving average, θ⁻ ← μ θ⁻ + (1-μ) θ, μ = 0.95.

The guidance scale w is distilled in (fixed per run), so the student samples with guidance 1 and 1–4
consistency steps (:func:`~easytune_lab.diffusion.sampling.consistency_step`, trailing timesteps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.text import Vocabulary
from ..errors import UserError
from ..distributed import as_random
from ..runs import read_normalisation
from .registry import BackboneSpec, PretrainConfig
from .backbone import Backbone, Condition, DiffusionConfig, keep_mask
from .latent import LatentDenoiser, MLDConfig, MotionVAE
from .sampling import Predictor, consistency_scalings
from .schedule import NoiseSchedule
from .text_encoder import TextConditioner
from .train import load_backbone


@dataclass
class LCMConfig:
    """Distillation settings; ``mld`` is the teacher's configuration (copied from the teacher run)."""

    mld: MLDConfig = field(default_factory=MLDConfig)
    feature_dim: int = 263
    max_frames: int = 196
    w: float = 7.5                 # teacher guidance distilled into the student
    skip: int = 20                 # k: skipping-step interval of the teacher's ODE solver
    ema: float = 0.95              # μ of the target network
    huber_c: float = 0.001
    cond_drop: float = 0.0         # the student keeps the text (it is sampled without guidance)
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        beta_schedule="scaled_linear", sampler="consistency", sample_steps=4, guidance=1.0, cond_drop=0.0))


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """√(‖a-b‖² + c²) - c per item (Song & Dhariwal 2023, Sec. 3.3), averaged over the batch."""
    sq = (a - b).pow(2).flatten(1).sum(1)
    return (torch.sqrt(sq + c * c) - c).mean()


class LCMBackbone(Backbone):
    """Frozen teacher (VAE, text conditioner, latent denoiser) + student and its EMA target."""

    kind = "lcm"
    stages = ("distill",)

    def __init__(self, config: LCMConfig, vocab: Vocabulary):
        super().__init__()
        self.config = config
        mld = config.mld
        if mld.diffusion.beta_schedule != config.diffusion.beta_schedule:
            config.diffusion.beta_schedule = mld.diffusion.beta_schedule
        self.schedule = NoiseSchedule.create(mld.diffusion.beta_schedule, mld.diffusion.num_train_steps)
        self.vae = MotionVAE(mld.vae, mld.feature_dim, mld.max_frames)
        self.text = TextConditioner(mld.text, vocab)
        self.teacher = LatentDenoiser(mld, self.text.dim)
        self.student = LatentDenoiser(mld, self.text.dim)
        self.target = LatentDenoiser(mld, self.text.dim)
        self.register_buffer("latent_scale", torch.ones(()))
        for module in (self.vae, self.text, self.teacher, self.target):
            module.requires_grad_(False)

    @property
    def net(self) -> nn.Module:
        return self.student

    def predictor(self) -> Predictor:
        return Predictor(self.student, self.schedule)

    def sample_shape(self, cond: Condition) -> tuple[int, ...]:
        return (cond.mask.shape[0], self.config.mld.vae.latent_tokens, self.config.mld.vae.latent_dim)

    def decode(self, x: torch.Tensor, cond: Condition) -> torch.Tensor:
        return self.vae.decode(x / self.latent_scale, cond.mask)

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        return list(self.student.parameters())

    def grid(self) -> list[int]:
        """The teacher's skipping-step grid t = k·j - 1, j = 1..N/k (LCM's DDIM solver timesteps)."""
        k, n = self.config.skip, self.schedule.num_train_steps
        return [k * j - 1 for j in range(1, n // k + 1)]

    def consistency(self, net: nn.Module, z_t: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """f(z_t, t) = c_skip(t) z_t + c_out(t) ẑ0 with per-item t (t = -1 gives z_t)."""
        eps = net(z_t, t.clamp(min=0), cond)
        ab = self.schedule.alpha_bar_at(t).view(-1, 1, 1)
        z0 = (z_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        scal = torch.tensor([consistency_scalings(int(v)) for v in t.tolist()], device=z_t.device)
        return scal[:, 0].view(-1, 1, 1) * z_t + scal[:, 1].view(-1, 1, 1) * z0

    def loss(self, stage: str, batch, generator: torch.Generator) -> torch.Tensor:
        for module in (self.vae, self.teacher, self.target, self.text):
            module.eval()
        rand = as_random(generator)
        with torch.no_grad():
            mu, logvar = self.vae.encode(batch.features, batch.mask)
            z0 = self.vae.reparameterise(mu, logvar, generator) * self.latent_scale
            cond = Condition(text=self.text(batch.captions), mask=batch.mask)
            grid = torch.tensor(self.grid())
            idx = rand.randint(0, len(grid), (z0.shape[0],))
            t = grid[idx.cpu()].to(z0.device)
            s = t - self.config.skip
            eps = rand.randn(z0.shape).to(z0.device)
            z_t = self.schedule.add_noise(z0, eps, t)
            # teacher ODE step t -> s with guidance w: DDIM eq. 12 with per-item timesteps
            eps_c = self.teacher(z_t, t, cond)
            eps_u = self.teacher(z_t, t, cond, drop_text=True)
            eps_w = eps_u + self.config.w * (eps_c - eps_u)
            ab_t = self.schedule.alpha_bar_at(t).view(-1, 1, 1)
            ab_s = self.schedule.alpha_bar_at(s).view(-1, 1, 1)
            z0_hat = (z_t - (1 - ab_t).sqrt() * eps_w) / ab_t.sqrt()
            z_s = ab_s.sqrt() * z0_hat + (1 - ab_s).sqrt() * eps_w
            target = self.consistency(self.target, z_s, s, cond)
        student_cond = cond
        if self.config.cond_drop > 0:
            student_cond = cond.drop_text(keep_mask(z0.shape[0], self.config.cond_drop, generator, z0.device))
        online = self.consistency(self.student, z_t, t, student_cond)
        return pseudo_huber(online, target, self.config.huber_c)

    @torch.no_grad()
    def after_step(self, stage: str) -> None:
        """θ⁻ ← μ θ⁻ + (1-μ) θ."""
        mu = self.config.ema
        for p_t, p in zip(self.target.parameters(), self.student.parameters()):
            p_t.mul_(mu).add_(p.detach(), alpha=1 - mu)


def teacher_setup(config, data):
    """Point an ``lcm`` PretrainConfig and its data at the teacher run: copy the teacher's MLD config, vocabulary
    and statistics; return ``init(model)`` that copies the teacher's weights into teacher, student and target."""
    if not config.teacher:
        raise UserError("--teacher: --backbone lcm distils a finished mld run; name it with --teacher RUN")
    teacher_dir = Path(config.teacher)
    teacher, tconfig, _ = load_backbone(teacher_dir, "cpu")
    if tconfig.backbone != "mld":
        raise UserError(f"--teacher {teacher_dir}: is a '{tconfig.backbone}' run; distillation needs an mld run")
    mean, std = read_normalisation(teacher_dir)
    if mean.shape != np.shape(data.mean) or not (np.allclose(mean, data.mean, atol=1e-5)
                                                  and np.allclose(std, data.std, atol=1e-5)):
        raise UserError(f"--data {data.source}: its Mean/Std differ from the teacher's training data "
                        f"({teacher_dir}); distil on the data the teacher was trained on")
    config.model.mld = tconfig.model
    config.model.feature_dim, config.model.max_frames = tconfig.model.feature_dim, tconfig.model.max_frames
    config.model.diffusion.beta_schedule = tconfig.model.diffusion.beta_schedule
    data.vocab = teacher.text.vocab

    def init(model: LCMBackbone) -> None:
        model.vae.load_state_dict(teacher.vae.state_dict())
        model.text.load_state_dict(teacher.text.state_dict())
        for net in (model.teacher, model.student, model.target):
            net.load_state_dict(teacher.denoiser.state_dict())
        model.latent_scale.copy_(teacher.latent_scale)

    return init


#: The distillation's profiles (MotionLCM: lr 2e-4, w = 7.5... here fixed w, μ = 0.95). ``quick``: 600 steps at lr
#: 4e-4 (a few minutes on a 2-core CPU: every step also runs the VAE encoder and the teacher twice). The student's
#: MLD config is the teacher's, copied by :func:`teacher_setup`.
PROFILES = {
    "smoke": PretrainConfig("lcm", "smoke", LCMConfig(), steps=20, batch_size=8, lr=2e-4, warmup=2,
                            checkpoint_every=10, log_every=5),
    "quick": PretrainConfig("lcm", "quick", LCMConfig(), steps=600, batch_size=32, lr=4e-4, warmup=50,
                            checkpoint_every=200, log_every=25),
    "paper": PretrainConfig("lcm", "paper", LCMConfig(), steps=30_000, batch_size=128, lr=2e-4, warmup=1000,
                            checkpoint_every=2500, log_every=100),
}

SPEC = BackboneSpec("lcm", LCMConfig, LCMBackbone, PROFILES, native_sampler=True, teacher="mld",
                    setup=teacher_setup, motion_space=False,
                    description="consistency distillation of an mld run (MotionLCM)")


def lcm_profile(profile: str, feature_dim: int = 263) -> PretrainConfig:
    """PretrainConfig of the distillation for ``profile`` (a fresh copy of its :data:`PROFILES` row)."""
    return SPEC.profile(profile, feature_dim)
