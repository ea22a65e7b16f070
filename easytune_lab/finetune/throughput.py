"""Throughput of every method against its floor: what one trajectory costs, and where the time goes.

``easytune bench throughput`` measures, in one process with the same captions, lengths and seed:

* the denoiser's forward pass (one network call, no gradient), forward + backward, and one AdamW step over the
  trainable parameters;
* the **sampling-only trajectory**, T reverse steps without any gradient: the floor of every method, since each
  method samples the same T steps and adds gradient work on top. It runs through the same loop
  (:func:`~easytune_lab.finetune.loop.run_trajectory`) with a plan that takes no gradient and no reward;
* one trajectory of every method through :meth:`~easytune_lab.finetune.train.Finetuner.iteration` (text
  conditioning, sampling, rewards, backward passes, optimiser steps), including EasyTune trained on the last 10
  steps (``train_steps="last"``, the authors' code), each as seconds and as a ratio to the floor, with the loop's
  own split of the time into sampling / reward / backward / optimizer;
* a plain pretraining step of the backbone (the profile's batch: loss, backward, AdamW);
* the evaluator's embedding of 100 test motions.

Throughput does not depend on what the weights have learned, so by default the models are the profile's sizes at
their initialisation (a small procedural dataset supplies captions, lengths and motions); ``base``/``reward``/
``data``/``evaluator`` runs can be given instead. Every number is the median of ``repeats`` timed runs after one
untimed warm-up run; each trajectory's policy draw and noise are reset before every run, so the repeats do the
same work.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.humanml import HumanMLDataset, collate_motions
from ..diffusion.text_encoder import build_text_vocabulary
from ..diffusion.train import batch_indices, build_backbone, load_backbone, pretrain_config
from ..eval.evaluator import EvaluatorConfig, LoadedEvaluator, TextMotionEvaluator, embed_motions, load_evaluator
from ..eval.evaluator_train import profile_config
from ..io import write_npy
from ..motion.synth import generate_dataset
from ..reward.retrieval import save_reward
from ..reward.train import build_reward, profile_configs
from ..runs import WEIGHTS, make_manifest, save_tensors, write_manifest
from ..runtime import FAST_PATHS, check_profile, progress_bar
from .bench import _tuner
from .loop import run_trajectory
from .policy import LAST_K, Policy, StepPlan
from .train import finetune_config

#: The trajectories measured: (label, method, finetune_config overrides). ``easytune-last10`` is EasyTune trained
#: on the last 10 steps (the authors' code); DRaFT is the profile's DRaFT-K (K = T at quick and paper).
TRAJECTORIES: tuple[tuple[str, str, dict], ...] = (
    ("easytune", "easytune", {}),
    ("easytune-last10", "easytune", {"train_steps": "last", "num_train_steps": LAST_K}),
    ("draft", "draft", {}),
    ("draft-lv", "draft-lv", {}),
    ("alignprop", "alignprop", {}),
    ("drtune", "drtune", {}),
    ("refl", "refl", {}),
    ("easytune-chain", "easytune-chain", {}),
)
EMBED_MOTIONS = 100


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on: cores, threads, torch build, load."""
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "EASYTUNE_THREADS")
                if k in os.environ},
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _timed(fn: Callable[[], object], repeats: int, device: torch.device, before: Callable[[], None] | None = None
           ) -> dict:
    """Median / min / all of ``repeats`` timed calls after one untimed warm-up (``before`` runs untimed first)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, cpu = [], []
    for r in range(repeats + 1):
        if before is not None:
            before()
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        if r:  # the first call is the warm-up
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"seconds": float(np.median(times)), "min_seconds": float(min(times)),
            "cpu_seconds": float(np.median(cpu)), "runs": [round(t, 5) for t in times]}


def init_runs(profile: str, root: Path, data: Path | None, seed: int, device: torch.device,
              num_motions: int = 200) -> dict:
    """The profile's backbone (MDM) and reward at their initialisation, written as runs under ``root`` so the
    fine-tuning code loads them unchanged; a small procedural dataset there unless ``data`` is given."""
    if data is None:
        data = root / "data"
        generate_dataset(data, num_motions=num_motions, seed=seed, workers=1, progress=False)
    train = HumanMLDataset(data, split="train", mode="train", seed=seed)
    feature_dim = int(np.asarray(train.mean).shape[0])
    torch.manual_seed(seed)
    config = pretrain_config("mdm", profile, feature_dim=feature_dim, seed=seed)
    vocab = build_text_vocabulary(c.text for clip in train.clips for c in clip.captions)
    backbone = build_backbone(config, vocab)
    base = root / "mdm-init"
    base.mkdir(parents=True)
    vocab.save(base / "vocab.json")
    write_npy(base / "mean.npy", np.asarray(train.mean, dtype=np.float32))
    write_npy(base / "std.npy", np.asarray(train.std, dtype=np.float32))
    save_tensors(base / WEIGHTS, backbone.state_dict())
    write_manifest(base, make_manifest("backbone", config, seed=seed, device=str(device), parents={"data": str(data)},
                                       extra={"backbone": "mdm", "status": "complete", "feature_dim": feature_dim,
                                              "weights": "initialisation (untrained)"}))
    reward_cfg, _ = profile_configs(profile)
    reward = build_reward(train, reward_cfg)
    reward_dir = root / "reward-init"
    save_reward(reward, reward_dir)
    write_manifest(reward_dir, make_manifest("reward", reward_cfg, seed=seed, device=str(device),
                                             parents={"data": str(data)}))
    return {"base": base, "reward": reward_dir, "data": data}


def _evaluator(profile: str, run: Path | None, data: Path, device: torch.device, seed: int):
    if run is not None:
        return load_evaluator(run, device)
    train = HumanMLDataset(data, split="train", mode="train")
    sizes = profile_config(profile).model
    config = EvaluatorConfig.from_dict({**sizes.__dict__, "feature_dim": int(np.asarray(train.mean).shape[0])})
    torch.manual_seed(seed)
    model = TextMotionEvaluator(config, len(train.vocab)).to(device).eval()
    return LoadedEvaluator(model, train.vocab, np.asarray(train.mean, np.float32), np.asarray(train.std, np.float32),
                           device, Path(data), {})


def _test_motions(data: Path, n: int) -> list[np.ndarray]:
    test = HumanMLDataset(data, split="test", mode="eval")
    return [test[i % len(test)].features.numpy() for i in range(n)]


def throughput_benchmark(profile: str, device: torch.device, seed: int = 0, repeats: int = 3,
                         base: Path | None = None, reward: Path | None = None, data: Path | None = None,
                         evaluator: Path | None = None, trajectories: list[str] | None = None,
                         compile: bool = False, progress: bool = True) -> dict:
    """Seconds of the denoiser's passes, of the sampling-only trajectory, of one trajectory per method (and its
    ratio to sampling-only), of a pretraining step and of the evaluator's embedding of 100 motions.

    ``trajectories``: labels of :data:`TRAJECTORIES` to measure (default: all). ``compile``: every denoiser's forward
    through ``torch.compile`` (opt-in; eager after one warning line where unavailable); the warm-up run of each
    measurement then includes the compilation."""
    check_profile(profile)
    chosen = [row for row in TRAJECTORIES if trajectories is None or row[0] in trajectories]
    result: dict = {"profile": profile, "seed": seed, "repeats": repeats, "machine": machine_info(device),
                    "fast_paths": dict(FAST_PATHS)}
    with contextlib.ExitStack() as stack:
        if base is None or reward is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="easytune-throughput-")))
            runs = init_runs(profile, root, data, seed, device)
            base, reward, data = runs["base"], runs["reward"], runs["data"]
            result["weights"] = ("initialisation: the profile's MDM and reward sizes, untrained (throughput does "
                                 "not depend on trained weights); captions, lengths and motions from a "
                                 f"{'procedural dataset of 200 motions' if 'data' in str(data) else str(data)}")
        else:
            result["weights"] = {"base": str(base), "reward": str(reward), "data": str(data)}
        cfg = finetune_config("easytune", profile, seed=seed)
        first = _tuner("easytune", profile, base, reward, data, device, seed, compile=compile)
        result["compiled"] = first.compiled
        texts, lengths = first.prompts.draw(cfg.batch_size, np.random.default_rng(seed))
        result["batch"] = {"captions": texts, "lengths": lengths, "batch_size": cfg.batch_size,
                           "sample_steps": cfg.sample_steps, "sampler": cfg.sampler, "guidance": cfg.guidance}
        tasks = ["denoiser", "sampling"] + [label for label, _, _ in chosen] + ["pretrain_step", "evaluator"]
        bar = progress_bar(total=len(tasks), desc="bench throughput", disable=not progress, dynamic_ncols=True)

        # ---- the denoiser alone: one network call (batch of the fine-tuning profile), its backward, AdamW
        traj = first.trajectory(texts, lengths)
        net = first.backbone.net
        x = torch.randn(first.backbone.sample_shape(traj.cond), generator=torch.Generator().manual_seed(seed)
                        ).to(device, traj.dtype)
        tt = torch.full((x.shape[0],), traj.timesteps[len(traj.timesteps) // 2], dtype=torch.long, device=device)

        def forward():
            with torch.no_grad():
                net(x, tt, traj.cond)

        def forward_backward():
            net(x, tt, traj.cond).square().mean().backward()

        opt = torch.optim.AdamW(first.params, lr=0.0)
        forward_backward()
        result["denoiser"] = {"parameters": sum(p.numel() for p in first.params), "shape": list(x.shape),
                              "forward": _timed(forward, repeats, device),
                              "forward_backward": _timed(forward_backward, repeats, device,
                                                         before=lambda: opt.zero_grad(set_to_none=True)),
                              "adamw_step": _timed(opt.step, repeats, device)}
        opt.zero_grad(set_to_none=True)
        del opt
        bar.update(1)

        # ---- the floor: the same loop, a plan without gradient or reward
        floor_plans = [StepPlan() for _ in range(traj.num_steps)]

        def sampling():
            t = first.trajectory(texts, lengths)
            run_trajectory(t, Policy(), floor_plans, lambda x_, t_: x_.sum(), first.optimizer, first.params,
                           first.cfg.loop, generator=torch.Generator().manual_seed(seed))

        result["sampling"] = _timed(sampling, repeats, device)
        floor = result["sampling"]["seconds"]
        bar.update(1)
        del first

        # ---- one trajectory of each method
        rows = {}
        for label, method, overrides in chosen:
            tuner = _tuner(method, profile, base, reward, data, device, seed, compile=compile, **overrides)
            phases: dict = {}

            def reset(tuner=tuner):
                tuner.rng = np.random.default_rng(seed)
                tuner.noise.manual_seed(seed)

            def one(tuner=tuner, phases=phases):
                stats = tuner.iteration(probe_kind="none", texts=texts, lengths=lengths)
                phases.update(time=stats.time, graph_calls=len(stats.graph_calls),
                              optimizer_steps=stats.optimizer_steps)

            timing = _timed(one, repeats, device, before=reset)
            rows[label] = {"method": method, "overrides": overrides, **timing,
                           "ratio_to_sampling": timing["seconds"] / floor,
                           "cpu_ratio_to_sampling": timing["cpu_seconds"] / result["sampling"]["cpu_seconds"],
                           "graph_calls": phases["graph_calls"], "optimizer_steps": phases["optimizer_steps"],
                           "phases_last_run": {k: round(v, 5) for k, v in phases["time"].items()},
                           "k": tuner.cfg.policy.k if method in ("draft", "drtune") else None}
            del tuner
            bar.update(1)
        result["trajectories"] = rows

        # ---- a plain pretraining step at the profile's batch
        result["pretrain_step"] = _pretrain_step(profile, base, data, device, seed, repeats)
        bar.update(1)

        # ---- the evaluator's embedding of 100 test motions
        ev = _evaluator(profile, evaluator, data, device, seed)
        motions = _test_motions(data, EMBED_MOTIONS)
        result["evaluator"] = {"motions": EMBED_MOTIONS, "frames": int(sum(len(m) for m in motions)),
                               **_timed(lambda: embed_motions(ev, motions), repeats, device),
                               "weights": "run" if evaluator is not None else "initialisation"}
        bar.update(1)
        bar.close()
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def _pretrain_step(profile: str, base: Path, data: Path, device: torch.device, seed: int, repeats: int) -> dict:
    """One optimiser step of backbone pretraining (loss, backward, clip, AdamW) on the profile's batch size."""
    model, config, _ = load_backbone(base, device)
    ds = HumanMLDataset(data, split="train", mode="train", seed=seed)
    batch = collate_motions([ds[i] for i in batch_indices(len(ds), config.batch_size, seed, 0)]).to(device)
    model.train()
    params = model.stage_parameters("denoiser")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=config.lr)
    generator = torch.Generator().manual_seed(seed)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss("denoiser", batch, generator).backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()

    return {"batch_size": config.batch_size, "frames": int(batch.mask.sum()), **_timed(step, repeats, device)}
