"""Side-by-side benchmarks of the fine-tuning methods: peak training memory vs T, and reward vs wall time.

Both run every method in one process from the same base backbone, reward, captions and seed, through the same
loop (:mod:`easytune_lab.finetune.loop`), so the numbers differ only by the policy.

* Memory (paper Fig. 6): one trajectory per (method, T); ``peak_bytes`` is the autograd graph's saved bytes on
  CPU (exact) or ``max_memory_allocated`` above the start on CUDA; ``baseline_bytes`` is the same measure for
  sampling without gradient (0 on CPU by construction: no graph is saved).
* Speed (paper Sec. 5, "7.3× faster than DRaFT-50"): each method trains for a wall-clock budget; after every
  iteration the mean reward of a fixed held-out caption set is measured (outside the timed region).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..analysis.memory import memory_probe
from .train import Finetuner, finetune_config


def _tuner(method: str, profile: str, base: Path, reward: Path, data: Path, device: torch.device, seed: int,
           **overrides) -> Finetuner:
    cfg = finetune_config(method, profile, seed=seed, **overrides)
    return Finetuner(cfg, base, reward, data, device)


@torch.no_grad()
def _sampling_baseline(tuner: Finetuner, texts, lengths, num_steps: int) -> int:
    traj = tuner.trajectory(texts, lengths, num_steps)
    probe = memory_probe(tuner.device, tuner.params)
    with probe:
        x = traj.initial_noise(torch.Generator().manual_seed(0))
        for i in range(traj.num_steps):
            x, _ = traj.step(x, i, traj.draw_noise(i, x, None), False)
    return int(probe.peak_bytes)


def memory_benchmark(methods: Sequence[str], steps: Sequence[int], profile: str, base: Path, reward: Path,
                     data: Path, device: torch.device, seed: int = 0, batch_size: int = 2,
                     length: int | None = None, progress: bool = True) -> list[dict]:
    """Peak training memory of one trajectory per method and number of denoising steps T.

    Every method gets the same captions (drawn with ``seed``) and lengths (their ground truth, or ``length``
    frames for all).
    """
    from tqdm import tqdm

    rows = []
    combos = [(m, t) for t in steps for m in methods]
    for method, num_steps in tqdm(combos, desc="bench memory", disable=not progress):
        k = num_steps if method == "draft" else min(5, num_steps)
        tuner = _tuner(method, profile, base, reward, data, device, seed, sample_steps=num_steps,
                       batch_size=batch_size, lr=0.0, k=k)
        texts, lengths = tuner.prompts.draw(batch_size, np.random.default_rng(seed))
        if length is not None:
            lengths = [length] * len(texts)
        baseline = _sampling_baseline(tuner, texts, lengths, num_steps)
        start = time.perf_counter()
        stats = tuner.iteration(texts=texts, lengths=lengths)  # the same captions for every method
        rows.append({"method": method, "steps": num_steps, "batch_size": batch_size, "lengths": lengths, "k": k if method in ("draft", "drtune") else None,
                     "peak_bytes": stats.peak_bytes, "baseline_bytes": baseline,
                     "graph_calls": len(stats.graph_calls), "optimizer_steps": stats.optimizer_steps,
                     "seconds": time.perf_counter() - start, "device": str(device),
                     "measure": "cuda_max_memory_allocated" if device.type == "cuda" else "autograd_saved_bytes"})
        del tuner
    return rows


def speed_benchmark(methods: Sequence[str], budget_seconds: float, profile: str, base: Path, reward: Path,
                    data: Path, device: torch.device, seed: int = 0, max_iterations: int = 10_000,
                    progress: bool = True, **overrides) -> dict:
    """Reward reached against training wall time and optimiser steps, per method, same start for all.

    The methods are interleaved, one trajectory each in turn, until each has trained for ``budget_seconds``:
    on a shared machine every method then sees the same background load. After every trajectory the mean reward
    of a fixed held-out caption set (fixed noise) is measured outside the timed region.
    """
    tuners = {m: _tuner(m, profile, base, reward, data, device, seed, iterations=max_iterations, **overrides)
              for m in methods}
    curves = {m: {"seconds": [0.0], "optimizer_steps": [0], "iterations": [0], "reward": [t.evaluate_reward()]}
              for m, t in tuners.items()}
    active = list(methods)
    while active:
        for method in list(active):
            curve, tuner = curves[method], tuners[method]
            t0 = time.perf_counter()
            stats = tuner.iteration(probe_kind="none")
            curve["seconds"].append(curve["seconds"][-1] + time.perf_counter() - t0)
            curve["optimizer_steps"].append(curve["optimizer_steps"][-1] + stats.optimizer_steps)
            curve["iterations"].append(curve["iterations"][-1] + 1)
            curve["reward"].append(tuner.evaluate_reward())
            if progress:
                print(f"[speed] {method} it {curve['iterations'][-1]} t={curve['seconds'][-1]:.1f}s "
                      f"steps={curve['optimizer_steps'][-1]} reward={curve['reward'][-1]:.4f}", flush=True)
            if curve["seconds"][-1] >= budget_seconds or curve["iterations"][-1] >= max_iterations:
                active.remove(method)
    del tuners
    return {"budget_seconds": budget_seconds, "curves": curves, "device": str(device), "profile": profile,
            "schedule": "interleaved: one trajectory per method in turn",
            "config": dataclasses.asdict(finetune_config(methods[0], profile, seed=seed, **overrides))}


def time_to_reach(curve: dict, target: float, sustained: bool = False) -> float | None:
    """First training time at which ``curve`` reaches ``target`` reward (None if never); ``sustained``: the first
    time from which it stays at or above ``target`` until the end of the run."""
    points = list(zip(curve["seconds"], curve["reward"]))
    if sustained:
        for j, (seconds, _) in enumerate(points):
            if all(r >= target for _, r in points[j:]):
                return float(seconds)
        return None
    for seconds, reward in points:
        if reward >= target:
            return float(seconds)
    return None


def speedup(result: dict, fast: str = "easytune", slow: str = "draft") -> dict:
    """How much sooner ``fast`` reaches ``slow``'s final reward than ``slow`` itself did: at the first evaluation
    at or above it (``fast_seconds``), and from when it stays there (``sustained_fast_seconds``), since a noisy
    reward curve can touch a target once and fall back."""
    curves = result["curves"]
    target = curves[slow]["reward"][-1]
    slow_time = curves[slow]["seconds"][-1]
    first = time_to_reach(curves[fast], target)
    sustained = time_to_reach(curves[fast], target, sustained=True)
    ratio = lambda t: (slow_time / t) if t else None        # noqa: E731 - None when never reached (or at t = 0)
    return {"target_reward": target, "slow_seconds": slow_time, "fast_seconds": first, "speedup": ratio(first),
            "sustained_fast_seconds": sustained, "sustained_speedup": ratio(sustained),
            "start_reward": curves[slow]["reward"][0], "fast_final_reward": curves[fast]["reward"][-1],
            "fast_best_reward": max(curves[fast]["reward"])}
