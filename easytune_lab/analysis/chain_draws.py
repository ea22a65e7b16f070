"""Chain coefficients of a backbone over independent draws of captions and noise, with 95 % intervals (Fig. 3).

The reward gradient that reaches the input x_t of a denoising step is the gradient at x_0 carried back through the
Jacobians of every later step (paper Eq. 5–6, what DRaFT-T back-propagates):

    ∂R/∂x_t = ∂R/∂x_0 · ∏_{s=1}^{t} ∂x_{s-1}/∂x_s.

The paper's Fig. 3 claims that this chain attenuates the gradient at the early (noisy) steps. One trajectory is
one draw of captions and of x_T, so the claim is a statement about the distribution of draws. :func:`chain_study`
runs, for a backbone run and the runs fine-tuned from it (e.g. DRaFT-T), ``draws`` independent trajectories, each
with its own ``batch`` captions and its own noise and the same draws for every run (a paired comparison), and
measures per step the chain coefficient ‖v^T ∏ ∂x_{s-1}/∂x_s‖ / ‖v‖
(:func:`~easytune_lab.analysis.chain.chain_norms`, averaged over the draw's captions) for v the reward gradient
∂R/∂x_0 and for a random normal direction. Per draw it keeps the early/late summary
(:func:`~easytune_lab.analysis.chain.early_late`: means over the noisiest and the last third of the steps) and the
ratio early/late. :func:`summarize` gives, per run and direction, the mean over draws of every step's coefficient
and of early, late and the ratio, each with its 95 % Student-t interval (:func:`easytune_lab.stats.interval`), and
:func:`attenuation_verdict` reads the ratio's interval: "attenuates early steps" when it lies below 1, "grows toward
early steps" when it lies above 1, "no difference measured" when it contains 1.

Where the chain starts, the parameterisation matters. DDIM's last step (t_1 → clean, ᾱ = 1) returns x̂0. With
ε-prediction (MLD) x_0 = (x_1 − √(1−ᾱ_1) ε̂_θ(x_1))/√ᾱ_1, whose Jacobian (I − √(1−ᾱ_1) ∂ε̂_θ/∂x_1)/√ᾱ_1 is the
identity minus the network's Jacobian scaled by √(1−ᾱ_1), divided by √ᾱ_1 ≈ 1 (:data:`LAST_STEP` records
√(1−ᾱ_1) per run); with x0-prediction (MDM) x_0 = x̂0_θ(x_1) and the last step's Jacobian is the network's own
∂x̂0_θ/∂x_1, with no identity term. And an ε-network whose output ignored x_t would make every DDIM step
x_s = √(ᾱ_s/ᾱ_t) x_t + const, so the chain to step t would be exactly 1/√ᾱ_t (:data:`CONSTANT_EPS`), growing toward
the noisy steps; what a trained network changes in that is what is measured.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from ..diffusion.generate import load_generator
from ..diffusion.trajectory import BackboneTrajectory
from ..errors import UserError
from ..finetune.adapters import reward_function
from ..stats import interval
from .chain import chain_norms, early_late

#: the vectors v at x_0: the reward gradient ∂R/∂x_0 and a random normal direction
DIRECTIONS = ("reward", "random")
#: what :func:`attenuation_verdict` can say about a ratio early/late
ATTENUATES, GROWS, NO_DIFFERENCE, ONE_DRAW = ("attenuates early steps", "grows toward early steps",
                                              "no difference measured", "one draw: no interval")
#: the key of a run's record that describes its last step (prediction type, t_1 and √(1−ᾱ_{t_1}))
LAST_STEP = "last_step"
#: the key of a run's per-step reference 1/√ᾱ_{t_i}: the chain of an ε-network whose output ignores x_t
CONSTANT_EPS = "constant_eps_chain"


#: draws of captions and noise per backbone when none are asked for: a few for CI, 8 on a 2-core CPU (quick)
PROFILE_DRAWS = {"smoke": 2, "quick": 8, "paper": 16}


def profile_draws(profile: str, draws: int = 0) -> int:
    """``draws`` if given (> 0), else the profile's :data:`PROFILE_DRAWS`."""
    if draws < 0:
        raise UserError(f"draws: must be at least 1, or 0 for the profile's default (got {draws})")
    if draws:
        return draws
    if profile not in PROFILE_DRAWS:
        raise UserError(f"profile: no default number of draws for '{profile}' (have {', '.join(PROFILE_DRAWS)})")
    return PROFILE_DRAWS[profile]


