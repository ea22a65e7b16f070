"""Fingerprint of every smoke-profile stage, to check that a refactor changes no behaviour.

    python scripts/behaviour_fingerprint.py --cache /tmp/fp-cache --out before.json
    python scripts/behaviour_fingerprint.py --cache /tmp/fp-cache2 --out after.json --compare before.json

Builds (into ``--cache``, which should start empty) the smoke data, evaluator, the three backbones, the three
rewards, a fine-tuning run of every method on MDM plus EasyTune on MLD and LCM, and T2M evaluations of the base and
two tuned models. For each run it records every number of ``metrics.json`` (times and memory left out) and, for
every tensor of every ``*.safetensors`` file, its float64 sum and sum of squares. ``--compare`` prints the largest
absolute difference per stage and exits 1 when any exceeds ``--tol`` (default 1e-6, relative to max(1, |value|)).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

SKIP = ("seconds", "time", "memory", "mib", "bytes", "elapsed", "wall", "throughput", "per_second", "eta", "created",
        "date", "pid", "host", "path", "dir", "git", "version")


def _numbers(obj, prefix=""):
    if isinstance(obj, bool):
        return {}
    if isinstance(obj, (int, float)):
        return {prefix: float(obj)}
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if any(s in str(k).lower() for s in SKIP):
                continue
            out.update(_numbers(v, f"{prefix}/{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{prefix}[{i}]"))
    return out


def fingerprint_run(run: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for metrics in sorted(run.rglob("metrics.json")):
        out.update({f"{metrics.relative_to(run)}{k}": v for k, v in _numbers(json.loads(metrics.read_text())).items()})
    for path in sorted(run.rglob("*.safetensors")):
        for name, t in sorted(load_file(str(path)).items()):
            t = t.double()
            out[f"{path.relative_to(run)}:{name}:sum"] = float(t.sum())
            out[f"{path.relative_to(run)}:{name}:sq"] = float((t * t).sum())
    return out


def build(cache: Path) -> dict:
    import torch

    from easytune_lab.pipeline import workbench

    torch.set_num_threads(1)
    wb = workbench("smoke", seed=0, device="cpu", cache=cache)
    stages = {"evaluator": wb.evaluator}
    for kind in ("mdm", "mld", "lcm"):
        stages[f"backbone-{kind}"] = wb.backbone(kind)
    stages["reward"] = wb.reward()
    stages["reward-spl"] = wb.reward(spl=True)
    stages["reward-noise-aware"] = wb.reward(noise_aware=True)
    for method in ("easytune", "easytune-chain", "draft", "draft-lv", "alignprop", "drtune", "refl"):
        stages[f"finetune-{method}"] = wb.finetune(method)
    stages["finetune-easytune-last"] = wb.finetune("easytune", train_steps="last", num_train_steps=3)
    stages["finetune-easytune-mld"] = wb.finetune("easytune", backbone="mld")
    stages["finetune-easytune-lcm"] = wb.finetune("easytune", backbone="lcm")
    result = {name: fingerprint_run(run) for name, run in stages.items()}
    for name in ("backbone-mdm", "finetune-easytune", "finetune-draft"):
        result[f"eval:{name}"] = _numbers(wb.evaluation(stages[name]))
    result["eval:gt"] = _numbers(wb.evaluation("gt"))
    return result


def compare(now: dict, before: dict, tol: float) -> int:
    worst_all = 0.0
    for stage in sorted(set(now) | set(before)):
        a, b = now.get(stage), before.get(stage)
        if a is None or b is None:
            print(f"{stage}: only in {'before' if a is None else 'now'}")
            worst_all = math.inf
            continue
        keys = set(a) | set(b)
        missing = [k for k in keys if k not in a or k not in b]
        worst, where = 0.0, ""
        for k in keys - set(missing):
            d = abs(a[k] - b[k]) / max(1.0, abs(b[k]))
            if not (d <= worst):
                worst, where = d, k
        print(f"{stage}: {len(keys)} numbers, largest relative difference {worst:.3g} {where}"
              + (f", {len(missing)} keys in one only (e.g. {missing[0]})" if missing else ""))
        worst_all = max(worst_all, worst, math.inf if missing else 0.0)
    print(f"largest difference {worst_all:.3g} (tolerance {tol:g})")
    return 0 if worst_all <= tol else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--compare", type=Path)
    p.add_argument("--tol", type=float, default=1e-6)
    args = p.parse_args()
    result = build(args.cache)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        return compare(result, json.loads(args.compare.read_text()), args.tol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
