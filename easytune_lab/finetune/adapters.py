"""Adapters between the shared loop and the diffusion backbones / reward models.

:class:`BackboneTrajectory` turns a backbone, a sampler and a batch of captions into the
:class:`~easytune_lab.finetune.loop.Trajectory` the loop drives; :func:`reward_function` turns a reward model
into ``reward(x, t) -> (B,)`` on the backbone's sampled space (decoded through the VAE for latent backbones, so
the gradient reaches the latents, paper Sec. 4).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..diffusion.backbone import Backbone, Condition
from ..diffusion.sampling import DEFAULT_SPACING, STOCHASTIC, Predictor, get_sampler
from ..diffusion.schedule import inference_timesteps, timestep_pairs


class InputDetachedPredictor(Predictor):
    """A predictor whose network sees sg(x_t) while the sampler's update keeps x_t (DRTune's detached input):
    x̂0/ε̂ conversions and the update ``x_{t-1} = a·x_t + b·(network output)`` still carry ∂/∂x_t."""

    def raw(self, x_t: torch.Tensor, t: int, cond: Any, guidance: float = 1.0) -> torch.Tensor:
        return super().raw(x_t.detach(), t, cond, guidance)


class BackboneTrajectory:
    """One batch of captions sampled with ``sampler`` in ``num_steps`` steps on a backbone."""

    def __init__(self, backbone: Backbone, texts: Sequence[str], lengths: Sequence[int], sampler: str,
                 num_steps: int, guidance: float, spacing: str | None = None):
        self.backbone = backbone
        self.texts = list(texts)
        self.lengths = [int(n) for n in lengths]
        self.sampler = sampler
        self.step_fn = get_sampler(sampler)
        self.guidance = guidance
        schedule = backbone.schedule
        self.timesteps = inference_timesteps(schedule.num_train_steps, num_steps, spacing or DEFAULT_SPACING[sampler])
        self.pairs = timestep_pairs(self.timesteps)
        self.num_steps = len(self.pairs)
        self.cond: Condition = backbone.condition(self.texts, self.lengths)
        self.predictor = Predictor(backbone.net, schedule)
        self.detached = InputDetachedPredictor(backbone.net, schedule)
        self.device = next(backbone.parameters()).device

    def initial_noise(self, generator: torch.Generator | None) -> torch.Tensor:
        shape = self.backbone.sample_shape(self.cond)
        gdev = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gdev).to(self.device)

    def draw_noise(self, i: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        if self.sampler not in STOCHASTIC or self.pairs[i][1] < 0:
            return None
        gdev = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)

    def step(self, x_t: torch.Tensor, i: int, noise: torch.Tensor | None, detach_input: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
        t, t_prev = self.pairs[i]
        model = self.detached if detach_input else self.predictor
        return self.step_fn(model, x_t, t, t_prev, self.cond, self.guidance, noise=noise)

    def noise_level(self, i: int) -> int:
        """Noise level of the output of step i (its t_prev; -1 = clean)."""
        return self.pairs[i][1]

    def renoise(self, x0: torch.Tensor, i: int, generator: torch.Generator | None) -> torch.Tensor:
        t = self.pairs[i][0]
        gdev = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=gdev, dtype=x0.dtype).to(x0.device)
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return self.backbone.schedule.add_noise(x0, eps, tt)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled space -> normalised features with padded frames zeroed."""
        feats = self.backbone.decode(x, self.cond)
        return feats * self.cond.mask[..., None].to(feats.dtype)


def reward_function(reward_model, trajectory: BackboneTrajectory):
    """``reward(x, t)``: R(decode(x), c) for t <= 0, R(x_t, t, c) for a noise-aware reward at t > 0.

    The reward model's own parameters are frozen; gradients flow into x (and through the decoder).
    """
    lengths = torch.as_tensor(trajectory.lengths, device=trajectory.device)

    def reward(x: torch.Tensor, t: int) -> torch.Tensor:
        feats = trajectory.decode(x)
        level = int(t) if t and t > 0 else None
        return reward_model.score(feats, trajectory.texts, lengths=lengths, t=level)

    return reward
