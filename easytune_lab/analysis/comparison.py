"""Methods compared over fine-tuning seeds: the main table (paper Table 1) with intervals and verdicts.

Every arm (a fine-tuning method, or the pretrained base) is fine-tuned from the same base backbone with the same
reward once per fine-tuning seed; each run is evaluated with the T2M protocol (:mod:`easytune_lab.eval.protocol`).
:func:`collect` gathers one row per (backbone, arm, seed); :func:`summarise` turns them into one row per (backbone,
arm) with the mean over seeds and its 95 % t half-width (:func:`easytune_lab.stats.interval`); :func:`paired`
compares a reference arm with every other arm seed by seed (the two runs of one seed share the fine-tuning seed, so
the difference is paired) and gives the verdict of :func:`easytune_lab.stats.verdict`: "better" or "worse" only when
the interval of the difference excludes 0, "no difference measured" otherwise.

The base model has no fine-tuning seed: it is one run, and a difference "arm − base" is taken for every seed of the
arm against that one run.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

from ..stats import interval, verdict

#: T2M metrics and whether a higher value is better (None: no better direction; Diversity is judged by its distance
#: to the ground truth's, which :func:`paired` does not turn into a verdict)
METRICS: dict[str, bool | None] = {
    "r_precision_top1": True, "r_precision_top2": True, "r_precision_top3": True, "fid": False, "mm_dist": False,
    "diversity": None, "oracle_accuracy": True,
}
#: fine-tuning seeds per method by profile: at least 3 wherever methods are compared (smoke: 2, enough to exercise
#: the intervals in CI)
SEEDS = {"smoke": 2, "quick": 3, "paper": 3}
#: training measurements of a fine-tuning run's ``metrics.json`` kept per row
TRAINING = ("peak_bytes", "train_seconds", "optimizer_steps", "reward_before", "reward_after")


def select_arms(arms: Mapping[str, str | None], methods: str,
                reference: str | None = "easytune") -> dict[str, str | None]:
    """The arms whose fine-tuning method is in ``methods`` (comma-separated method names; empty: every arm), plus
    the base model and the ``reference`` method that every arm is compared with. Raises ValueError (one line naming
    ``methods``) for a name that is no arm's method."""
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    known = [m for m in arms.values() if m]
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ValueError(f"methods: unknown method '{unknown[0]}' (choose from {', '.join(known)})")
    if not chosen:
        return dict(arms)
    keep = {*chosen, reference}
    return {arm: method for arm, method in arms.items() if method is None or method in keep}


def run_row(backbone: str, arm: str, method: str | None, seed: int | None, run_name: str, evaluation: Mapping,
            training: Mapping | None = None) -> dict:
    """One row: the arm's T2M metrics (the mean over evaluator replications) and its training measurements;
    ``finetune_seed`` is None for the base model (``seed`` is left to the table writer, which names the notebook's
    seed)."""
    row = {"backbone": backbone, "method": arm, "finetune": method or "", "finetune_seed": seed, "run": run_name}
    for key in METRICS:
        value = evaluation.get(key)
        row[key] = float(value["mean"]) if isinstance(value, Mapping) and value.get("mean") is not None else None
    training = training or {}
    for key in TRAINING:
        row[key] = training.get(key)
    return row


def collect(backbone: str, arms: Mapping[str, str | None], seeds: Sequence[int],
            finetune: Callable[[str, int], object], base: Callable[[], object],
            evaluate: Callable[[object], Mapping], training: Callable[[object], Mapping],
            name: Callable[[object], str] = lambda run: getattr(run, "name", str(run)),
            progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per (arm, seed) on one backbone. ``arms`` maps a row label to a fine-tuning method (None = the
    base model, one row with seed None); ``finetune(method, seed)`` returns a run, ``evaluate(run)`` its T2M metrics,
    ``training(run)`` its training measurements."""
    if not seeds:
        raise ValueError("seeds: at least one fine-tuning seed")
    rows = []
    for arm, method in arms.items():
        for seed in ([None] if method is None else seeds):
            if progress is not None:
                progress(f"{backbone} / {arm}" + ("" if seed is None else f" / seed {seed}"))
            run = base() if method is None else finetune(method, seed)
            rows.append(run_row(backbone, arm, method, seed, name(run), evaluate(run),
                                None if method is None else training(run)))
    return rows


def _groups(rows: Iterable[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["backbone"], row["method"]), []).append(row)
    return groups


def summarise(rows: Iterable[dict], keys: Sequence[str] = (*METRICS, *TRAINING)) -> list[dict]:
    """One row per (backbone, arm), in first-seen order: ``seeds`` (how many), and per key the mean over seeds and
    ``<key>_ci95`` (None with one seed: no interval)."""
    out = []
    for (backbone, arm), group in _groups(rows).items():
        row = {"backbone": backbone, "method": arm, "seeds": len(group)}
        for key in keys:
            values = [r[key] for r in group if r.get(key) is not None]
            if values:
                iv = interval(values)
                row[key], row[key + "_ci95"] = iv["mean"], iv["ci95"]
            else:
                row[key], row[key + "_ci95"] = None, None
        out.append(row)
    return out


def paired(rows: Iterable[dict], reference: str, metrics: Mapping[str, bool | None] = METRICS) -> list[dict]:
    """``reference`` − every other arm, per backbone and metric with a direction: seed by seed (against the base
    model's one run when the other arm is the base), as the mean difference, its 95 % interval and the verdict for
    the reference arm."""
    groups = _groups(rows)
    out = []
    for (backbone, arm), group in groups.items():
        if arm == reference or (backbone, reference) not in groups:
            continue
        ref = {r["finetune_seed"]: r for r in groups[(backbone, reference)]}
        other = {r["finetune_seed"]: r for r in group}
        for metric, higher in metrics.items():
            if higher is None:
                continue
            if list(other) == [None]:          # the base: one run, compared with every seed of the reference
                pairs = [(r[metric], other[None][metric]) for r in ref.values()]
            else:
                pairs = [(ref[s][metric], other[s][metric]) for s in sorted(set(ref) & set(other), key=str)]
            diffs = [a - b for a, b in pairs if a is not None and b is not None]
            if not diffs:
                continue
            iv = interval(diffs)
            out.append({"backbone": backbone, "reference": reference, "other": arm, "metric": metric,
                        "higher_is_better": higher, "seeds": iv["n"], "difference": iv["mean"],
                        "ci95": iv["ci95"], "lo": iv["lo"], "hi": iv["hi"], "verdict": verdict(iv, higher)})
    return out
