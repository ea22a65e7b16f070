"""Reverse diffusion steps as pure functions, and the sampling loop with a per-step hook.

Every step has one signature (the k-diffusion style)::

    step(model, x_t, t, t_prev, cond, guidance, *, noise=None, generator=None) -> (x_prev, x0_hat)

``model`` is a :class:`Predictor`: it wraps a network ``net(x_t, t, cond, drop_text=False)`` that predicts either
the clean sample x0 (MDM) or the noise ε (MLD), applies classifier-free guidance and returns both x̂0 and ε̂, so
each sampler works with either parameterisation. ``t`` and ``t_prev`` are integer timesteps of the training
schedule (``t_prev = -1`` is clean data). Steps never switch gradients off: the fine-tuning loop calls them with
or without a graph. ``noise`` (or a ``generator`` to draw it) is used by the stochastic steps only.

Noise is drawn by one rule, :func:`normal_noise` (the steps' own draws and every trajectory's). The timesteps a
sampler runs over and the loop that chains the steps are in :mod:`easytune_lab.diffusion.trajectory`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import torch

from ..distributed import ShardedRandom
from ..errors import UserError
from .schedule import NoiseSchedule

PREDICTIONS = ("x0", "eps")


class Network(Protocol):
    prediction: str

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any, drop_text: bool = False) -> torch.Tensor: ...


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """x̂0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t (DDPM eq. 4 solved for x0; DDIM eq. 12 "predicted x0")."""
    return (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """ε̂ = (x_t - √ᾱ_t x̂0) / √(1-ᾱ_t) (DDPM eq. 4 solved for ε)."""
    return (x_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + s · (cond - uncond) (Ho & Salimans 2022, eq. 6); s = 1 is the conditional model."""
    return uncond + scale * (cond - uncond)


