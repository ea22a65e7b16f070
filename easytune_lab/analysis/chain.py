"""Jacobian chain coefficients along real denoising trajectories (paper Fig. 3).

Backpropagating a reward R(x_0) to step t multiplies the chain of Jacobians of the later steps (paper Eq. 5–6)

    ∂R/∂x_t = ∂R/∂x_0 · ∏_{s=1}^{t} ∂x_{s-1}/∂x_s.

The paper's Fig. 3 claims that its norm shrinks for early (high-noise) steps, so DRaFT-style
methods starve them of gradient. This module measures ``‖v^T ∏ ∂x_{s-1}/∂x_s‖ / ‖v‖`` for every step with
vector–Jacobian products (one backward pass through the stored trajectory per vector), with v the reward gradient
at x_0 or a random direction; :mod:`easytune_lab.analysis.chain_draws` repeats it over draws of captions and noise
for a backbone run and summarises it with 95 % intervals.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np
import torch

from ..diffusion.trajectory import denoise


#: a vector at x_0: a tensor shaped like x_0, a function of x_0 (e.g. the reward gradient), or None for a random one
Direction = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor], None]


def chain_norms(trajectory, directions: Sequence[Direction], generator: torch.Generator | None = None) -> np.ndarray:
    """Per-sample chain coefficients of several vectors at x_0 along one trajectory (one forward pass).

    For each vector v (one row per sample) and each step i with input x_{t_i}, the chain rule over the later steps
    (paper Eq. 5–6) gives ``v^T ∂x_0/∂x_{t_i} = v^T ∏_{s=1}^{t_i} ∂x_{s-1}/∂x_s``; this returns its norm relative
    to ‖v‖, per sample. The trajectory is run once from x_T (drawn from ``generator``) with its graph kept; each
    vector costs one backward pass through it.

    Args:
        trajectory: a :class:`~easytune_lab.diffusion.trajectory.Trajectory` (or any ``Steps``).
        directions: per vector: a tensor shaped like x_0, a function of (detached) x_0, or None for a random
            normal direction drawn from ``generator`` after the trajectory (in the order of ``directions``).
    Returns:
        float64 array (len(directions), T, B): entry [k, i, b] is ‖v_k,b^T ∂x_0/∂x_{t_i}‖ / ‖v_k,b‖ for sample b;
        i = 0 is the noisiest step. A step whose input does not reach x_0 gives 0.
    """
    x = trajectory.initial_noise(generator).detach().requires_grad_(True)
    inputs = []
    rows = []
    with torch.enable_grad():
        x0, _ = denoise(trajectory, x, generator, callback=lambda record: inputs.append(record.x_t))
        batch = x0.shape[0]
        vectors = []
        for v in directions:
            if v is None:
                vectors.append(torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype))
            elif callable(v):
                vectors.append(v(x0.detach()))
            else:
                vectors.append(v)
        for k, vec in enumerate(vectors):
            grads = torch.autograd.grad(x0, inputs, grad_outputs=vec, allow_unused=True,
                                        retain_graph=k < len(vectors) - 1)
            vnorm = vec.detach().reshape(batch, -1).to(torch.float64).norm(dim=1)
            rows.append([np.zeros(batch) if g is None else
                         (g.reshape(batch, -1).to(torch.float64).norm(dim=1) / vnorm).cpu().numpy() for g in grads])
    return np.asarray(rows, dtype=np.float64).reshape(len(vectors), len(inputs), batch)


def chain_coefficients(trajectory, v: Direction = None, generator: torch.Generator | None = None) -> np.ndarray:
    """Per-step norm of the vector–Jacobian product from x_0 back to the input x_t of each step, batch mean.

    Args:
        trajectory: a :class:`~easytune_lab.diffusion.trajectory.Trajectory` (or any ``Steps``).
        v: the vector at x_0: a tensor, a function of x_0 (e.g. the reward gradient), or None for a random
           direction per sample.
    Returns:
        array (T,) where entry i is ‖∂(v·x_0)/∂x_{t_i}‖ / ‖v‖ averaged over the batch; i = 0 is the noisiest step
        (:func:`chain_norms` for one vector, averaged over its samples).
    """
    return chain_norms(trajectory, [v], generator)[0].mean(axis=1)


def early_late(values, parts: int = 3) -> dict:
    """Means of a per-step series over its first (noisiest) and last ``len // parts`` steps (at least one)."""
    values = np.asarray(values, dtype=np.float64)
    n = max(1, len(values) // parts)
    return {"early": float(values[:n].mean()), "late": float(values[-n:].mean())}
