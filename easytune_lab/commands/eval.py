"""``easytune eval``: the T2M metrics of ground truth, a sanity baseline or a generator run, with replications."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ..eval.metrics import PROTOCOLS
from ..eval.protocol import (BASELINES, GroundTruth, ProtocolConfig, evaluate, generated_source, generator_source,
                             load_actions, noise_source, oracle_function, repeat_source, shuffled_source)
from ..eval.t2m import parse_evaluator_spec, resolve_evaluator
from ..io import write_json
from ..runs import add_allow_pickle, make_manifest, run_path
from ..runtime import OutputPath, SEED, STEPS_T, check_json_out, integer, real, resolve_device
from .options import renamed


def model_argument(value: str) -> str:
    """``--model``: a baseline word as it is, else a generator run (a path or a name, :func:`run_path`)."""
    return value if value in BASELINES else str(run_path(value))


def evaluator_argument(value: str) -> str:
    """``--evaluator``: ``t2m:DIR`` / ``kit:DIR`` as it is, else an evaluator run (a path or a name)."""
    return value if parse_evaluator_spec(value) is not None else str(run_path(value))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="R-Precision, FID, MM-Dist, Diversity (and MultiModality) with replications")
    p.add_argument("--model", required=True, type=model_argument,
                   help="gt (the real-motion row), noise, repeat or shuffled (sanity baselines), or a generator run "
                        "(path or name)")
    p.add_argument("--evaluator", required=True, type=evaluator_argument,
                   help="run of `easytune evaluator train` (path or name), or the published T2M evaluator: t2m:DIR "
                        "(HumanML3D) / kit:DIR (KIT-ML), DIR holding t2m/ (or kit/) and glove/ as the motion "
                        "repositories' download scripts unpack them")
    p.add_argument("--data", required=True, type=Path, help="HumanML3D-format dataset directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate (test)")
    p.add_argument("--replications", type=integer(1, 10000), default=20, help="replications (T2M: 20)")
    p.add_argument("--multimodality", action="store_true", help="also MultiModality (generator runs only)")
    p.add_argument("--mm-texts", type=integer(1, 10**6), default=100, help="texts with several generations (T2M: 100)")
    p.add_argument("--mm-repeats", type=integer(2, 10000), default=30, help="generations per such text (T2M: 30)")
    p.add_argument("--sampler", default=None, help="generator runs: sampler (default: the run's, e.g. ddim)")
    p.add_argument("--sample-steps", "--steps", dest="sample_steps", type=STEPS_T, default=None,
                   action=renamed("--steps"),
                   help="generator runs: denoising steps T (default: the run's; e.g. 1, 2, 4 for an lcm run; "
                        "--steps: deprecated)")
    p.add_argument("--guidance", type=real(0.0, 100.0), default=None, help="generator runs: guidance scale (default: the run's)")
    p.add_argument("--protocol", default=PROTOCOLS[0], choices=PROTOCOLS,
                   help="t2m: T2M's evaluation loader exactly (random-offset crops, one in three a unit shorter, "
                        "padding to 196 frames, incomplete last group of 32 dropped); legacy: this workbench's "
                        "earlier evaluation (start crops, padding per batch, every row in FID and Diversity)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of caption draws, shuffles, crops and pair sampling")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--out", required=True, type=OutputPath(".json"), help="output .json file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_allow_pickle(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.replications < 1:
        raise UserError(f"--replications: must be at least 1 (got {args.replications})")
    check_json_out(args.out)
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: dataset directory not found")
    if args.mm_texts < 1 or args.mm_repeats < 2:
        raise UserError("--mm-texts/--mm-repeats: need at least 1 text and 2 repeats")
    is_baseline = args.model in BASELINES
    sampling = {"sampler": args.sampler, "steps": args.sample_steps, "guidance": args.guidance}
    if is_baseline and any(v is not None for v in sampling.values()):
        raise UserError(f"--sampler/--sample-steps/--guidance: need a generator run (--model {args.model} samples "
                        "nothing)")
    if args.sample_steps is not None and args.sample_steps < 1:
        raise UserError(f"--sample-steps: must be at least 1 (got {args.sample_steps})")
    if args.multimodality and is_baseline:
        raise UserError(f"--multimodality: needs a generator run (--model {args.model} has one motion per text)")
    device = resolve_device(args.device)
    # resolve the generator before the (slow) evaluator and data loading, so a bad --model fails fast
    generate = None if is_baseline else generator_source(args.model, device, **sampling)
    ev = resolve_evaluator(args.evaluator, device, allow_pickle=args.allow_pickle)
    config = ProtocolConfig(split=args.split, replications=args.replications, multimodality=args.multimodality,
                            mm_texts=args.mm_texts, mm_repeats=args.mm_repeats, seed=args.seed,
                            max_text_len=ev.config.max_text_len, protocol=args.protocol)
    gt = GroundTruth(args.data, args.split, ev, max_text_len=config.max_text_len)
    if args.model == "gt":
        source = gt.source()
    elif args.model == "noise":
        source = noise_source(gt, args.seed)
    elif args.model == "repeat":
        source = repeat_source(gt)
    elif args.model == "shuffled":
        source = shuffled_source(gt)
    else:
        source = generated_source(generate)

    actions = load_actions(args.data)
    oracle = oracle_function() if actions is not None else None
    summary = evaluate(ev, gt, source, config, mm_generate=generate if args.multimodality else None,
                       actions=actions, oracle=oracle, progress=not args.no_progress)
    manifest = make_manifest("eval", config, seed=args.seed, device=str(device),
                             parents={"evaluator": str(args.evaluator)},
                             extra={"model": args.model, "data": str(args.data), "rows": len(gt.motions),
                                    "sampling": {k: v for k, v in sampling.items() if v is not None},
                                    "oracle": "used" if oracle is not None else
                                    ("no oracle module" if actions is not None else "no attributes.jsonl")})
    result = {k: v for k, v in summary.items() if k != "per_replication"}
    result["per_replication"] = summary["per_replication"]
    result["manifest"] = manifest
    write_json(args.out, result)
    line = ", ".join(f"{k} {v['mean']:.3f}±{v['ci95']:.3f}" for k, v in result.items()
                     if isinstance(v, dict) and "mean" in v)
    print(f"eval {args.model}: {line} -> {args.out}")
    return 0
