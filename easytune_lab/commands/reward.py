"""``easytune reward train|spl``: train the retrieval reward (optionally noise-aware) and refine it with SPL.

Each run directory holds ``manifest.json``, ``weights.safetensors``, ``vocab.json`` and ``metrics.json``
(training history and retrieval metrics R@1/2/3/5/10 + median rank, text→motion and motion→text, over the
whole test split and in galleries of 32, at each evaluated noise level).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reward", help="train the retrieval reward R(x, c) / R(x_t, t, c) and refine it with SPL")
    rsub = p.add_subparsers(dest="reward_command", metavar="SUBCOMMAND")
    rsub.required = True

    t = rsub.add_parser("train", help="train a retrieval reward with InfoNCE")
    _common(t)
    t.add_argument("--noise-aware", action="store_true", help="train R(x_t, t, c) on noised and clean motions")
    t.add_argument("--schedule", choices=["linear", "scaled_linear", "cosine"], default=None,
                   help="the backbone's noise schedule for --noise-aware (default: the profile's, cosine)")
    t.add_argument("--text-model", type=Path, default=None,
                   help="optional local Hugging Face text model directory (frozen; never downloaded)")
    t.add_argument("--epochs", type=int, default=None, help="override the profile's number of epochs")
    t.set_defaults(func=cmd_train)

    s = rsub.add_parser("spl", help="refine a trained reward with Self-refinement Preference Learning")
    s.add_argument("--reward", required=True, type=Path, help="a reward run directory (from `reward train`)")
    _common(s)
    s.add_argument("--k", type=int, default=None, help="top-k of the mining rule (default: the profile's, 10)")
    s.add_argument("--spl-weight", type=float, default=None,
                   help="weight of the SPL loss (0 = control: same extra epochs, InfoNCE only)")
    s.add_argument("--epochs", type=int, default=None, help="override the profile's number of SPL epochs")
    s.set_defaults(func=cmd_spl)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="HumanML3D-format dataset directory")
    p.add_argument("--profile", default="quick", help="smoke | quick | paper (default quick)")
    p.add_argument("--out", required=True, type=Path, help="output run directory (absent or empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")


def _prepare(args: argparse.Namespace):
    import torch

    from ..runtime import check_profile, default_threads, resolve_device, seed_everything

    check_profile(args.profile)
    if not args.data.is_dir():
        raise UserError(f"--data {args.data}: dataset directory not found")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"--out {args.out}: exists and is not an empty directory")
    if getattr(args, "epochs", None) is not None and args.epochs < 1:
        raise UserError(f"--epochs: must be at least 1 (got {args.epochs})")
    device = resolve_device(args.device)
    torch.set_num_threads(default_threads())
    seed_everything(args.seed)
    return device


def _write_run(out: Path, kind: str, config, reward, metrics: dict, seed: int, device, parents=None) -> None:
    from ..io import write_json
    from ..reward.retrieval import save_reward
    from ..runs import make_manifest, write_manifest

    out.mkdir(parents=True, exist_ok=True)
    save_reward(reward, out)
    write_json(out / "metrics.json", metrics)
    write_manifest(out, make_manifest(kind, config, seed=seed, device=str(device), parents=parents))


def _headline(metrics: dict) -> str:
    clean = metrics["t=0"]
    return (f"test t2m R@1 {clean['all']['t2m']['R@1']:.1f}% (all {clean['all']['n']}), "
            f"{clean['batch32']['t2m']['R@1']:.1f}% (batch 32); m2t R@1 {clean['all']['m2t']['R@1']:.1f}%")


def cmd_train(args: argparse.Namespace) -> int:
    from ..reward.train import evaluate_reward, load_splits, profile_configs, train_reward

    device = _prepare(args)
    cfg, _ = profile_configs(args.profile, noise_aware=args.noise_aware)
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.schedule is not None:
        cfg.model = dataclasses.replace(cfg.model, schedule=args.schedule)
    if args.text_model is not None:
        if not args.text_model.is_dir():
            raise UserError(f"--text-model {args.text_model}: local model directory not found "
                            f"(models are never downloaded)")
        cfg.model = dataclasses.replace(cfg.model, text_model_path=str(args.text_model.resolve()))
    train, test, train_idx, test_idx = load_splits(args.data, cfg.max_train_items, cfg.max_test_items, args.seed)
    start = time.perf_counter()
    reward, history = train_reward(train, train_idx, cfg, device)
    train_seconds = time.perf_counter() - start
    retrieval = evaluate_reward(reward, test, test_idx, device, cfg.eval_timesteps, cfg.eval_batch, seed=0)
    metrics = {"profile": args.profile, "noise_aware": cfg.model.noise_aware, "train_seconds": train_seconds,
               "train_items": len(train_idx), "test_items": len(test_idx), "history": history,
               "retrieval": retrieval}
    _write_run(args.out, "reward", {"profile": args.profile, "data": str(args.data.resolve()), "train": cfg,
                                    "model": cfg.model}, reward, metrics, args.seed, device)
    print(f"reward trained in {train_seconds:.0f} s; {_headline(retrieval)}; wrote {args.out}")
    return 0


def cmd_spl(args: argparse.Namespace) -> int:
    from ..reward.retrieval import load_reward
    from ..reward.train import evaluate_reward, load_splits, profile_configs, refine_spl

    device = _prepare(args)
    reward = load_reward(args.reward, device)
    cfg, spl = profile_configs(args.profile, noise_aware=reward.cfg.noise_aware)
    cfg.model = reward.cfg
    if args.k is not None:
        if args.k < 1:
            raise UserError(f"--k: must be at least 1 (got {args.k})")
        spl.k = args.k
    if args.spl_weight is not None:
        if args.spl_weight < 0:
            raise UserError(f"--spl-weight: must be >= 0 (got {args.spl_weight})")
        spl.weight = args.spl_weight
    if args.epochs is not None:
        spl.epochs = args.epochs
    train, test, train_idx, test_idx = load_splits(args.data, cfg.max_train_items, cfg.max_test_items, args.seed)
    before = evaluate_reward(reward, test, test_idx, device, (0,), cfg.eval_batch, seed=0)
    start = time.perf_counter()
    history = refine_spl(reward, train, train_idx, cfg, spl, device)
    seconds = time.perf_counter() - start
    after = evaluate_reward(reward, test, test_idx, device, cfg.eval_timesteps, cfg.eval_batch, seed=0)
    metrics = {"profile": args.profile, "spl": dataclasses.asdict(spl), "train_seconds": seconds,
               "mined_pairs_per_epoch": [row["mined_pairs"] for row in history], "history": history,
               "before": before, "retrieval": after}
    _write_run(args.out, "reward-spl", {"profile": args.profile, "data": str(args.data.resolve()), "train": cfg,
                                        "model": cfg.model, "spl": spl},
               reward, metrics, args.seed, device, parents={"reward": str(args.reward.resolve())})
    print(f"SPL ({spl.epochs} epochs, weight {spl.weight}, k {spl.k}; mined pairs per epoch "
          f"{metrics['mined_pairs_per_epoch']}): before {_headline(before)}; after {_headline(after)}; wrote {args.out}")
    return 0
