"""``easytune pretrain``: train an MDM-, MLD- or LCM-style backbone on a HumanML3D-format directory."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .. import distributed as dist
from ..diffusion.registry import BACKBONES, backbone_spec
from ..diffusion.train import check_world, config_from_dict, pretrain, pretrain_config
from ..diffusion.training_data import load_training_data
from ..errors import UserError
from ..runs import (add_allow_pickle, add_name_argument, check_model_dir, check_resume_parents, manifest_config,
                    never_started, read_manifest, run_path)
from ..runtime import COUNT, OutputPath, SEED, check_profile, integer, real
from .options import renamed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a text-to-motion diffusion backbone (checkpoints, --resume)")
    p.add_argument("--backbone", default="mdm",
                   help=f"a registered backbone: {', '.join(BACKBONES.names())} (mdm: motion-space x0 transformer; "
                        "mld: VAE + latent ε denoiser; lcm: consistency distillation of a trained mld, see --teacher)")
    p.add_argument("--data", type=Path, required=True, help="HumanML3D-format directory (train split is used)")
    p.add_argument("--profile", default="smoke", help="smoke | quick | paper (model size and step count)")
    p.add_argument("--out", type=OutputPath(directory=True), required=True, help="run directory to create (or to resume)")
    p.add_argument("--teacher", type=run_path, default=None,
                   help="finished run to distil, for a backbone that has a teacher (lcm: an mld run; path or name)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--iterations", "--steps", dest="iterations", type=COUNT, default=None, action=renamed("--steps"),
                   help="training iterations, i.e. optimiser steps (default: the profile's; --steps: deprecated)")
    p.add_argument("--batch-size", type=integer(1, 100000), default=None, help="batch size (default: the profile's)")
    p.add_argument("--checkpoint-every", type=COUNT, default=None, help="iterations between checkpoints")
    p.add_argument("--stop-after", type=COUNT, default=None,
                   help="stop after this many iterations with a checkpoint, as an interruption would (for tests)")
    p.add_argument("--resume", action="store_true",
                   help="continue --out from its last checkpoint (from the start if it was killed before the "
                        "first); the saved configuration is kept")
    p.add_argument("--text-encoder", default=None,
                   help="local directory of a frozen Hugging Face sentence encoder (default: a small "
                        "transformer trained on the dataset vocabulary); never downloaded")
    p.add_argument("--dropout", type=real(0.0, 1.0, high_open=True), default=None,
                   help="dropout of the backbone's layers (default: the profile's; 0 makes multi-process runs "
                        "reproduce a single process exactly)")
    p.add_argument("--accumulate", type=integer(1, 10000), default=None,
                   help="batches whose gradients are summed per optimiser step (default 1; under torchrun they "
                        "are all-reduced once per step)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="parameter precision (default float32; float64 for exact comparisons)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (under torchrun: cuda = one GPU per rank)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_allow_pickle(p)
    add_name_argument(p)
    p.set_defaults(func=cmd_pretrain, distributed=True, lock="out")


def _set_dropout(config, dropout: float) -> None:
    """Set every dropout probability of the backbone's config (model, text encoder, VAE)."""
    def visit(obj) -> None:
        if not dataclasses.is_dataclass(obj):
            return
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name == "dropout" and isinstance(value, float):
                setattr(obj, f.name, float(dropout))
            else:
                visit(value)

    visit(config.model)


def cmd_pretrain(args: argparse.Namespace) -> int:
    check_profile(args.profile)
    spec = backbone_spec(args.backbone)
    for name in ("iterations", "batch_size", "checkpoint_every", "stop_after", "accumulate"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1 (got {value})")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise UserError(f"--dropout: must be in [0, 1) (got {args.dropout})")
    if args.teacher is not None and spec.teacher is None:
        raise UserError(f"--teacher: --backbone {args.backbone} distils no teacher (only a backbone that has one, "
                        f"e.g. lcm)")
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: dataset directory not found")
    resume = args.resume and not never_started(args.out)  # killed before its manifest: start afresh
    if resume:
        manifest = read_manifest(args.out, kind="backbone")
        with manifest_config(args.out):
            config = config_from_dict(manifest["config"])
        if config.backbone != args.backbone:
            raise UserError(f"--backbone {args.backbone}: {args.out} is a '{config.backbone}' run")
        if args.iterations is not None and args.iterations != config.steps:
            raise UserError(f"--iterations {args.iterations}: {args.out} was started with {config.steps} "
                            "iterations; --resume continues the saved configuration")
        check_resume_parents(args.out, manifest, {"data": args.data,
                                                  **({"teacher": args.teacher} if args.teacher is not None else {})})
        seed = config.seed
        training = manifest.get("training", {})
        for name, default in (("accumulate", 1), ("dtype", "float32")):
            given, saved = getattr(args, name), training.get(name, default)
            if given is not None and given != saved:
                raise UserError(f"--{name} {given}: {args.out} was started with {saved}; "
                                "--resume continues the saved configuration")
            setattr(args, name, saved)
    else:
        if args.out.exists() and (not args.out.is_dir() or not never_started(args.out)):
            raise UserError(f"--out {args.out}: exists and is not empty (use --resume to continue it)")
        seed = args.seed
    if args.text_encoder is not None:
        check_model_dir(args.text_encoder, "--text-encoder")
    ctx, device = dist.setup(args.device)
    data = load_training_data(args.data, seed)
    width = int(data.mean.shape[0])
    if resume:
        saved = manifest.get("feature_dim")
        if saved is not None and int(saved) != width:
            raise UserError(f"--data {args.data}: {width}-d features (Mean.npy), but {args.out} was trained on {saved}-d")
    else:
        if spec.teacher is not None and args.teacher is None:
            raise UserError(f"--teacher: --backbone {args.backbone} distils a finished {spec.teacher} run; name it "
                            "with --teacher RUN")
        config = pretrain_config(args.backbone, args.profile, width, steps=args.iterations,
                                 batch_size=args.batch_size, checkpoint_every=args.checkpoint_every, seed=args.seed,
                                 teacher=str(args.teacher) if args.teacher is not None else None)
        if args.dropout is not None:
            _set_dropout(config, args.dropout)
        if args.text_encoder is not None:
            config.model.text.kind = "pretrained"
            config.model.text.pretrained_path = str(args.text_encoder)
    parents, init = {}, None
    if spec.teacher is not None:
        parents["teacher"] = config.teacher
    if spec.setup is not None:
        init = spec.setup(config, data)
    check_world(config, len(data.dataset))
    metrics = pretrain(config, data, args.out, resume=resume, stop_after=args.stop_after, device=device,
                       progress=not args.no_progress, parents=parents, init=init,
                       accumulate=args.accumulate or 1, dtype=args.dtype or "float32")
    state = "finished" if metrics["complete"] else "stopped (resume with --resume)"
    loss = metrics["final_loss"]
    if ctx.is_main:
        print(f"{args.out}: {config.backbone} {state} at step {metrics['steps']}/{config.steps}"
              + (f", last logged loss {loss:.4f}" if loss is not None else "")
              + (f" ({ctx.world_size} processes)" if ctx.active else ""))
    return 0
