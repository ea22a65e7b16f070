"""How well EasyTune's per-step gradients point along the true gradient of the final reward.

Along one fixed denoising trajectory x_T → … → x_0 with parameters θ used at every step, the gradient of the
final reward splits into one share per step (the chain rule over the T uses of θ):

    ∇θ R(x_0) = Σ_i g*_i,      g*_i = (∂R/∂x_{t_i - 1}) · ∂π_θ(x_{t_i}, t_i, c)/∂θ |_{x_{t_i} fixed},

where ∂R/∂x_{t_i - 1} is the reward gradient carried back through the chain of later steps (paper Eq. 5–6, what
DRaFT-T back-propagates). EasyTune replaces g*_i by the gradient of a reward taken at the step itself
(paper Eq. 8–9),

    g_i = ∇θ R(x̂0_θ(sg(x_{t_i}), t_i, c)),

which needs no chain. :func:`gradient_alignment` measures, per step, ‖g*_i‖ (how much of the true gradient enters
at that step: the "vanishing" of early steps is a small ‖g*_i‖), ‖g_i‖, cos(g_i, g*_i) and cos(g_i, ∇θR), and
cos(Σ_i g_i, ∇θR): whether EasyTune's summed update climbs the final reward at all.

Adam's first steps move every weight by about ±lr whatever the gradient's size, so what an update does to the
final reward to first order is ``∇θR · sign(v)`` per unit lr. ``sign_gain`` reports it for EasyTune's per-step
gradients (``v = g_i``) and their sum, relative to DRaFT-T's own sign step ``∇θR · sign(∇θR) = ‖∇θR‖₁``:
1 means as much first-order reward as one DRaFT-T step, 0 none, below 0 a step that lowers the reward.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..diffusion.trajectory import StepRecord, denoise


def _flat(grads: Sequence[torch.Tensor | None], params: Sequence[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(torch.float64)
                      for g, p in zip(grads, params)])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


def _sign_gain(update: torch.Tensor, target: torch.Tensor) -> float:
    """``target · sign(update) / ‖target‖₁``: first-order gain of a sign step along ``update`` on the reward whose
    gradient is ``target``, relative to the best sign step (see the module docstring)."""
    l1 = float(target.abs().sum())
    return float(target @ torch.sign(update)) / l1 if l1 > 0 else float("nan")


def gradient_alignment(trajectory, reward: Callable[[torch.Tensor, int], torch.Tensor],
                       params: Sequence[torch.nn.Parameter], generator: torch.Generator | None = None,
                       return_vectors: bool = False, targets: Sequence[torch.Tensor] = ()) -> dict:
    """Per-step true-gradient shares g*_i and EasyTune gradients g_i on one trajectory (i = 0: noisiest step).

    Args:
        trajectory: a :class:`~easytune_lab.diffusion.trajectory.Trajectory` (its noise is drawn once from
            ``generator`` and reused, so every quantity refers to the same path).
        reward: ``reward(x, t) -> (B,)``; the final reward is the batch mean of ``reward(x̂0 of the last step, 0)``,
            EasyTune's per-step reward ``reward(x̂0_i, 0)`` (the loop's ``reward_on="x0_hat"``).
        params: the parameters θ the gradients are taken with respect to.
    Returns:
        dict of lists (length T): ``true_share_norm`` ‖g*_i‖, ``easytune_norm`` ‖g_i‖, ``cos_step`` cos(g_i, g*_i),
        ``cos_total`` cos(g_i, ∇θR), ``true_share_cos_total`` cos(g*_i, ∇θR), ``sign_gain`` ∇θR·sign(g_i)/‖∇θR‖₁;
        and floats ``total_norm`` ‖∇θR‖, ``cos_easytune_sum_total`` cos(Σ g_i, ∇θR), ``sign_gain_easytune_sum``
        ∇θR·sign(Σ g_i)/‖∇θR‖₁, ``share_sum_error`` ‖Σ g*_i − ∇θR‖/‖∇θR‖ (a check: 0 up to
        rounding), ``final_reward``; with ``return_vectors`` also ``vectors``: the flat float64 ∇θR (``total``)
        and Σ g_i (``easytune_sum``), to compare across caption batches (:func:`transfer`). ``targets``: ∇θR
        of other caption batches (their ``vectors["total"]``); adds ``transfer_sign_gain``, per step the mean over
        the targets of the sign-step gain of g_i on them (does step i's gradient raise other captions' reward?).
    """
    params = list(params)
    x = trajectory.initial_noise(generator)
    inputs, outputs, noises = [], [], []

    def record(step: StepRecord) -> None:
        inputs.append(step.x_t.detach())
        noises.append(step.noise)
        outputs.append(step.x_prev)

    with torch.enable_grad():
        x, x0_hat = denoise(trajectory, x, generator, callback=record)
        final = reward(x0_hat, 0).mean()
        grads = torch.autograd.grad(final, params + outputs[:-1] + [x0_hat], allow_unused=True)
    total = _flat(grads[:len(params)], params)
    cot_out = list(grads[len(params):len(params) + len(outputs) - 1]) + [None]
    cot_x0_last = grads[-1]
    del grads, outputs, x, x0_hat

    out: dict = {k: [] for k in ("true_share_norm", "easytune_norm", "cos_step", "cos_total",
                                 "true_share_cos_total", "sign_gain")}
    easy_sum = torch.zeros_like(total)
    share_sum = torch.zeros_like(total)
    last = trajectory.num_steps - 1
    for i, (x_t, noise) in enumerate(zip(inputs, noises)):   # each recorded step again, on its own
        with torch.enable_grad():
            x_prev, x0_hat = trajectory.step(x_t, i, noise, False)   # sg(x_t): θ at this step only
            easy = _flat(torch.autograd.grad(reward(x0_hat, 0).mean(), params, retain_graph=True,
                                             allow_unused=True), params)
            pieces, cots = [], []
            if cot_out[i] is not None:
                pieces.append(x_prev)
                cots.append(cot_out[i])
            if i == last and cot_x0_last is not None:
                pieces.append(x0_hat)
                cots.append(cot_x0_last)
            share = (_flat(torch.autograd.grad(pieces, params, grad_outputs=cots, allow_unused=True), params)
                     if pieces else torch.zeros_like(total))
        easy_sum += easy
        share_sum += share
        out["true_share_norm"].append(float(share.norm()))
        out["easytune_norm"].append(float(easy.norm()))
        out["cos_step"].append(_cos(easy, share))
        out["cos_total"].append(_cos(easy, total))
        out["true_share_cos_total"].append(_cos(share, total))
        out["sign_gain"].append(_sign_gain(easy, total))
        if targets:
            out.setdefault("transfer_sign_gain", []).append(
                float(np.mean([_sign_gain(easy, target) for target in targets])))
    total_norm = float(total.norm())
    out["total_norm"] = total_norm
    out["cos_easytune_sum_total"] = _cos(easy_sum, total)
    out["sign_gain_easytune_sum"] = _sign_gain(easy_sum, total)
    out["share_sum_error"] = float((share_sum - total).norm()) / total_norm if total_norm > 0 else 0.0
    out["final_reward"] = float(final.detach())
    if return_vectors:
        out["vectors"] = {"total": total, "easytune_sum": easy_sum}
    return out


def transfer(update: torch.Tensor, target: torch.Tensor) -> dict:
    """How an update computed on one batch of captions moves the final reward of another (``target`` = that
    batch's ∇θR): cosine and first-order sign-step gain relative to ‖target‖₁ (see the module docstring)."""
    return {"cos": _cos(update, target), "sign_gain": _sign_gain(update, target)}
