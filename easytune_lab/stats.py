"""Intervals over seeds: the workbench's one rule for "is this difference measured?".

A comparison between methods or settings is summarised over its fine-tuning (or training) seeds as the mean and a
95 % Student-t interval, mean ± t_{0.975, n−1} · s/√n with the sample standard deviation s. A difference whose
interval contains 0 is reported as "no difference measured", never as a win (:func:`verdict`).
"""

from __future__ import annotations

import math
from typing import Sequence

#: two-sided 95 % quantiles of Student's t by degrees of freedom (1..30); 1.96 beyond
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(dof: int) -> float:
    """t_{0.975, dof}: the half-width factor of a two-sided 95 % interval."""
    if dof < 1:
        raise ValueError(f"dof: need at least 1 degree of freedom (got {dof})")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def interval(values: Sequence[float]) -> dict:
    """``{"mean", "ci95", "lo", "hi", "n", "values"}``: the mean over seeds and its 95 % t half-width (``ci95`` is
    None with fewer than 2 values: no interval can be given)."""
    v = [float(x) for x in values]
    if not v:
        raise ValueError("values: empty")
    mean = math.fsum(v) / len(v)
    if len(v) < 2:
        return {"mean": mean, "ci95": None, "lo": None, "hi": None, "n": 1, "values": v}
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in v) / (len(v) - 1))
    half = t_quantile(len(v) - 1) * sd / math.sqrt(len(v))
    return {"mean": mean, "ci95": half, "lo": mean - half, "hi": mean + half, "n": len(v), "values": v}


def verdict(difference: dict, higher_is_better: bool = True) -> str:
    """"better" / "worse" when the 95 % interval of a difference (A − B, from :func:`interval`) excludes 0,
    "no difference measured" when it contains 0, "one seed: no interval" without one."""
    if difference.get("ci95") is None:
        return "one seed: no interval"
    if difference["lo"] <= 0 <= difference["hi"]:
        return "no difference measured"
    return "better" if (difference["mean"] > 0) == higher_is_better else "worse"
