"""``easytune reproduce``: the main job behind ``make reproduce``.

Stage 1 (this module today): generate the default procedural dataset (cached by its configuration), validate it
with the same checks as ``easytune data check``, and write a few offline HTML playbacks into ``RESULTS/playback/``
together with ``RESULTS/data/summary.json``. Later stages (evaluator, backbones, reward, fine-tuning, the paper's
claims as notebooks) are appended here as they land.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import UserError
from ..io import write_json
from ..runtime import check_profile

DEFAULT_NUM_MOTIONS = 4000
# Size of the procedural dataset per profile (the paper profile uses the user's real data when given).
PROFILE_NUM_MOTIONS = {"smoke": 200, "quick": DEFAULT_NUM_MOTIONS, "paper": DEFAULT_NUM_MOTIONS}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="the main job: data, checks, playbacks (and every claim as it lands)")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory (default results/)")
    p.add_argument("--cache", type=Path, default=Path(".cache"), help="cache of datasets and trained runs")
    p.add_argument("--data", type=Path, default=None,
                   help="an existing HumanML3D/KIT-format directory to use instead of the procedural dataset")
    p.add_argument("--playbacks", type=int, default=3, help="number of HTML playbacks to write")
    p.set_defaults(func=cmd_reproduce)


def procedural_dataset(cache: Path, num_motions: int, seed: int) -> Path:
    """The procedural dataset for (num_motions, seed), generated once into the cache."""
    from ..motion.synth import generate_dataset

    root = cache / "data" / f"procedural-n{num_motions}-seed{seed}"
    if (root / "dataset.json").is_file():
        print(f"[data] reusing {root}")
        return root
    if root.exists():
        raise UserError(f"{root}: exists but holds no dataset.json (remove it and re-run)")
    start = time.perf_counter()
    generate_dataset(root, num_motions=num_motions, seed=seed)
    print(f"[data] generated {num_motions} motions into {root} in {time.perf_counter() - start:.1f} s")
    return root


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset
    from ..data.humanml import read_motion
    from ..viz.playback import write_motion_html

    check_profile(args.profile)
    if args.data is not None:
        root = args.data
    else:
        root = procedural_dataset(args.cache, PROFILE_NUM_MOTIONS[args.profile], args.seed)

    report = check_dataset(root)
    if report.problems:
        for line in report.problems:
            print(line)
        raise UserError(f"{root}: dataset check found {len(report.problems)} problem(s)")
    print(report.summary())

    results = args.results
    test_ids = [line.strip() for line in (root / "test.txt").read_text().splitlines() if line.strip()]
    written = []
    for motion_id in test_ids[: args.playbacks]:
        features, captions = read_motion(root, motion_id)
        out = results / "playback" / f"{motion_id}.html"
        write_motion_html([features], [captions[0] if captions else motion_id], out, title=f"{root.name}/{motion_id}")
        written.append({"id": motion_id, "caption": captions[0] if captions else "", "html": str(out)})
        print(f"[playback] {out}")

    dataset_info = {}
    if (root / "dataset.json").is_file():
        dataset_info = json.loads((root / "dataset.json").read_text())
    write_json(results / "data" / "summary.json", {
        "dataset": str(root),
        "profile": args.profile,
        "generator": dataset_info,
        "check": report.as_dict() if hasattr(report, "as_dict") else {"problems": 0},
        "playbacks": written,
    })
    return 0
