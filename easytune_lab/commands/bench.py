"""``easytune bench memory|speed|paper|throughput``: the fine-tuning methods side by side in one process."""

from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import UserError
from ..finetune.bench import ACCUMULATE_SUFFIX, SPEEDUP_PAIRS, memory_benchmark, speed_benchmark, speedup, split_variant
from ..finetune.methods import METHODS
from ..finetune.paper_check import paper_check, summary_lines
from ..finetune.throughput import TRAJECTORIES, throughput_benchmark
from ..io import write_json
from ..runtime import (COUNT, OutputPath, SECONDS, SEED, available_cores, check_json_out, check_profile, integer,
                       parse_int_list, reference_path, resolve_device)
from ..runs import add_allow_pickle, run_path
from .finetune import check_inputs
from .options import renamed


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", required=True, help="comma-separated methods, e.g. easytune,draft")
    p.add_argument("--base", required=True, type=run_path, help="backbone run (path or name)")
    p.add_argument("--reward", required=True, type=run_path, help="reward run (path or name)")
    p.add_argument("--data", required=True, type=Path, help="dataset directory")
    p.add_argument("--profile", default="smoke", help="smoke | quick | paper")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, type=OutputPath(".json"), help="output JSON file")
    add_allow_pickle(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="memory and speed benchmarks of the fine-tuning methods")
    bsub = p.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    bsub.required = True
    m = bsub.add_parser("memory", help="peak training memory per method and number of denoising steps")
    _common(m)
    m.add_argument("--sample-steps", "--steps", dest="sample_steps", required=True, action=renamed("--steps"),
                   help="comma-separated numbers of denoising steps T, e.g. 10,50,100 (--steps: deprecated)")
    m.add_argument("--batch-size", type=integer(1, 100000), default=2)
    m.add_argument("--length", type=integer(4, 1000), default=None, help="frames of every motion (default: ground-truth lengths)")
    m.set_defaults(func=cmd_memory)
    s = bsub.add_parser("speed", help="reward reached against wall time and optimiser steps")
    _common(s)
    s.add_argument("--budget-seconds", required=True, type=SECONDS, help="training time per method")
    s.add_argument("--lrs", action="append", default=[], metavar="[METHOD=]LR,LR,...",
                   help="learning-rate grid, for every method or (repeatable) for one: each lr is its own curve, "
                        "and methods are compared at their best (default: the profile's lr)")
    s.add_argument("--eval-every", type=COUNT, default=1, help="trajectories between held-out reward evaluations")
    s.epilog = ("A method written METHOD+acc (e.g. easytune+acc) runs as its own curve with its per-step gradients "
                "summed into one optimiser step per trajectory.")
    s.set_defaults(func=cmd_speed)
    t = bsub.add_parser("throughput", help="seconds per trajectory of every method against the sampling-only "
                                           "floor, the denoiser's passes, a pretraining step, evaluator embedding")
    t.add_argument("--profile", default="smoke", help="smoke | quick | paper")
    t.add_argument("--out", required=True, type=OutputPath(".json"), help="output JSON file")
    t.add_argument("--base", type=run_path, default=None,
                   help="backbone run (default: the profile's MDM at its initialisation; needs --reward too)")
    t.add_argument("--reward", type=run_path, default=None, help="reward run (default: initialisation)")
    t.add_argument("--data", type=Path, default=None,
                   help="dataset directory for captions, lengths and motions (default: 200 procedural motions)")
    t.add_argument("--evaluator", type=run_path, default=None, help="evaluator run (default: initialisation)")
    t.add_argument("--trajectories", default=None,
                   help="comma-separated trajectories to time (default: all of easytune, easytune-last10, draft, "
                        "draft-lv, alignprop, drtune, refl, easytune-chain)")
    t.add_argument("--repeats", type=integer(1, 100), default=3, help="timed runs per measurement (median reported)")
    t.add_argument("--threads", type=integer(1, 1024), default=None,
                   help="torch CPU threads per process (default: torch's own; with --processes N: cores / N)")
    t.add_argument("--processes", type=integer(1, 64), default=1,
                   help="run the benchmark in N processes at once (what reproduce --jobs N does) and report their "
                        "combined trajectories per second (default 1)")
    t.add_argument("--compile", action="store_true",
                   help="opt-in: torch.compile the denoiser (eager after one warning line where unavailable)")
    t.add_argument("--reference-path", action="store_true",
                   help="without the measured speed-ups (runtime.FAST_PATHS), i.e. the previous code path")
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_allow_pickle(t)
    t.set_defaults(func=cmd_throughput)
    g = bsub.add_parser("paper", help="the one prepared device check: memory vs T, trajectory and training-step "
                                      "times, EasyTune vs DRaFT-50 reward curve, in one JSON naming the device")
    for flag, kwargs in (("--base", dict(required=True, type=run_path, help="backbone run (path or name)")),
                         ("--reward", dict(required=True, type=run_path, help="reward run (path or name)")),
                         ("--data", dict(required=True, type=Path, help="dataset directory")),
                         ("--profile", dict(default="paper", help="smoke | quick | paper (default: paper)")),
                         ("--seed", dict(type=SEED, default=0)),
                         ("--device", dict(default="auto")),
                         ("--out", dict(required=True, type=OutputPath(".json"), help="output JSON file"))):
        g.add_argument(flag, **kwargs)
    g.add_argument("--sample-steps", "--steps", dest="sample_steps", default="10,20,50", action=renamed("--steps"),
                   help="numbers of denoising steps T for the memory rows (10,20,50; --steps: deprecated)")
    g.add_argument("--batch-size", type=integer(1, 100000), default=8, help="captions per trajectory and training step (8)")
    g.add_argument("--length", type=integer(0, 1000), default=196,
                   help="frames of every motion (196, capped at the backbone's maximum; 0: ground-truth lengths)")
    g.add_argument("--curve-seconds", type=SECONDS, default=60.0,
                   help="training seconds of each reward curve, EasyTune and DRaFT-50 (60)")
    g.add_argument("--eval-captions", type=COUNT, default=32, help="held-out captions of the reward curve (32)")
    g.add_argument("--no-progress", action="store_true", help="hide the progress output")
    add_allow_pickle(g)
    g.set_defaults(func=cmd_paper)


