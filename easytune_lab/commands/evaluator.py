"""``easytune evaluator train``: train the T2M-style text–motion matching evaluator on a dataset directory."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import torch

from .. import distributed as dist
from ..errors import UserError
from ..eval.evaluator_train import EVALUATOR_SEED, profile_config, train_evaluator
from ..runs import add_name_argument, check_run_out
from ..runtime import COUNT, OutputPath, SECONDS, SEED, check_profile, default_threads
from .options import add_checkpoint_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluator", help="the T2M-style text-motion evaluator behind every metric")
    esub = p.add_subparsers(dest="evaluator_command", metavar="SUBCOMMAND")
    esub.required = True

    t = esub.add_parser("train", help="train the evaluator (writes manifest, weights, vocabulary, val metrics)")
    t.add_argument("--data", required=True, type=Path, help="HumanML3D-format dataset directory")
    t.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    t.add_argument("--out", required=True, type=OutputPath(directory=True),
                   help="run directory to write (must be empty or absent; with --resume: the run to continue)")
    t.add_argument("--seed", type=SEED, default=None,
                   help="seed (default: the evaluator's own fixed seed, distinct from the reward model's)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--loss", choices=["infonce", "margin"], default=None,
                   help="contrastive loss (default infonce; margin = T2M's margin loss)")
    t.add_argument("--epochs", type=COUNT, default=None, help="override the profile's number of epochs")
    t.add_argument("--max-seconds", type=SECONDS, default=None, help="override the profile's training time budget")
    add_checkpoint_options(t)
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_name_argument(t)
    t.set_defaults(func=cmd_train, distributed=True, lock="out")


def cmd_train(args: argparse.Namespace) -> int:
    check_profile(args.profile)
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: dataset directory not found")
    check_run_out(args.out, args.resume)
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs: must be at least 1 (got {args.epochs})")
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise UserError(f"--max-seconds: must be positive (got {args.max_seconds})")
    if not (args.data / "train.txt").is_file():
        raise UserError(f"--data {args.data}: no train.txt (not a HumanML3D-format directory)")
    ctx, device = dist.setup(args.device)
    if device.type == "cpu" and "EASYTUNE_THREADS" in os.environ:
        torch.set_num_threads(default_threads())
    config = profile_config(args.profile)
    overrides = {k: v for k, v in (("loss", args.loss), ("epochs", args.epochs), ("max_seconds", args.max_seconds))
                 if v is not None}
    config = dataclasses.replace(config, **overrides)
    seed = EVALUATOR_SEED if args.seed is None else args.seed
    metrics = train_evaluator(args.data, config, args.out, seed=seed, device=device, progress=not args.no_progress,
                              resume=args.resume, stop_after=args.stop_after, checkpoint_every=args.checkpoint_every)
    if not ctx.is_main:
        return 0
    if not metrics["complete"]:
        print(f"evaluator: stopped after {metrics['epochs_run']}/{config.epochs} epochs with a checkpoint "
              f"(continue with --resume) -> {args.out}")
        return 0
    val = metrics["val"]
    print(f"evaluator: val R-Precision top1 {val['r_precision_top1']:.3f} top3 {val['r_precision_top3']:.3f} "
          f"(chance {val['chance_top1']:.3f}/{val['chance_top3']:.3f}), MM-Dist {val['mm_dist']:.3f}, "
          f"{metrics['epochs_run']} epochs in {metrics['train_seconds']:.0f} s -> {args.out}")
    return 0
