"""Choose a method's learning rate on held-out captions with the budget its real runs train for.

For every lr of the grid, the method fine-tunes the profile's ``--backbone`` (the workbench's cached stages, the
profile's SPL reward, its iterations and batch) for ``--seeds`` fine-tuning seeds; the score of an lr is its mean
held-out reward after training (``metrics.json`` ``reward_after``: validation captions, never the test split). The
best lr per method goes into ``MethodSpec.lr`` by hand (``finetune/methods.py``), with the JSON this writes as its
record. The runs are cached, so the chosen lr's runs are the ones notebook 04 evaluates.

    python scripts/tune_lr.py --profile quick --backbone mld --grid easytune=3e-7,1e-6,3e-6,1e-5 \
        --grid draft=6e-5,2e-4,6e-4 --out results/quick/finetune/lr_grid_mld.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from easytune_lab.errors import UserError
from easytune_lab.io import write_json
from easytune_lab.pipeline import workbench
from easytune_lab.stats import interval


def parse_grid(values: list[str]) -> dict[str, list[float]]:
    grid = {}
    for item in values:
        method, _, lrs = item.partition("=")
        try:
            grid[method] = [float(x) for x in lrs.split(",") if x]
        except ValueError:
            raise UserError(f"--grid {item}: expected METHOD=LR,LR,...") from None
        if not method or not grid[method] or min(grid[method]) <= 0:
            raise UserError(f"--grid {item}: expected METHOD=LR,LR,... with positive lrs")
    return grid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="quick")
    p.add_argument("--backbone", default="mld")
    p.add_argument("--grid", action="append", required=True, help="METHOD=LR,LR,... (repeatable)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--cache", default=".cache")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        grid = parse_grid(args.grid)
        wb = workbench(args.profile, cache=args.cache)
        rows = []
        for method, lrs in grid.items():
            for lr in lrs:
                after = []
                for seed in range(args.seeds):
                    start = time.perf_counter()
                    run = wb.finetune(method, backbone=args.backbone, lr=lr, seed=seed)
                    m = json.loads((run / "metrics.json").read_text())
                    after.append(m["reward_after"])
                    print(f"[lr] {method} {lr:g} seed {seed}: held-out reward {m['reward_before']:.3f} -> "
                          f"{m['reward_after']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
                    rows.append({"method": method, "lr": lr, "seed": seed, "run": run.name,
                                 "reward_before": m["reward_before"], "reward_after": m["reward_after"],
                                 "iterations": m.get("iterations"), "train_seconds": m.get("train_seconds")})
        best = {}
        for method, lrs in grid.items():
            scores = {lr: interval([r["reward_after"] for r in rows if r["method"] == method and r["lr"] == lr])
                      for lr in lrs}
            pick = max(lrs, key=lambda lr: scores[lr]["mean"])
            best[method] = {"lr": pick, "mean_reward_after": scores[pick]["mean"],
                            "at_grid_edge": pick in (min(lrs), max(lrs)),
                            "scores": {str(lr): s["mean"] for lr, s in scores.items()}}
            print(f"[lr] best {method}: {pick:g} (held-out reward {scores[pick]['mean']:.3f}"
                  f"{', at the edge of its grid' if best[method]['at_grid_edge'] else ''})")
        write_json(args.out, {"profile": args.profile, "backbone": args.backbone, "seeds": args.seeds,
                              "rule": "highest mean held-out reward (validation captions) after the profile's "
                                      "fine-tuning budget", "best": best, "runs": rows})
    except UserError as exc:
        print(f"tune_lr: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
