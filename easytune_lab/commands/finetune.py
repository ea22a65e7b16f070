"""``easytune finetune``: differentiable-reward fine-tuning with EasyTune or a baseline, one shared loop."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from ..finetune.policy import POLICIES

    p = sub.add_parser("finetune", help="fine-tune a backbone run against a reward run")
    p.add_argument("--method", required=True, help=f"one of: {', '.join(POLICIES)}")
    p.add_argument("--base", required=True, type=Path, help="backbone run to fine-tune (easytune pretrain)")
    p.add_argument("--reward", required=True, type=Path, help="reward run (easytune reward train|spl)")
    p.add_argument("--data", required=True, type=Path, help="dataset directory (captions and lengths)")
    p.add_argument("--profile", default="smoke", help="smoke | quick | paper")
    p.add_argument("--out", required=True, type=Path, help="output run directory")
    p.add_argument("--k", type=int, default=None, help="DRaFT-K's K / DRTune's number of trainable steps")
    p.add_argument("--steps", type=int, default=None, help="iterations (trajectories) to train")
    p.add_argument("--sample-steps", type=int, default=None, help="denoising steps T")
    p.add_argument("--sampler", choices=["ddim", "ddpm", "consistency"], default=None)
    p.add_argument("--reward-on", choices=["x0_hat", "x_t"], default=None,
                   help="x0_hat: reward on the predicted clean motion (ODE); x_t: noise-aware reward on x_t")
    p.add_argument("--train-steps", choices=["all", "uniform", "weighted"], default=None,
                   help="EasyTune: which steps to train")
    p.add_argument("--weighting", choices=["uniform", "early", "late"], default=None)
    p.add_argument("--reg-weight", type=float, default=None, help="regulariser toward the frozen base model")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lora-rank", type=int, default=None,
                   help="LoRA rank r: train only low-rank adapters of the denoiser (0 = full fine-tuning; needs "
                        "pip install easytune_lab[lora])")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (scale alpha/r; default alpha = r)")
    p.add_argument("--evaluator", type=Path, default=None,
                   help="evaluator run: also score every evaluation with the T2M metrics and the oracle")
    p.add_argument("--eval-every", type=int, default=None, help="iterations between evaluations (0 = end only)")
    p.add_argument("--eval-motions", type=int, default=None,
                   help="test clips scored with --evaluator at each evaluation (0 = the whole split)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..finetune.train import finetune_config, run_finetune
    from ..runtime import resolve_device
    from ..runs import read_manifest

    cfg = finetune_config(args.method, args.profile, iterations=args.steps, sample_steps=args.sample_steps,
                          sampler=args.sampler, k=args.k, train_steps=args.train_steps, weighting=args.weighting,
                          lr=args.lr, batch_size=args.batch_size, seed=args.seed, lora_rank=args.lora_rank,
                          lora_alpha=args.lora_alpha, eval_every=args.eval_every, eval_motions=args.eval_motions)
    if args.reward_on:
        cfg.loop.reward_on = args.reward_on
    if args.reg_weight is not None:
        if args.reg_weight < 0:
            raise UserError(f"--reg-weight: must be >= 0 (got {args.reg_weight})")
        cfg.loop.reg_weight = args.reg_weight
    read_manifest(args.base, kind="backbone")
    read_manifest(args.reward)
    if args.evaluator is not None:
        read_manifest(args.evaluator, kind="evaluator")
    if not (args.data / "train.txt").is_file():
        raise UserError(f"--data {args.data}: no train.txt (not a HumanML3D-format directory)")
    device = resolve_device(args.device)
    metrics = run_finetune(cfg, args.base, args.reward, args.data, args.out, device, resume=args.resume,
                           progress=not args.no_progress, evaluator=args.evaluator)
    scored = [e for e in metrics["evaluations"] if "fid" in e]  # evaluations with the T2M evaluator
    t2m = "".join(f", {key} {scored[0][key]:.3f} -> {scored[-1][key]:.3f}"
                  for key in ("r_precision_top1", "fid", "oracle_accuracy") if scored and key in scored[-1])
    print(f"{args.method}: reward {metrics['reward_before']:.4f} -> {metrics['reward_after']:.4f}{t2m} "
          f"({metrics['optimizer_steps']} optimiser steps, {metrics['train_seconds']:.1f} s, "
          f"peak {metrics['peak_bytes'] / 2**20:.1f} MiB) -> {args.out}")
    return 0
