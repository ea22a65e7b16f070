"""``easytune data synth|check|show``: make, validate and look at HumanML3D-format datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.check import check_dataset
from ..data.humanml import read_motion
from ..errors import UserError
from ..motion.synth import generate_dataset
from ..runtime import OutputPath, SEED, integer
from ..viz.playback import write_motion_html


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="procedural dataset, dataset checks, playback of one motion")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    dsub.required = True

    s = dsub.add_parser("synth", help="generate the procedural text-motion dataset (HumanML3D format)")
    s.add_argument("--out", required=True, type=OutputPath(directory=True), help="output directory (must be empty or absent)")
    s.add_argument("--num-motions", type=integer(20, 10**7), default=4000, help="number of motions (default 4000)")
    s.add_argument("--seed", type=SEED, default=0, help="random seed; the same seed gives byte-identical files")
    s.add_argument("--workers", type=integer(1, 1024), default=None, help="worker processes (default: all cores)")
    s.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    s.set_defaults(func=cmd_synth, lock="out")

    c = dsub.add_parser("check", help="report every problem of a HumanML3D/KIT-format directory")
    c.add_argument("dir", type=Path, help="dataset directory")
    c.add_argument("--skeleton", choices=["t2m", "kit"], default=None, help="default: inferred from Mean.npy width")
    c.set_defaults(func=cmd_check)

    v = dsub.add_parser("show", help="write an offline HTML skeleton playback of one motion")
    v.add_argument("dir", type=Path, help="dataset directory")
    v.add_argument("id", help="motion id (file stem in new_joint_vecs/)")
    v.add_argument("--out", required=True, type=OutputPath(".html", ".htm"), help="output .html file")
    v.set_defaults(func=cmd_show)


def cmd_synth(args: argparse.Namespace) -> int:
    if args.num_motions < 20:
        raise UserError(f"--num-motions: must be at least 20 (got {args.num_motions})")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"--out {args.out}: exists and is not an empty directory")
    summary = generate_dataset(args.out, num_motions=args.num_motions, seed=args.seed,
                               workers=args.workers, progress=not args.no_progress)
    print(f"wrote {summary['num_motions']} motions ({summary['num_captions']} captions) to {args.out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    report = check_dataset(args.dir, skeleton=args.skeleton)
    if report.problems:
        for line in report.problems:
            print(line)
        print(f"{args.dir}: {len(report.problems)} problem(s)")
        return 1
    print(report.summary())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() not in {".html", ".htm"}:
        raise UserError(f"--out {args.out}: must end in .html")
    features, captions = read_motion(args.dir, args.id)
    write_motion_html([features], [captions[0] if captions else args.id], args.out, title=f"{args.dir.name}/{args.id}")
    print(f"wrote {args.out}")
    return 0
