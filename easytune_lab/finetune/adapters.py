"""Adapters between the shared loop and the reward models.

The trajectory the loop drives is :class:`~easytune_lab.diffusion.trajectory.BackboneTrajectory` (re-exported here
for old imports); :func:`reward_function` turns a reward model into ``reward(x, t) -> (B,)`` on the backbone's
sampled space (decoded through the VAE for latent backbones, so the gradient reaches the latents, paper Sec. 4).
"""

from __future__ import annotations

import torch

from ..diffusion.trajectory import BackboneTrajectory, InputDetachedPredictor
from ..runtime import FAST_PATHS

__all__ = ["BackboneTrajectory", "InputDetachedPredictor", "reward_function"]


def reward_function(reward_model, trajectory: BackboneTrajectory, scale: str = "tau"):
    """``reward(x, t)``: R(decode(x), c) for t <= 0, R(x_t, t, c) for a noise-aware reward at t > 0.

    ``scale``: ``"tau"`` gives the reward model's R = τ·cos(E_M(x), E_T(c)) with its learned τ (≈ 14 at quick, so
    per-step gradient norms of 12–51 that clipping at 1 always rescales); ``"unit"`` the plain cosine (the authors'
    −cos loss with λ = 1, ``configs/ft_mld_t2m.yaml`` ``lambda_reward: 1``).

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

    if scale not in ("tau", "unit"):
        raise ValueError(f"reward_scale: must be tau or unit (got '{scale}')")
    unit = None
    if scale == "unit":
        with torch.no_grad():
            unit = 1.0 / reward_model.logit_scale().detach()

    def reward(x: torch.Tensor, t: int) -> torch.Tensor:
        feats = trajectory.decode(x)
        level = int(t) if t and t > 0 else None
        r = reward_model.score(feats, trajectory.texts, lengths=lengths, t=level, text_emb=text)
        return r if unit is None else r * unit

    return reward
