"""``easytune finetune``: differentiable-reward fine-tuning with EasyTune or a baseline, one shared loop."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import distributed as dist
from ..data.humanml import load_mean_std
from ..errors import UserError
from ..finetune.choices import GRADIENT_AT, REWARD_SCALES, SCHEDULE_CLOCKS
from ..finetune.methods import METHODS
from ..finetune.policy import TRAIN_STEPS
from ..finetune.presets import PRESETS
from ..finetune.train import finetune_config, run_finetune
from ..reward.retrieval import REWARD_KINDS
from ..runtime import COUNT, COUNT0, OutputPath, SEED, STEPS_T, integer, real
from ..runs import (add_allow_pickle, add_name_argument, read_manifest, read_normalisation, run_path,
                    weights_file)
from .options import renamed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a backbone run against a reward run")
    p.add_argument("--method", required=True, help=f"a registered method: {', '.join(METHODS.names())}")
    p.add_argument("--base", required=True, type=run_path,
                   help="backbone run to fine-tune (easytune pretrain; path or name, see easytune runs)")
    p.add_argument("--reward", required=True, type=run_path,
                   help="reward run (easytune reward train|spl; path or name)")
    p.add_argument("--data", required=True, type=Path, help="dataset directory (captions and lengths)")
    p.add_argument("--profile", default="smoke", help="smoke | quick | paper")
    p.add_argument("--out", required=True, type=OutputPath(directory=True), help="output run directory")
    p.add_argument("--k", type=STEPS_T, default=None, help="DRaFT-K's K / DRTune's number of trainable steps")
    p.add_argument("--iterations", "--steps", dest="iterations", type=COUNT, default=None, action=renamed("--steps"),
                   help="training iterations (trajectories; --steps: deprecated)")
    p.add_argument("--sample-steps", type=STEPS_T, default=None, help="denoising steps T")
    p.add_argument("--sampler", choices=["ddim", "ddpm", "consistency"], default=None)
    p.add_argument("--reward-on", choices=["x0_hat", "x_t"], default=None,
                   help="x0_hat: reward on the predicted clean motion (ODE); x_t: noise-aware reward on x_t")
    p.add_argument("--train-steps", choices=list(TRAIN_STEPS), default=None,
                   help="EasyTune: which steps to train (last: the last --num-train-steps, default 10)")
    p.add_argument("--num-train-steps", type=STEPS_T, default=None,
                   help="EasyTune with --train-steps uniform|last: how many steps carry a gradient")
    p.add_argument("--weighting", choices=["uniform", "early", "late"], default=None)
    p.add_argument("--reg-weight", type=real(0.0, 1e6), default=None, help="regulariser toward the frozen base model")
    p.add_argument("--preset", choices=list(PRESETS.names()), default=None,
                   help="a whole configuration (finetune/presets.py): official = the authors' scripts, fair = equal "
                        "trajectories, schedule in trajectories, each method's tuned lr; flags given override it")
    p.add_argument("--gradient-at", choices=list(GRADIENT_AT), default=None,
                   help="per-step gradients at the live parameters (ours) or at the trajectory's start (authors')")
    p.add_argument("--reward-scale", choices=list(REWARD_SCALES), default=None,
                   help="reward tau*cos (the reward model's scale) or the plain cosine (authors')")
    p.add_argument("--schedule-clock", choices=list(SCHEDULE_CLOCKS), default=None,
                   help="what the LR schedule counts: optimiser steps or trajectories")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None)
    p.add_argument("--warmup", type=integer(0, 10**7), default=None, help="warm-up length, in units of the schedule clock")
    p.add_argument("--guidance", type=real(0.0, 100.0), default=None,
                   help="classifier-free guidance scale inside the fine-tuning trajectories")
    p.add_argument("--lr", type=real(0.0, 1.0, low_open=True), default=None)
    p.add_argument("--batch-size", type=integer(1, 100000), default=None)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--lora-rank", type=integer(0, 4096), default=None,
                   help="LoRA rank r: train only low-rank adapters of the denoiser (0 = full fine-tuning; needs "
                        "pip install easytune_lab[lora])")
    p.add_argument("--lora-alpha", type=real(0.0, 1e6, low_open=True), default=None, help="LoRA alpha (scale alpha/r; default alpha = r)")
    p.add_argument("--evaluator", type=run_path, default=None,
                   help="evaluator run: also score every evaluation with the T2M metrics and the oracle")
    p.add_argument("--eval-every", type=COUNT0, default=None, help="iterations between evaluations (0 = end only)")
    p.add_argument("--eval-motions", type=COUNT0, default=None,
                   help="test clips scored with --evaluator at each evaluation (0 = the whole split)")
    p.add_argument("--checkpoint-every", type=COUNT0, default=None,
                   help="iterations between checkpoints (default: the profile's; 0 = at the end only)")
    p.add_argument("--accumulate", action="store_true",
                   help="one optimiser step (and, under torchrun, one all-reduce) per trajectory: the per-step "
                        "gradients are summed locally instead of stepping after each")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (under torchrun: cuda = one GPU per rank)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint (from the start if it was killed before the first) with the "
                        "same options")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="precision of backbone and reward (float64 for exact comparisons)")
    add_allow_pickle(p)
    add_name_argument(p)
    p.set_defaults(func=cmd_finetune, distributed=True, lock="out")


def check_inputs(base: Path, reward: Path, data: Path, evaluator: Path | None = None) -> None:
    """Everything about the named runs and data that can be checked before a run directory is made."""
    base_manifest = read_manifest(base, kind="backbone", flag="--base")
    if base_manifest.get("status") != "complete" or not weights_file(base).is_file():
        raise UserError(f"--base {base}: the run did not finish (status {base_manifest.get('status')})")
    reward_manifest = read_manifest(reward, flag="--reward")
    if reward_manifest.get("kind") not in REWARD_KINDS:
        raise UserError(f"--reward {reward}: is a '{reward_manifest.get('kind')}' run, expected a reward run")
    if evaluator is not None:
        read_manifest(evaluator, kind="evaluator", flag="--evaluator")
    for split in ("train", "val"):
        if not (data / f"{split}.txt").is_file():
            raise UserError(f"--data {data}: no {split}.txt (not a HumanML3D-format directory)")
    if not (data / "Mean.npy").is_file():
        raise UserError(f"--data {data}: no Mean.npy (not a HumanML3D-format directory)")
    width = int(load_mean_std(data)[0].shape[0])  # Mean/Std as `data check` wants them, or one line
    model_width = base_manifest.get("feature_dim")
    read_normalisation(base, int(model_width) if isinstance(model_width, int) else None)
    if model_width is not None and int(model_width) != width:
        raise UserError(f"--data {data}: {width}-d features (Mean.npy), but --base {base} generates {model_width}-d motions")
    reward_width = reward_manifest.get("config", {}).get("model", {}).get("feat_dim")
    if reward_width is not None and model_width is not None and int(reward_width) != int(model_width):
        raise UserError(f"--reward {reward}: scores {reward_width}-d motions, but --base {base} generates "
                        f"{model_width}-d motions")


def cmd_finetune(args: argparse.Namespace) -> int:
    check_inputs(args.base, args.reward, args.data, args.evaluator)
    backbone = read_manifest(args.base, kind="backbone", flag="--base").get("config", {}).get("backbone")
    cfg = finetune_config(args.method, args.profile, preset=args.preset, backbone=backbone,
                          gradient_at=args.gradient_at,
                          reward_scale=args.reward_scale, schedule_clock=args.schedule_clock,
                          lr_schedule=args.lr_schedule, warmup=args.warmup, guidance=args.guidance,
                          iterations=args.iterations, sample_steps=args.sample_steps,
                          sampler=args.sampler, k=args.k, train_steps=args.train_steps,
                          num_train_steps=args.num_train_steps, weighting=args.weighting, reward_on=args.reward_on,
                          reg_weight=args.reg_weight, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                          lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, eval_every=args.eval_every,
                          eval_motions=args.eval_motions, checkpoint_every=args.checkpoint_every)
    ctx, device = dist.setup(args.device)
    dist.check_divisible(cfg.batch_size, "--batch-size")
    metrics = run_finetune(cfg, args.base, args.reward, args.data, args.out, device, resume=args.resume,
                           progress=not args.no_progress, evaluator=args.evaluator, accumulate=args.accumulate,
                           dtype=args.dtype)
    if not ctx.is_main:
        return 0
    scored = [e for e in metrics["evaluations"] if "fid" in e]  # evaluations with the T2M evaluator
    t2m = "".join(f", {key} {scored[0][key]:.3f} -> {scored[-1][key]:.3f}"
                  for key in ("r_precision_top1", "fid", "oracle_accuracy") if scored and key in scored[-1])
    print(f"{args.method}: reward {metrics['reward_before']:.4f} -> {metrics['reward_after']:.4f}{t2m} "
          f"({metrics['optimizer_steps']} optimiser steps, {metrics['train_seconds']:.1f} s, "
          f"peak {metrics['peak_bytes'] / 2**20:.1f} MiB) -> {args.out}")
    return 0
