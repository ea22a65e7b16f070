"""Claim forensics: how far one method's held-out reward curve is from another's, stage by stage.

A fine-tuning run records its held-out reward after every ``eval_every`` trajectories (``metrics.json`` →
``evaluations``: ``iteration``, ``seconds``, ``reward``). Two runs A and B are compared by

* the **reach** of A to B's final reward: the trajectories (or training seconds) A needed before its held-out
  reward first reached B's final one (None when it never did), and the same for B to A's; and
* the **gap** in final reward, A − B.

Over fine-tuning seeds these become means with 95 % t intervals (:func:`easytune_lab.stats.interval`); a gap whose
interval contains 0 is "no difference measured". :func:`waterfall_steps` turns a sequence of stages (one factor
switched at a time) into the change each factor made to the gap, the numbers behind a waterfall figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..finetune.presets import preset
from ..finetune.train import finetune_config
from ..stats import interval, verdict

AXES = ("iteration", "seconds")


def first_reach(evaluations: Sequence[dict], target: float, axis: str = "iteration") -> float | None:
    """The ``axis`` value (trajectories or training seconds) of the first evaluation whose reward is at least
    ``target``; None when no evaluation reaches it."""
    if axis not in AXES:
        raise ValueError(f"axis: must be one of {', '.join(AXES)} (got '{axis}')")
    for entry in evaluations:
        if entry["reward"] is not None and entry["reward"] >= target:
            return float(entry[axis])
    return None


def final_reward(evaluations: Sequence[dict]) -> float:
    """The held-out reward of the last evaluation of a run."""
    return float(evaluations[-1]["reward"])


def compare_pair(a: Sequence[dict], b: Sequence[dict]) -> dict:
    """One seed: A's and B's final rewards, their gap A − B, and each one's reach to the other's final reward in
    trajectories and seconds."""
    fa, fb = final_reward(a), final_reward(b)
    return {"final_a": fa, "final_b": fb, "gap": fa - fb,
            **{f"a_reaches_b_{axis}": first_reach(a, fb, axis) for axis in AXES},
            **{f"b_reaches_a_{axis}": first_reach(b, fa, axis) for axis in AXES}}


def summarise_pairs(pairs: Iterable[dict]) -> dict:
    """Over seeds: the interval of every numeric field of :func:`compare_pair` (reaches over the seeds that
    reached; ``*_reached`` counts them), and the verdict on the gap."""
    pairs = list(pairs)
    out: dict = {"seeds": len(pairs)}
    for key in pairs[0]:
        values = [p[key] for p in pairs if p[key] is not None]
        out[key] = interval(values) if values else None
        if key.endswith(AXES):
            out[f"{key}_reached"] = f"{len(values)}/{len(pairs)}"
    out["gap_verdict"] = verdict(out["gap"])
    return out


def waterfall_steps(stages: Sequence[tuple[str, Sequence[float]]]) -> list[dict]:
    """``stages``: (name, per-seed gaps A − B) in the order the factors were switched. Each row gives the stage's
    gap (interval over seeds) and the change from the previous stage (per seed when both have the same seeds in
    the same order, else of the means), with the verdict on that change."""
    rows = []
    previous: Sequence[float] | None = None
    for name, gaps in stages:
        row = {"stage": name, "gap": interval(gaps)}
        if previous is not None:
            paired = len(previous) == len(gaps)
            change = [g - p for g, p in zip(gaps, previous)] if paired else \
                [row["gap"]["mean"] - interval(previous)["mean"]]
            row["change"] = interval(change)
            row["change_verdict"] = verdict(row["change"])
        rows.append(row)
        previous = gaps
    return rows


# ----------------------------------------------------------------------------- the stages of notebook 08
@dataclass(frozen=True)
class Stage:
    """One factor switched from the authors' configuration toward the fair one. ``changes`` are finetune_config
    overrides for every method (a callable of (method, profile, backbone) where they depend on them; the backbone
    is None when the profile's default lrs apply); ``reward`` switches the
    reward the methods fine-tune against. Stages are cumulative: stage i carries the changes of stages 1..i."""

    name: str
    changes: Mapping[str, Any] | Callable[[str, str, str | None], Mapping[str, Any]] = field(default_factory=dict)
    reward: str | None = None

    def resolve(self, method: str, profile: str, backbone: str | None = None) -> dict:
        return dict(self.changes(method, profile, backbone) if callable(self.changes) else self.changes)


def _fair(method: str, profile: str, backbone: str | None, *keys: str) -> dict:
    """The values the fair preset resolves to for ``keys`` (top-level FinetuneConfig fields) on ``backbone``."""
    cfg = finetune_config(method, profile, preset="fair", backbone=backbone)
    return {k: getattr(cfg, k) for k in keys}


#: From ``official`` (stage 0) to ``fair`` (the last stage), one factor at a time (the order of issue 16).
STAGES: tuple[Stage, ...] = (
    Stage("official (authors' code)"),
    Stage("schedule counted in trajectories", {"schedule_clock": "trajectories"}),
    Stage("equal budgets", lambda m, p, b: _fair(m, p, b, "iterations")),
    Stage("each method's tuned lr", lambda m, p, b: _fair(m, p, b, "lr")),
    Stage("our captions per trajectory", lambda m, p, b: _fair(m, p, b, "batch_size")),
    Stage("our guidance in fine-tuning", lambda m, p, b: _fair(m, p, b, "guidance")),
    Stage("all steps (not the last 10)", {"train_steps": "all", "num_train_steps": 0}),
    Stage("live parameters (not frozen)", {"gradient_at": "live"}),
    Stage("τ-scaled reward (not unit cosine)", {"reward_scale": "tau"}),
    Stage("our SPL (not the authors')", reward="spl"),
    Stage("our schedule (fair)", lambda m, p, b: _fair(m, p, b, "lr_schedule", "warmup")),
)


def stage_options(stage: int, method: str, profile: str, stages: Sequence[Stage] = STAGES,
                  backbone: str | None = None) -> tuple[dict, str]:
    """(finetune_config overrides on top of ``preset="official"``, reward) of ``stages[stage]`` for ``method`` on
    ``backbone``: the changes of stages 1..``stage`` in order."""
    overrides: dict = {}
    reward = preset("official").reward
    for s in stages[1:stage + 1]:
        overrides.update(s.resolve(method, profile, backbone))
        reward = s.reward or reward
    return overrides, reward