class CaptionSource(Protocol):
    def draw(self, n: int, rng: np.random.Generator) -> tuple[list[str], list[int]]:
        """``n`` captions and their motion lengths (e.g. :class:`easytune_lab.finetune.train.Prompts`)."""


def draw_captions(prompts: CaptionSource, draws: int, batch: int, seed: int) -> list[tuple[list[str], list[int]]]:
    """``draws`` independent batches of ``batch`` captions, drawn in turn from ``np.random.default_rng(seed)``
    (so draw 0 is the batch a single draw with that seed gives)."""
    if draws < 1:
        raise UserError(f"draws: need at least 1 draw (got {draws})")
    if batch < 1:
        raise UserError(f"batch: need at least 1 caption per draw (got {batch})")
    rng = np.random.default_rng(seed)
    return [prompts.draw(batch, rng) for _ in range(draws)]


def reward_gradient(score: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """v(x_0) = ∂(Σ_b R(x_0,b, c_b))/∂x_0: each sample's reward gradient at its final sample (``score(x, 0)``)."""

    def gradient(x0: torch.Tensor) -> torch.Tensor:
        x = x0.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(score(x, 0).sum(), x)[0]

    return gradient


def draw_summary(coefficients: Sequence[float], parts: int = 3) -> dict:
    """One draw's per-step coefficients (index 0 the noisiest step) -> ``{"early", "late", "ratio"}``: the means
    over the first and the last ``len // parts`` steps (:func:`~easytune_lab.analysis.chain.early_late`) and
    early / late (above 1: larger at the noisy steps)."""
    split = early_late(coefficients, parts)
    if not split["late"] > 0:
        raise ValueError(f"coefficients: the late steps' mean is {split['late']} (the ratio early/late needs > 0)")
    return {**split, "ratio": split["early"] / split["late"]}


def run_draws(run: Path, reward, captions: Sequence[tuple[Sequence[str], Sequence[int]]], *, sample_steps: int,
              seed: int, device: torch.device | str = "cpu", sampler: str = "ddim", parts: int = 3) -> dict:
    """Chain coefficients of one backbone run (pretrained or fine-tuned) along one trajectory per draw.

    Draw d samples its captions ``captions[d]`` with ``sampler`` over ``sample_steps`` steps from x_T drawn with
    ``torch.Generator().manual_seed(seed + d)``; one forward pass serves both :data:`DIRECTIONS` (the random one is
    drawn from the same generator after the trajectory). ``reward``: a loaded reward model
    (:func:`easytune_lab.reward.retrieval.load_reward`).

    Returns ``{"run", "coefficients", "per_draw", LAST_STEP, CONSTANT_EPS}``: ``coefficients[direction]`` is a list
    of ``draws`` per-step lists (index 0 the noisiest step; each the mean over the draw's captions of
    ‖v^T ∏ ∂x_{s-1}/∂x_s‖/‖v‖), ``per_draw[direction]`` the :func:`draw_summary` of each, ``LAST_STEP``
    ``{"prediction", "t", "sqrt_one_minus_alpha_bar"}`` of the trajectory's last step and ``CONSTANT_EPS`` the
    per-step chain 1/√ᾱ_{t_i} an ε-network that ignored x_t would give (see the module docstring).
    """
    gen = load_generator(run, device)
    gen.backbone.requires_grad_(False)          # gradients with respect to x_t only
    coefficients = {direction: [] for direction in DIRECTIONS}
    last = reference = None
    for d, (texts, lengths) in enumerate(captions):
        traj = BackboneTrajectory(gen.backbone, texts, lengths, sampler, sample_steps, gen.guidance)
        vectors = {"reward": reward_gradient(reward_function(reward, traj)), "random": None}
        norms = chain_norms(traj, [vectors[k] for k in DIRECTIONS], generator=torch.Generator().manual_seed(seed + d))
        for k, direction in enumerate(DIRECTIONS):
            coefficients[direction].append(norms[k].mean(axis=1).tolist())
        t_last = traj.pairs[-1][0]
        last = {"prediction": traj.predictor.prediction, "t": int(t_last),
                "sqrt_one_minus_alpha_bar": math.sqrt(1.0 - traj.schedule.alpha_bar(t_last))}
        reference = [1.0 / math.sqrt(traj.schedule.alpha_bar(t)) for t, _ in traj.pairs]
    per_draw = {direction: [draw_summary(c, parts) for c in coefficients[direction]] for direction in DIRECTIONS}
    return {"run": Path(run).name, "coefficients": coefficients, "per_draw": per_draw, LAST_STEP: last,
            CONSTANT_EPS: reference}


def chain_study(runs: Mapping[str, Path], reward, prompts: CaptionSource, *, draws: int, batch: int,
                sample_steps: int, seed: int, device: torch.device | str = "cpu", sampler: str = "ddim",
                parts: int = 3) -> dict:
    """Chain coefficients of several runs of one backbone (e.g. ``{"base": ..., "after DRaFT": ...}``) over the
    same ``draws`` draws of ``batch`` captions (:func:`draw_captions` with ``seed``) and noise (seeds ``seed + d``).

    Returns ``{"draws", "batch", "sample_steps", "sampler", "seed", "parts", "captions", "lengths", "noise_seeds",
    "runs"}`` with ``captions[d]``/``lengths[d]`` draw d's captions and motion lengths and ``runs[name]`` the
    :func:`run_draws` record of each run; :func:`summarize` reads it.
    """
    captions = draw_captions(prompts, draws, batch, seed)
    records = {name: run_draws(run, reward, captions, sample_steps=sample_steps, seed=seed, device=device,
                               sampler=sampler, parts=parts) for name, run in runs.items()}
    return {"draws": draws, "batch": batch, "sample_steps": sample_steps, "sampler": sampler, "seed": seed,
            "parts": parts, "captions": [list(texts) for texts, _ in captions],
            "lengths": [[int(n) for n in lengths] for _, lengths in captions],
            "noise_seeds": [seed + d for d in range(draws)], "runs": records}


def attenuation_verdict(ratio: dict) -> str:
    """What the 95 % interval of the ratio early/late (:func:`easytune_lab.stats.interval` over draws) supports:
    :data:`ATTENUATES` (below 1), :data:`GROWS` (above 1), :data:`NO_DIFFERENCE` (contains 1), or
    :data:`ONE_DRAW` without an interval."""
    if ratio.get("ci95") is None:
        return ONE_DRAW
    if ratio["hi"] < 1:
        return ATTENUATES
    if ratio["lo"] > 1:
        return GROWS
    return NO_DIFFERENCE


def step_intervals(coefficients: Sequence[Sequence[float]]) -> dict:
    """Per-step mean and 95 % t-interval over draws of a (draws, T) table: ``{"mean", "lo", "hi"}`` lists (``lo``
    and ``hi`` None with one draw)."""
    table = np.asarray(coefficients, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 1:
        raise ValueError(f"coefficients: need a (draws, steps) table (got shape {table.shape})")
    per_step = [interval(table[:, i]) for i in range(table.shape[1])]
    return {key: [s[key] for s in per_step] for key in ("mean", "lo", "hi")}


def summarize(study: dict) -> dict:
    """Per run and direction of a :func:`chain_study` (or the same layout): ``per_step`` (:func:`step_intervals`),
    ``early``, ``late`` and ``ratio`` (:func:`easytune_lab.stats.interval` over the draws' :func:`draw_summary`)
    and ``verdict`` (:func:`attenuation_verdict` of the ratio)."""
    out: dict[str, dict] = {}
    for name, record in study["runs"].items():
        out[name] = {}
        for direction, table in record["coefficients"].items():
            draws = record["per_draw"][direction]
            entry = {"per_step": step_intervals(table),
                     **{key: interval([d[key] for d in draws]) for key in ("early", "late", "ratio")}}
            entry["verdict"] = attenuation_verdict(entry["ratio"])
            out[name][direction] = entry
    return out


def summary_rows(summaries: Mapping[str, dict]) -> list[dict]:
    """Flat rows (one per backbone, run and direction) of ``{backbone: summarize(...)}`` for a table: the means of
    early, late and the ratio, the ratio's interval, the number of draws and the verdict."""
    rows = []
    for backbone, summary in summaries.items():
        for name, directions in summary.items():
            for direction, s in directions.items():
                rows.append({"backbone": backbone, "model": name, "direction": direction, "draws": s["ratio"]["n"],
                             "early": s["early"]["mean"], "early_ci95": s["early"]["ci95"],
                             "late": s["late"]["mean"], "late_ci95": s["late"]["ci95"],
                             "ratio": s["ratio"]["mean"], "ratio_lo": s["ratio"]["lo"], "ratio_hi": s["ratio"]["hi"],
                             "verdict": s["verdict"]})
    return rows
