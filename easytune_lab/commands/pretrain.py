"""``easytune pretrain``: train an MDM-, MLD- or LCM-style backbone on a HumanML3D-format directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a text-to-motion diffusion backbone (checkpoints, --resume)")
    p.add_argument("--backbone", choices=["mdm", "mld", "lcm"], default="mdm",
                   help="mdm: motion-space x0 transformer; mld: VAE + latent ε denoiser; lcm: consistency "
                        "distillation of an mld run (--teacher)")
    p.add_argument("--data", type=Path, required=True, help="HumanML3D-format directory (train split is used)")
    p.add_argument("--profile", default="smoke", help="smoke | quick | paper (model size and step count)")
    p.add_argument("--out", type=Path, required=True, help="run directory to create (or to resume)")
    p.add_argument("--teacher", type=Path, default=None, help="finished mld run to distil (--backbone lcm)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the profile's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the profile's)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps with a checkpoint, as an interruption would (for tests)")
    p.add_argument("--resume", action="store_true", help="continue --out from its last checkpoint")
    p.add_argument("--text-encoder", default=None,
                   help="local directory of a frozen Hugging Face sentence encoder (default: a small "
                        "transformer trained on the dataset vocabulary); never downloaded")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_pretrain)


def load_training_data(root: Path, seed: int):
    """The train split of ``root`` as :class:`~easytune_lab.diffusion.train.PretrainData`."""
    from ..data.humanml import HumanMLDataset, collate_motions
    from ..diffusion.text_encoder import build_text_vocabulary
    from ..diffusion.train import PretrainData

    if not root.is_dir():
        raise UserError(f"--data {root}: dataset directory not found")
    ds = HumanMLDataset(root, split="train", mode="train", seed=seed)
    vocab = build_text_vocabulary(c.text for clip in ds.clips for c in clip.captions)
    return PretrainData(ds, collate_motions, vocab, ds.mean, ds.std, source=str(root))


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ..runs import read_manifest
    from ..runtime import check_profile, resolve_device
    from ..diffusion.train import config_from_dict, pretrain, pretrain_config

    check_profile(args.profile)
    for name in ("steps", "batch_size", "checkpoint_every", "stop_after"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1 (got {value})")
    device = resolve_device(args.device)
    if args.resume:
        manifest = read_manifest(args.out, kind="backbone")
        config = config_from_dict(manifest["config"])
        if config.backbone != args.backbone:
            raise UserError(f"--backbone {args.backbone}: {args.out} is a '{config.backbone}' run")
        if args.steps is not None and args.steps != config.steps:
            raise UserError(f"--steps {args.steps}: {args.out} was started with {config.steps} steps; "
                            "--resume continues the saved configuration")
        seed = config.seed
    else:
        if args.out.exists() and any(args.out.iterdir()):
            raise UserError(f"--out {args.out}: exists and is not empty (use --resume to continue it)")
        seed = args.seed
    data = load_training_data(args.data, seed)
    if not args.resume:
        config = pretrain_config(args.backbone, args.profile, int(data.mean.shape[0]), steps=args.steps,
                                 batch_size=args.batch_size, checkpoint_every=args.checkpoint_every, seed=args.seed)
        if args.text_encoder is not None:
            config.model.text.kind = "pretrained"
            config.model.text.pretrained_path = str(args.text_encoder)
        if args.backbone == "lcm":
            if args.teacher is None:
                raise UserError("--teacher: --backbone lcm distils a finished mld run; name it with --teacher RUN")
            config.teacher = str(args.teacher)
    parents, init = {}, None
    if config.backbone == "lcm":
        from ..diffusion.consistency import teacher_setup

        parents["teacher"] = config.teacher
        init = teacher_setup(config, data)
    metrics = pretrain(config, data, args.out, resume=args.resume, stop_after=args.stop_after, device=device,
                       progress=not args.no_progress, parents=parents, init=init)
    state = "finished" if metrics["complete"] else "stopped (resume with --resume)"
    loss = metrics["final_loss"]
    print(f"{args.out}: {config.backbone} {state} at step {metrics['steps']}/{config.steps}"
          + (f", last logged loss {loss:.4f}" if loss is not None else ""))
    return 0