class Predictor:
    """A network with its schedule: ``predictor(x_t, t, cond, guidance) -> (x̂0, ε̂)``.

    Guidance is applied to the network's raw output. Both conversions x0 ↔ ε are affine in the output with the
    same x_t, so guiding x0 (MDM) or ε (MLD) gives the same x̂0.
    """

    def __init__(self, net: Callable, schedule: NoiseSchedule, prediction: str | None = None):
        self.net = net
        self.schedule = schedule
        self.prediction = prediction or getattr(net, "prediction", "x0")
        if self.prediction not in PREDICTIONS:
            raise UserError(f"prediction: unknown parameterisation '{self.prediction}' (choose x0 or eps)")

    def raw(self, x_t: torch.Tensor, t: int, cond: Any, guidance: float = 1.0) -> torch.Tensor:
        """The guided network output (x0 or ε, whichever the network predicts)."""
        tt = torch.full((x_t.shape[0],), int(t), dtype=torch.long, device=x_t.device)
        out_c = self.net(x_t, tt, cond, drop_text=False)
        if guidance == 1.0:
            return out_c
        out_u = self.net(x_t, tt, cond, drop_text=True)
        return classifier_free_guidance(out_u, out_c, guidance)

    def __call__(self, x_t: torch.Tensor, t: int, cond: Any, guidance: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.raw(x_t, t, cond, guidance)
        ab = self.schedule.alpha_bar(t)
        if self.prediction == "x0":
            return out, eps_from_x0(x_t, out, ab)
        return x0_from_eps(x_t, out, ab), out


def as_predictor(model: Any, schedule: NoiseSchedule) -> Predictor:
    """Wrap a network (with a ``prediction`` attribute) unless it already is a :class:`Predictor`."""
    return model if isinstance(model, Predictor) else Predictor(model, schedule)


def normal_noise(shape: Sequence[int], generator: torch.Generator | None = None, *,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 rows: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """The one noise rule: ε ~ N(0, I) of ``shape`` on ``device``.

    With a ``generator`` the draw is made on the generator's device (reproducible across devices) and moved; with
    ``rows = (rank, world)`` it is made for the global batch of ``shape[0] · world`` rows and this rank's rows are
    kept (:class:`~easytune_lab.distributed.ShardedRandom`), so the ranks together see one process's noise.
    Without a generator, torch's global generator draws on ``device``.
    """
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    z = ShardedRandom(generator, rows[0], rows[1]).randn(shape, dtype=dtype)
    return z if device is None else z.to(device)


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return normal_noise(x.shape, generator, device=x.device, dtype=x.dtype)


def ddpm_step(model: Predictor, x_t: torch.Tensor, t: int, t_prev: int, cond: Any, guidance: float = 1.0, *,
              noise: torch.Tensor | None = None, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral DDPM step (SDE): x_{s} ~ q(x_s | x_t, x̂0) with s = t_prev < t.

    The posterior of DDPM eq. 6–7, written for a jump t → s (s = t-1 gives eq. 7 exactly), with
    α_{t|s} = ᾱ_t / ᾱ_s:

        μ̃ = √ᾱ_s (1-α_{t|s}) / (1-ᾱ_t) · x̂0 + √α_{t|s} (1-ᾱ_s) / (1-ᾱ_t) · x_t,
        β̃ = (1-ᾱ_s) / (1-ᾱ_t) · (1-α_{t|s}),      x_s = μ̃ + √β̃ · z.

    The last step (s = -1) returns x̂0.
    """
    sched = model.schedule
    x0_hat, _ = model(x_t, t, cond, guidance)
    if t_prev < 0:
        return x0_hat, x0_hat
    ab_t, ab_s = sched.alpha_bar(t), sched.alpha_bar(t_prev)
    a_ts = ab_t / ab_s
    mean = (math.sqrt(ab_s) * (1 - a_ts) / (1 - ab_t)) * x0_hat + (math.sqrt(a_ts) * (1 - ab_s) / (1 - ab_t)) * x_t
    var = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
    if noise is None:
        noise = _randn_like(x_t, generator)
    return mean + math.sqrt(var) * noise, x0_hat


def ddim_step(model: Predictor, x_t: torch.Tensor, t: int, t_prev: int, cond: Any, guidance: float = 1.0, *,
              noise: torch.Tensor | None = None, generator: torch.Generator | None = None, eta: float = 0.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM step (Song et al. 2021, eq. 12); with η = 0 (default) the deterministic ODE sampler:

        x_s = √ᾱ_s x̂0 + √(1-ᾱ_s-σ²) ε̂ + σ z,   σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s)  (eq. 16).
    """
    sched = model.schedule
    x0_hat, eps_hat = model(x_t, t, cond, guidance)
    ab_t, ab_s = sched.alpha_bar(t), sched.alpha_bar(t_prev)
    sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(1 - ab_t / ab_s) if eta > 0 else 0.0
    x_prev = math.sqrt(ab_s) * x0_hat + math.sqrt(max(1 - ab_s - sigma**2, 0.0)) * eps_hat
    if sigma > 0:
        if noise is None:
            noise = _randn_like(x_t, generator)
        x_prev = x_prev + sigma * noise
    return x_prev, x0_hat


def consistency_scalings(t: int, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[float, float]:
    """Boundary-condition coefficients (c_skip, c_out) of a consistency function (Song et al. 2023, eq. 7;
    Luo et al. 2023 LCM with discrete t scaled by 10): c_skip = σ_d² / ((st)² + σ_d²),
    c_out = st / √((st)² + σ_d²), so f(x, 0) = x."""
    st = timestep_scaling * max(t, 0)
    c_skip = sigma_data**2 / (st**2 + sigma_data**2)
    c_out = st / math.sqrt(st**2 + sigma_data**2)
    return c_skip, c_out


def consistency_function(model: Predictor, x_t: torch.Tensor, t: int, cond: Any, guidance: float = 1.0
                         ) -> torch.Tensor:
    """f_θ(x_t, t) = c_skip(t) x_t + c_out(t) x̂0(x_t, t) (LCM, Luo et al. 2023, eq. 9)."""
    c_skip, c_out = consistency_scalings(t)
    x0_pred, _ = model(x_t, t, cond, guidance)
    return c_skip * x_t + c_out * x0_pred


def consistency_step(model: Predictor, x_t: torch.Tensor, t: int, t_prev: int, cond: Any, guidance: float = 1.0,
                     *, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1; LCM Alg. 1): x̂0 = f_θ(x_t, t), then re-noise
    to the next level, x_s = √ᾱ_s x̂0 + √(1-ᾱ_s) z with fresh z; the last step returns x̂0."""
    x0_hat = consistency_function(model, x_t, t, cond, guidance)
    if t_prev < 0:
        return x0_hat, x0_hat
    ab_s = model.schedule.alpha_bar(t_prev)
    if noise is None:
        noise = _randn_like(x_t, generator)
    return math.sqrt(ab_s) * x0_hat + math.sqrt(1 - ab_s) * noise, x0_hat


SAMPLERS: dict[str, Callable] = {"ddpm": ddpm_step, "ddim": ddim_step, "consistency": consistency_step}
STOCHASTIC = {"ddpm", "consistency"}   # samplers that draw fresh noise at every step but the last
DEFAULT_SPACING = {"ddpm": "leading", "ddim": "leading", "consistency": "trailing"}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise UserError(f"--sampler: unknown sampler '{name}' (choose {', '.join(SAMPLERS)})")
    return SAMPLERS[name]
