"""The sinusoidal embedding of positions and timesteps (Vaswani et al. 2017, §3.5), the one copy every model uses.

``PE(p)_i = sin(p · ω_i)`` and ``cos(p · ω_i)`` with frequencies ``ω_i = max_period^(-i / (d/2))``, i < d/2,
arranged in one of three layouts:

* ``"interleaved"``: sin at even, cos at odd columns — the Transformer paper's table (text encoder, MDM/MLD frames);
* ``"cos_sin"``: all cosines, then all sines — DDPM/MDM's timestep embedding;
* ``"sin_cos"``: all sines, then all cosines — the retrieval reward's positions and noise levels.

An odd ``dim`` gets one zero column at the end (``interleaved``: one more sine column, as in the paper's table).

The frequencies are the same real numbers in every layout, but each layout keeps the float32 rounding of the code
its models were trained with — ``interleaved`` computes ``ω_i = exp(2i · (-ln P / d))``, the others
``exp(-ln P · i / (d/2))``, which differ in the last bit for most ``d`` — so that trained weights reproduce
exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LAYOUTS = ("interleaved", "cos_sin", "sin_cos")


def sinusoidal_embedding(positions: torch.Tensor, dim: int, layout: str = "sin_cos",
                         max_period: float = 10000.0) -> torch.Tensor:
    """``positions`` (any shape, integer or float) -> float32 embeddings of shape ``positions.shape + (dim,)``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: must be one of {', '.join(LAYOUTS)} (got '{layout}')")
    device = positions.device
    if layout == "interleaved":
        freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(max_period) / dim))
    else:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)
    args = positions.float()[..., None] * freqs
    sin, cos = torch.sin(args), torch.cos(args)
    if layout == "interleaved":
        table = torch.zeros(*args.shape[:-1], dim, device=device)
        table[..., 0::2] = sin
        table[..., 1::2] = cos[..., : dim // 2]
        return table
    emb = torch.cat([cos, sin] if layout == "cos_sin" else [sin, cos], dim=-1)
    return F.pad(emb, (0, dim % 2))


def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """The (length, dim) table of positions 0..length-1, interleaved (the Transformer paper's layout)."""
    return sinusoidal_embedding(torch.arange(length), dim, "interleaved")
