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
from ..distributed import ShardedRandom
from ..runtime import FAST_PATHS
from ..diffusion.sampling import DEFAULT_SPACING, STOCHASTIC, Predictor, get_sampler
from ..diffusion.schedule import inference_timesteps, timestep_pairs


class InputDetachedPredictor(Predictor):
    """A predictor whose network sees sg(x_t) while the sampler's update keeps x_t (DRTune's detached input):
    x̂0/ε̂ conversions and the update ``x_{t-1} = a·x_t + b·(network output)`` still carry ∂/∂x_t."""

    def raw(self, x_t: torch.Tensor, t: int, cond: Any, guidance: float = 1.0) -> torch.Tensor:
        return super().raw(x_t.detach(), t, cond, guidance)


class BackboneTrajectory:
    """One batch of captions sampled with ``sampler`` in ``num_steps`` steps on a backbone.

    Data-parallel fine-tuning passes this rank's rows of a global batch with ``max_len`` (the global batch's
    longest length, so every rank pads alike) and ``rows = (rank, world)``: noise is then drawn for the global
    batch from the shared generator and sliced (:class:`~easytune_lab.distributed.ShardedRandom`), so the ranks
    together see exactly the noise of one process on the combined batch.
    """

    def __init__(self, backbone: Backbone, texts: Sequence[str], lengths: Sequence[int], sampler: str,
                 num_steps: int, guidance: float, spacing: str | None = None, *, max_len: int | None = None,
                 rows: tuple[int, int] = (0, 1)):
        self.backbone = backbone
        self.rank, self.world = rows
        self.texts = list(texts)
        self.lengths = [int(n) for n in lengths]
        self.sampler = sampler
        self.step_fn = get_sampler(sampler)
        self.guidance = guidance
        schedule = backbone.schedule
        self.timesteps = inference_timesteps(schedule.num_train_steps, num_steps, spacing or DEFAULT_SPACING[sampler])
        self.pairs = timestep_pairs(self.timesteps)
        self.num_steps = len(self.pairs)
        self.cond: Condition = backbone.condition(self.texts, self.lengths, max_len)
        self.predictor = Predictor(backbone.net, schedule)
        self.detached = InputDetachedPredictor(backbone.net, schedule)
        self.device = next(backbone.parameters()).device
        self.dtype = next(backbone.parameters()).dtype

    def _randn(self, shape, generator: torch.Generator | None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """N(0, I) of ``shape`` (this rank's rows) from ``generator``, drawn for the global batch and sliced."""
        if generator is None:
            return torch.randn(shape, device=self.device, dtype=dtype)
        return ShardedRandom(generator, self.rank, self.world).randn(shape, dtype=dtype).to(self.device)

    def initial_noise(self, generator: torch.Generator | None) -> torch.Tensor:
        return self._randn(self.backbone.sample_shape(self.cond), generator, self.dtype)

    def draw_noise(self, i: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        if self.sampler not in STOCHASTIC or self.pairs[i][1] < 0:
            return None
        return self._randn(x.shape, generator, x.dtype).to(x.device)

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
        eps = self._randn(x0.shape, generator, x0.dtype).to(x0.device)
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        return self.backbone.schedule.add_noise(x0, eps, tt)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Sampled space -> normalised features with padded frames zeroed."""
        feats = self.backbone.decode(x, self.cond)
        return feats * self.cond.mask[..., None].to(feats.dtype)


def reward_function(reward_model, trajectory: BackboneTrajectory):
    """``reward(x, t)``: R(decode(x), c) for t <= 0, R(x_t, t, c) for a noise-aware reward at t > 0.

    The reward model's own parameters are frozen; gradients flow into x (and through the decoder). The captions'
    embedding E_T(c) is computed once per trajectory when the text encoder is frozen (it was computed at every
    reward call before; ``runtime.FAST_PATHS["reward_text_once"]``).
    """
    lengths = torch.as_tensor(trajectory.lengths, device=trajectory.device)
    text = None
    frozen = not any(p.requires_grad for p in reward_model.text_encoder.parameters())
    if FAST_PATHS["reward_text_once"] and frozen:  # the captions are fixed for the trajectory: embed them once
        with torch.no_grad():
            text = reward_model.embed_text(trajectory.texts)

    def reward(x: torch.Tensor, t: int) -> torch.Tensor:
        feats = trajectory.decode(x)
        level = int(t) if t and t > 0 else None
        return reward_model.score(feats, trajectory.texts, lengths=lengths, t=level, text_emb=text)

    return reward
