"""``easytune sample``: generate motions from text with a pretrained backbone run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..diffusion.generate import load_generator
from ..diffusion.text_encoder import TextConditioner
from ..errors import UserError
from ..io import write_npy
from ..runs import add_allow_pickle, run_path
from ..runtime import OutputPath, SEED, STEPS_T, integer, real
from ..viz.playback import write_motion_html
from .options import renamed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate motions for captions with a backbone run (.npy or .html)")
    p.add_argument("--run", type=run_path, required=True,
                   help="finished `easytune pretrain` or `finetune` run (path or name)")
    p.add_argument("--text", action="append", required=True, help="caption (repeat for several)")
    p.add_argument("--num", type=integer(1, 10000), default=1, help="samples per caption (default 1)")
    p.add_argument("--length", type=integer(4, 1000), default=120, help="frames at 20 fps, multiple of 4, <= 196 (default 120)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "consistency"], default=None,
                   help="default: the backbone's (mdm: ddpm, mld: ddim, lcm: consistency)")
    p.add_argument("--sample-steps", "--steps", dest="sample_steps", type=STEPS_T, default=None,
                   action=renamed("--steps"), help="denoising steps T (default: the backbone's; --steps: deprecated)")
    p.add_argument("--guidance", type=real(0.0, 100.0), default=None, help="classifier-free guidance scale")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", type=OutputPath(".npy", ".html", ".htm"), required=True,
                   help=".npy: (N, length, D) de-normalised features; .html: offline skeleton playback")
    add_allow_pickle(p)
    p.set_defaults(func=cmd_sample)


def warn_unknown_words(backbone, texts: list[str]) -> list[str]:
    """One warning (stderr) naming the caption words the backbone's text encoder does not know: each is read as
    ``<unk>``, so the motion ignores it. Returns those words."""
    encoders = [m for m in backbone.modules() if isinstance(m, TextConditioner)]
    unknown = encoders[0].unknown_words(texts) if encoders else []
    if unknown:
        size = len(encoders[0].vocab)
        print(f"easytune: warning: --text: {len(unknown)} word(s) not in the run's vocabulary ({size} tokens), read "
              f"as <unk>: {', '.join(unknown)}", file=sys.stderr)
    return unknown


def cmd_sample(args: argparse.Namespace) -> int:
    suffix = args.out.suffix.lower()
    if suffix not in {".npy", ".html", ".htm"}:
        raise UserError(f"--out {args.out}: must end in .npy or .html")
    if args.num < 1:
        raise UserError(f"--num: must be >= 1 (got {args.num})")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise UserError(f"--sample-steps: must be >= 1 (got {args.sample_steps})")
    gen = load_generator(args.run, args.device)
    warn_unknown_words(gen.backbone, args.text)
    texts = [t for t in args.text for _ in range(args.num)]
    motions = gen.generate(texts, [args.length] * len(texts), seed=args.seed, sampler=args.sampler,
                           steps=args.sample_steps, guidance=args.guidance)
    if suffix == ".npy":
        write_npy(args.out, np.stack(motions).astype(np.float32))
    else:
        write_motion_html(motions, texts, args.out, title=f"{args.run.name}: {gen.config.backbone}")
    print(f"wrote {len(motions)} motion(s) of {motions[0].shape[0]} frames to {args.out}")
    return 0