def parse_methods(text: str, variants: bool = False) -> list[str]:
    """Comma-separated method names; with ``variants`` also ``METHOD+acc`` (updates accumulated per trajectory)."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise UserError("--methods: empty list")
    for m in methods:
        name = split_variant(m)[0] if variants else m
        if name not in METHODS:
            extra = f", each optionally with '{ACCUMULATE_SUFFIX}'" if variants else ""
            raise UserError(f"--methods: unknown method '{m}' (choose from {', '.join(METHODS.names())}{extra})")
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods: a method is listed twice in '{text}'")
    return methods


def parse_steps(text: str) -> list[int]:
    return parse_int_list(text, "--sample-steps", 1, 1000)


def parse_lrs(specs: list[str], methods: list[str]) -> dict[str, list[float]]:
    """``--lrs 1e-6,1e-5`` (every method) or ``--lrs draft=2e-6,2e-5`` (one method), repeatable."""
    grids: dict[str, list[float]] = {}
    for spec in specs:
        method, _, values = spec.rpartition("=") if "=" in spec else ("*", "", spec)
        method = method.strip() or "*"
        if method != "*" and method not in methods:
            raise UserError(f"--lrs {spec}: method '{method}' is not in --methods ({', '.join(methods)})")
        try:
            lrs = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--lrs {spec}: not a comma-separated list of learning rates") from None
        if not lrs or any(not lr > 0 for lr in lrs):
            raise UserError(f"--lrs {spec}: every learning rate must be positive")
        if method in grids:
            raise UserError(f"--lrs: two grids for {'every method' if method == '*' else method}")
        grids[method] = lrs
    return grids


def cmd_memory(args: argparse.Namespace) -> int:
    methods, steps = parse_methods(args.methods), parse_steps(args.sample_steps)
    check_profile(args.profile)
    check_json_out(args.out)
    check_inputs(args.base, args.reward, args.data)
    device = resolve_device(args.device)
    rows = memory_benchmark(methods, steps, args.profile, args.base, args.reward, args.data, device,
                            seed=args.seed, batch_size=args.batch_size, length=args.length)
    write_json(args.out, {"results": rows})
    for r in rows:
        print(f"{r['method']:>15s} T={r['steps']:<5d} peak {r['peak_bytes'] / 2**20:9.2f} MiB "
              f"(baseline {r['baseline_bytes'] / 2**20:.2f} MiB)")
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods, variants=True)
    check_profile(args.profile)
    check_json_out(args.out)
    check_inputs(args.base, args.reward, args.data)
    if args.budget_seconds <= 0:
        raise UserError(f"--budget-seconds: must be positive (got {args.budget_seconds})")
    if args.eval_every < 1:
        raise UserError(f"--eval-every: must be at least 1 (got {args.eval_every})")
    lrs = parse_lrs(args.lrs, methods)
    device = resolve_device(args.device)
    result = speed_benchmark(methods, args.budget_seconds, args.profile, args.base, args.reward, args.data, device,
                             seed=args.seed, lrs=lrs, eval_every=args.eval_every)
    for fast, slow in SPEEDUP_PAIRS:
        if fast in methods and slow in methods:
            result[f"{fast}_vs_{slow}"] = speedup(result, fast=fast, slow=slow)
    write_json(args.out, result)
    for m, c in result["curves"].items():
        print(f"{m:>18s} (lr {c['lr']:g}) reward {c['reward'][0]:.4f} -> {c['reward'][-1]:.4f} "
              f"in {c['seconds'][-1]:.1f} s, {c['optimizer_steps'][-1]} optimiser steps")
    for key in (f"{fast}_vs_{slow}" for fast, slow in SPEEDUP_PAIRS):
        if key in result:
            print(f"{key.replace('_', ' ')}: {result[key]}")
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    check_profile(args.profile)
    check_json_out(args.out)
    steps = parse_steps(args.sample_steps)
    if 0 < args.length < 4:
        raise UserError(f"--length: a motion needs at least 4 frames (got {args.length})")
    check_inputs(args.base, args.reward, args.data)
    device = resolve_device(args.device)
    result = paper_check(args.profile, args.base, args.reward, args.data, device, args.out, steps=steps,
                         batch_size=args.batch_size, length=args.length or None, curve_seconds=args.curve_seconds,
                         eval_captions=args.eval_captions, seed=args.seed, progress=not args.no_progress)
    for line in summary_lines(result):
        print(line)
    print(f"-> {args.out}")
    return 0


def _throughput_process(kwargs: dict, threads: int, reference: bool) -> dict:
    torch.set_num_threads(threads)
    with reference_path() if reference else nullcontext():
        return throughput_benchmark(**kwargs)


def concurrent_throughput(kwargs: dict, processes: int, threads: int, reference: bool = False) -> dict:
    """:func:`~easytune_lab.finetune.throughput.throughput_benchmark` in ``processes`` spawned processes at once,
    ``threads`` torch threads each: every process's result, and per measurement the processes' seconds and their
    combined rate (sum over processes of 1 / seconds; "per_second"). The processes start together and run the same
    measurements in the same order, so they overlap throughout."""
    with ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        runs = list(pool.map(_throughput_process, [kwargs] * processes, [threads] * processes,
                             [reference] * processes))
    labels = ["sampling", *runs[0]["trajectories"], "pretrain_step", "evaluator"]

    def seconds(run: dict, label: str) -> float:
        return (run["trajectories"][label] if label in run["trajectories"] else run[label])["seconds"]

    combined = {label: {"seconds": [round(seconds(r, label), 4) for r in runs],
                        "per_second": sum(1.0 / seconds(r, label) for r in runs)} for label in labels}
    return {"profile": kwargs["profile"], "processes": processes, "threads_per_process": threads,
            "machine": runs[0]["machine"], "combined": combined, "runs": runs}


def cmd_throughput(args: argparse.Namespace) -> int:
    check_profile(args.profile)
    check_json_out(args.out)
    if (args.base is None) != (args.reward is None):
        raise UserError("--base/--reward: give both runs, or neither (then both are the profile's initialisation)")
    if args.base is not None:
        if args.data is None:
            raise UserError("--data: needed with --base and --reward (their captions and lengths)")
        check_inputs(args.base, args.reward, args.data)
    elif args.data is not None and not args.data.is_dir():
        raise UserError(f"--data {args.data}: dataset directory not found")
    if args.evaluator is not None and not args.evaluator.is_dir():
        raise UserError(f"--evaluator {args.evaluator}: run directory not found")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    labels = None
    if args.trajectories is not None:
        known = [label for label, _, _ in TRAJECTORIES]
        labels = [x.strip() for x in args.trajectories.split(",") if x.strip()]
        unknown = [x for x in labels if x not in known]
        if not labels or unknown:
            raise UserError(f"--trajectories: unknown or empty {unknown or args.trajectories!r} "
                            f"(choose from {', '.join(known)})")
    device = resolve_device(args.device)
    kwargs = dict(profile=args.profile, device=device, seed=args.seed, repeats=args.repeats, base=args.base,
                  reward=args.reward, data=args.data, evaluator=args.evaluator, trajectories=labels,
                  compile=args.compile, progress=not args.no_progress and args.processes == 1)
    if args.processes > 1:
        threads = args.threads or max(1, available_cores() // args.processes)
        result = concurrent_throughput(kwargs, args.processes, threads, args.reference_path)
        write_json(args.out, result)
        print(f"{args.processes} processes x {threads} thread(s): trajectories per second, all processes together")
        for label, row in result["combined"].items():
            print(f"{label:>16s} {row['per_second']:7.3f} /s  (seconds per process {row['seconds']})")
        return 0
    with reference_path() if args.reference_path else nullcontext():
        result = throughput_benchmark(**kwargs)
    write_json(args.out, result)
    floor = result["sampling"]["seconds"]
    d = result["denoiser"]
    print(f"denoiser forward {d['forward']['seconds'] * 1e3:.1f} ms, forward+backward "
          f"{d['forward_backward']['seconds'] * 1e3:.1f} ms, AdamW step {d['adamw_step']['seconds'] * 1e3:.1f} ms")
    print(f"{'sampling only':>16s} {floor:7.3f} s  1.00x  (CPU {result['sampling']['cpu_seconds']:.3f} s)")
    for label, row in result["trajectories"].items():
        print(f"{label:>16s} {row['seconds']:7.3f} s  {row['ratio_to_sampling']:.2f}x  (CPU {row['cpu_seconds']:.3f} s, "
              f"{row['cpu_ratio_to_sampling']:.2f}x)")
    print(f"pretrain step {result['pretrain_step']['seconds']:.3f} s (batch {result['pretrain_step']['batch_size']}), "
          f"evaluator embedding of {result['evaluator']['motions']} motions {result['evaluator']['seconds']:.3f} s")
    return 0
