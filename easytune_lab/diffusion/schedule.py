"""Noise schedules and inference timesteps for DDPM / DDIM / few-step consistency sampling.

Notation follows DDPM (Ho et al. 2020): forward process q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I)
(eq. 2), α_t = 1 - β_t, ᾱ_t = ∏_{s≤t} α_s, and the closed-form marginal (eq. 4)

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)   ⇔   x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε.

Timesteps are integer indices 0..N-1 into the training schedule (N = 1000 by default). The index -1 stands for
the clean data, with ᾱ_{-1} = 1, so a sampler's last step goes from t to t_prev = -1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import UserError

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")


def make_betas(kind: str = "linear", num_train_steps: int = 1000, beta_start: float | None = None,
               beta_end: float | None = None) -> torch.Tensor:
    """β_1..β_N in float64.

    * ``linear``: β linear from 1e-4 to 0.02 (DDPM, Ho et al. 2020, Sec. 4), rescaled by 1000/N so that other
      N keep the same total noise (the "improved DDPM" convention);
    * ``scaled_linear``: √β linear from √0.00085 to √0.012 (latent diffusion, Rombach et al. 2022), squared;
    * ``cosine``: ᾱ_t = f(t)/f(0), f(t) = cos²(((t/N + s)/(1 + s)) · π/2), s = 0.008, and
      β_t = 1 - ᾱ_t/ᾱ_{t-1} clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17).
    """
    if num_train_steps < 1:
        raise UserError(f"num_train_steps: must be >= 1 (got {num_train_steps})")
    n = num_train_steps
    if kind == "linear":
        scale = 1000.0 / n
        lo = scale * (1e-4 if beta_start is None else beta_start)
        hi = scale * (0.02 if beta_end is None else beta_end)
        return torch.linspace(lo, hi, n, dtype=torch.float64)
    if kind == "scaled_linear":
        lo = 0.00085 if beta_start is None else beta_start
        hi = 0.012 if beta_end is None else beta_end
        return torch.linspace(math.sqrt(lo), math.sqrt(hi), n, dtype=torch.float64) ** 2
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(n + 1, dtype=torch.float64) / n
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise UserError(f"beta_schedule: unknown schedule '{kind}' (choose {', '.join(BETA_SCHEDULES)})")


@dataclass
class NoiseSchedule:
    """β_t and the derived ᾱ_t of one training schedule (float64 tensors of length N)."""

    betas: torch.Tensor
    kind: str = "linear"

    def __post_init__(self) -> None:
        self.betas = self.betas.to(torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    @classmethod
    def create(cls, kind: str = "linear", num_train_steps: int = 1000) -> "NoiseSchedule":
        return cls(make_betas(kind, num_train_steps), kind=kind)

    @property
    def num_train_steps(self) -> int:
        return int(self.betas.shape[0])

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t as a Python float; ᾱ_{-1} = 1 (clean data)."""
        if t < 0:
            return 1.0
        return float(self.alphas_cumprod[t])

    def alpha_bar_at(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for a tensor of indices (any shape; -1 gives 1), in float32 on ``t``'s device."""
        table = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod]).to(t.device)
        return table[t.long() + 1].float()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (DDPM eq. 4) with one t per batch element."""
        ab = self.alpha_bar_at(t).to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def snr(self, t: int) -> float:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) (Kingma et al. 2021)."""
        ab = self.alpha_bar(t)
        return ab / (1 - ab)


def inference_timesteps(num_train_steps: int, num_steps: int, spacing: str = "leading") -> list[int]:
    """The decreasing timesteps t_0 > t_1 > ... of a sampler with ``num_steps`` steps.

    * ``leading``: t = k·(N // S) for k = S-1..0 (DDIM, Song et al. 2021, Sec. 4.2 "uniform" sub-sequence);
    * ``trailing``: t = N - 1 - k·(N / S) rounded, starting at N-1 (Lin et al. 2024, Table 2) — the choice
      for 1–4-step consistency sampling, whose first step must start from pure noise;
    * ``linspace``: S points evenly spaced over [0, N-1], rounded.

    With ``num_steps == num_train_steps`` every spacing gives N-1..0 (full DDPM ancestral sampling).
    """
    if not 1 <= num_steps <= num_train_steps:
        raise UserError(f"--steps: must be in [1, {num_train_steps}] (got {num_steps})")
    n, s = num_train_steps, num_steps
    if spacing == "leading":
        stride = n // s
        ts = [k * stride for k in range(s)]
    elif spacing == "trailing":
        ts = sorted({int(round(n - 1 - k * n / s)) for k in range(s)})
    elif spacing == "linspace":
        ts = [int(round(v)) for v in torch.linspace(0, n - 1, s, dtype=torch.float64).tolist()]
    else:
        raise UserError(f"spacing: unknown timestep spacing '{spacing}' (choose {', '.join(SPACINGS)})")
    return sorted(ts, reverse=True)


def timestep_pairs(timesteps: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) for each reverse step; the last step goes to t_prev = -1 (clean data)."""
    return [(t, timesteps[i + 1] if i + 1 < len(timesteps) else -1) for i, t in enumerate(timesteps)]


@dataclass(frozen=True)
class Timesteps:
    """The decreasing timesteps t_0 > t_1 > ... > t_{T-1} of one sampling run, computed once.

    A sampler takes the timesteps, not a count (the k-diffusion convention): T = ``len(timesteps)``, and reverse step
    ``i`` goes from ``timesteps[i]`` to ``pairs[i][1]`` (the next timestep, or -1 = clean data after the last).
    """

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        values = tuple(int(t) for t in self.values)
        if not values or any(a <= b for a, b in zip(values, values[1:])) or values[-1] < 0:
            raise UserError(f"timesteps: must be non-empty, decreasing and >= 0 (got {list(values)})")
        object.__setattr__(self, "values", values)

    @classmethod
    def spaced(cls, num_train_steps: int, num_steps: int, spacing: str = "leading") -> "Timesteps":
        """``num_steps`` timesteps of a schedule of ``num_train_steps`` (:func:`inference_timesteps`)."""
        return cls(tuple(inference_timesteps(num_train_steps, num_steps, spacing)))

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[int]:
        return iter(self.values)

    def __getitem__(self, i: int) -> int:
        return self.values[i]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(t, t_prev) of every reverse step (:func:`timestep_pairs`)."""
        return timestep_pairs(list(self.values))
