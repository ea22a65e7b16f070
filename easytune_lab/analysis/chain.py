"""Jacobian chain coefficients along real denoising trajectories (paper Fig. 3).

Backpropagating a reward R(x_0) to step t multiplies the chain of Jacobians

    ∂R/∂x_t = ∂R/∂x_0 · ∏_{s=1}^{t} ∂x_{s-1}/∂x_s,

whose norm shrinks for early (high-noise) steps, so DRaFT-style methods starve them of gradient. This module
measures ``‖v^T ∏ ∂x_{s-1}/∂x_s‖ / ‖v‖`` for every step with vector–Jacobian products (one backward pass
through the stored trajectory), with v the reward gradient at x_0 or a random direction.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..diffusion.trajectory import denoise


def chain_coefficients(trajectory, v: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None,
                       generator: torch.Generator | None = None) -> np.ndarray:
    """Per-step norm of the vector–Jacobian product from x_0 back to the input x_t of each step.

    Args:
        trajectory: a :class:`~easytune_lab.diffusion.trajectory.Trajectory` (or any ``Steps``).
        v: the vector at x_0: a tensor, a function of x_0 (e.g. the reward gradient), or None for a random
           unit direction per sample.
    Returns:
        array (T,) where entry i is ‖∂(v·x_0)/∂x_{t_i}‖ / ‖v‖ averaged over the batch; i = 0 is the noisiest step.
    """
    x = trajectory.initial_noise(generator).detach().requires_grad_(True)
    inputs = []
    with torch.enable_grad():
        x0, _ = denoise(trajectory, x, generator, callback=lambda record: inputs.append(record.x_t))
        if v is None:
            vec = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        elif callable(v):
            vec = v(x0.detach())
        else:
            vec = v
        grads = torch.autograd.grad(x0, inputs, grad_outputs=vec, allow_unused=True)
    batch = vec.shape[0]
    vnorm = vec.reshape(batch, -1).norm(dim=1)
    out = []
    for g in grads:
        if g is None:
            out.append(0.0)
        else:
            out.append(float((g.reshape(batch, -1).norm(dim=1) / vnorm).mean()))
    return np.asarray(out)


def early_late(values, parts: int = 3) -> dict:
    """Means of a per-step series over its first (noisiest) and last ``len // parts`` steps (at least one)."""
    values = np.asarray(values, dtype=np.float64)
    n = max(1, len(values) // parts)
    return {"early": float(values[:n].mean()), "late": float(values[-n:].mean())}
