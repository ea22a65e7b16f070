"""``easytune runs``: the cached and named runs, so a backbone or reward can be picked without reading manifests.

Every option that takes a run (``--base``, ``--reward``, ``--run``, ``--evaluator``, ``--teacher``, ``--init``,
``--model``) accepts a name from this list as well as a path: a name given with ``--name`` when the run was trained,
or a cached run's folder name (:func:`easytune_lab.runs.resolve_run`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError
from ..runs import cache_root, list_runs, write_tensorboard

COLUMNS = ("name", "stage", "what", "profile", "seed", "options", "status", "age", "path")
HEADERS = {"what": "backbone/method"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the cached and named runs (stage, backbone or method, profile, status, path)")
    p.add_argument("--cache", type=Path, default=None,
                   help="cache whose runs/ and names.json are listed (default: $EASYTUNE_CACHE or the project's .cache)")
    p.add_argument("--stage", default=None, help="only runs of this stage (backbone, reward, finetune, evaluator, ...)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--tensorboard", action="store_true",
                   help="(re)write every listed run's curves as TensorBoard event files (needs the tb extra)")
    p.set_defaults(func=cmd_runs)


def format_table(rows: list[dict]) -> str:
    """Rows as aligned text columns (the last column, the path, is not padded)."""
    header = [HEADERS.get(c, c) for c in COLUMNS]
    cells = [header] + [[str(r.get(c, "")) or "-" for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in cells)


def cmd_runs(args: argparse.Namespace) -> int:
    cache = args.cache or cache_root()
    rows = list_runs(cache)
    if args.stage:
        rows = [r for r in rows if r["stage"] == args.stage]
    if args.tensorboard:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise UserError('--tensorboard: the tensorboard package is not installed (pip install "easytune_lab[tb]")') \
                from None
        written = [p for p in (write_tensorboard(r["path"]) for r in rows if r["status"] == "complete") if p]
        print(f"wrote TensorBoard curves of {len(written)} run(s); view them with: tensorboard --logdir {cache / 'runs'}")
        return 0
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no runs in {cache} (train one with --name NAME, or run a notebook / `easytune reproduce`)")
    else:
        print(format_table(rows))
    return 0
