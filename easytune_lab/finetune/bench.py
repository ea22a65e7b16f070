"""Side-by-side benchmarks of the fine-tuning methods: peak training memory vs T, and reward vs wall time.

Both run every method in one process from the same base backbone, reward, captions and seed, through the same
loop (:mod:`easytune_lab.finetune.loop`), so the numbers differ only by the policy.

* Memory (paper Fig. 6): one trajectory per (method, T); ``peak_bytes`` is the autograd graph's saved bytes on
  CPU (exact) or ``max_memory_allocated`` above the start on CUDA; ``baseline_bytes`` is the same measure for
  sampling without gradient (0 on CPU by construction: no graph is saved).
* Speed (paper Sec. 5, "7.3× faster than DRaFT-50"): each method trains for a wall-clock budget; after every
  iteration the mean reward of a fixed held-out caption set is measured (outside the timed region). A method's
  learning rate decides how fast it climbs, so a grid of learning rates per method can run side by side and
  each method is then compared at its best one. A method named ``METHOD+acc`` runs with ``accumulate``: its
  per-step gradients of a trajectory are summed into one optimiser step (EasyTune's per-step objective with
  DRaFT's update count), a curve of its own.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..diffusion.trajectory import denoise
from ..memory import memory_probe
from ..runtime import progress_bar as tqdm
from .methods import method_spec
from .train import Finetuner, finetune_config


ACCUMULATE_SUFFIX = "+acc"
#: The (fast, slow) curve pairs ``easytune bench speed`` reports a speed-up for when both are run: the paper's claim
#: (EasyTune vs DRaFT-50, Sec. 5), the same the other way round, and EasyTune with one update per trajectory.
SPEEDUP_PAIRS = (("easytune", "draft"), ("draft", "easytune"), ("easytune+acc", "draft"))


def split_variant(name: str) -> tuple[str, bool]:
    """``"easytune+acc"`` -> ``("easytune", True)``: the method and whether its updates are accumulated."""
    if name.endswith(ACCUMULATE_SUFFIX):
        return name[: -len(ACCUMULATE_SUFFIX)], True
    return name, False


def _tuner(method: str, profile: str, base: Path, reward: Path, data: Path, device: torch.device, seed: int,
           **overrides) -> Finetuner:
    method, accumulate = split_variant(method)
    compile = overrides.pop("compile", False)
    cfg = finetune_config(method, profile, seed=seed, **overrides)
    return Finetuner(cfg, base, reward, data, device, accumulate=accumulate, compile=compile)


@torch.no_grad()
def _sampling_baseline(tuner: Finetuner, texts, lengths, num_steps: int) -> int:
    traj = tuner.trajectory(texts, lengths, num_steps)
    probe = memory_probe(tuner.device, tuner.params)
    with probe:
        denoise(traj, traj.initial_noise(torch.Generator().manual_seed(0)), None)
    return int(probe.peak_bytes)


def memory_benchmark(methods: Sequence[str], steps: Sequence[int], profile: str, base: Path, reward: Path,
                     data: Path, device: torch.device, seed: int = 0, batch_size: int = 2,
                     length: int | None = None, progress: bool = True) -> list[dict]:
    """Peak training memory of one trajectory per method and number of denoising steps T.

    Every method gets the same captions (drawn with ``seed``) and lengths (their ground truth, or ``length``
    frames for all).
    """
    rows = []
    combos = [(m, t) for t in steps for m in methods]
    for method, num_steps in tqdm(combos, desc="bench memory", disable=not progress):
        spec = method_spec(split_variant(method)[0])
        k = spec.default_k(num_steps) if spec.uses_k else None   # DRaFT at K = T; DRTune's k; None: no K
        tuner = _tuner(method, profile, base, reward, data, device, seed, sample_steps=num_steps,
                       batch_size=batch_size, lr=0.0, k=k)
        texts, lengths = tuner.prompts.draw(batch_size, np.random.default_rng(seed))
        if length is not None:
            lengths = [length] * len(texts)
        baseline = _sampling_baseline(tuner, texts, lengths, num_steps)
        start = time.perf_counter()
        stats = tuner.iteration(texts=texts, lengths=lengths)  # the same captions for every method
        rows.append({"method": method, "steps": num_steps, "batch_size": batch_size, "lengths": lengths, "k": k,
                     "peak_bytes": stats.peak_bytes, "baseline_bytes": baseline,
                     "graph_calls": len(stats.graph_calls), "optimizer_steps": stats.optimizer_steps,
                     "seconds": time.perf_counter() - start, "device": str(device),
                     "measure": "cuda_max_memory_allocated" if device.type == "cuda" else "autograd_saved_bytes"})
        del tuner
    return rows


def speed_curves(methods: Sequence[str], lrs: dict[str, Sequence[float]] | None = None
                 ) -> list[tuple[str, str, float | None]]:
    """The (label, method, lr) of every curve: one per method at its profile lr, or one per lr of its grid.

    ``lrs`` maps a method (or ``"*"``, every method) to learning rates; a method with a grid gets the labels
    ``method@lr``, so each method can be compared at its own best learning rate (:func:`best_curve`).
    """
    lrs = lrs or {}
    runs = []
    for method in methods:
        grid = lrs.get(method, lrs.get("*"))
        if grid:
            runs += [(f"{method}@{lr:g}", method, float(lr)) for lr in grid]
        else:
            runs.append((method, method, None))
    return runs


def speed_benchmark(methods: Sequence[str], budget_seconds: float, profile: str, base: Path, reward: Path,
                    data: Path, device: torch.device, seed: int = 0, max_iterations: int = 10_000,
                    progress: bool = True, lrs: dict[str, Sequence[float]] | None = None, eval_every: int = 1,
                    **overrides) -> dict:
    """Reward reached against training wall time and optimiser steps, per method (and lr), same start for all.

    The curves are interleaved, one trajectory each in turn, until each has trained for ``budget_seconds``:
    on a shared machine every method then sees the same background load. Every ``eval_every`` trajectories
    (and after the last) the mean reward of a fixed held-out caption set (fixed noise) is measured outside the
    timed region. ``lrs``: learning-rate grids per method (see :func:`speed_curves`).
    """
    runs = speed_curves(methods, lrs)
    tuners = {label: _tuner(m, profile, base, reward, data, device, seed, iterations=max_iterations,
                            **{**overrides, "lr": lr if lr is not None else overrides.get("lr")})
              for label, m, lr in runs}
    curves = {label: {"method": m, "lr": tuners[label].cfg.lr, "seconds": [0.0], "optimizer_steps": [0],
                      "iterations": [0], "reward": [tuners[label].evaluate_reward()]}
              for label, m, _ in runs}
    clock = {label: (0.0, 0, 0) for label in curves}           # seconds, optimiser steps, iterations
    active = list(curves)
    while active:
        for label in list(active):
            curve, tuner = curves[label], tuners[label]
            t0 = time.perf_counter()
            stats = tuner.iteration(probe_kind="none")
            seconds, steps, iterations = clock[label]
            clock[label] = seconds, steps, iterations = (seconds + time.perf_counter() - t0,
                                                         steps + stats.optimizer_steps, iterations + 1)
            done = seconds >= budget_seconds or iterations >= max_iterations
            if done or iterations % eval_every == 0:
                curve["seconds"].append(seconds)
                curve["optimizer_steps"].append(steps)
                curve["iterations"].append(iterations)
                curve["reward"].append(tuner.evaluate_reward())
                if progress:
                    print(f"[speed] {label} it {iterations} t={seconds:.1f}s steps={steps} "
                          f"reward={curve['reward'][-1]:.4f}", flush=True)
            if done:
                active.remove(label)
    del tuners
    return {"budget_seconds": budget_seconds, "curves": curves, "device": str(device), "profile": profile,
            "schedule": "interleaved: one trajectory per curve in turn", "eval_every": eval_every,
            "lrs": {k: list(v) for k, v in (lrs or {}).items()},
            "config": dataclasses.asdict(finetune_config(methods[0], profile, seed=seed, **overrides))}


def best_curve(result: dict, method: str) -> str:
    """The label of ``method``'s curve: itself, or of its lr grid the one with the highest final reward (each
    method at the learning rate that served it best within the budget, as a fair comparison needs)."""
    curves = result["curves"]
    if method in curves:
        return method
    labels = [label for label, c in curves.items() if c.get("method") == method]
    if not labels:
        raise KeyError(f"no curve for method '{method}'")
    return max(labels, key=lambda label: curves[label]["reward"][-1])


def time_to_reach(curve: dict, target: float, sustained: bool = False) -> float | None:
    """First training time at which ``curve`` reaches ``target`` reward (None if never); ``sustained``: the first
    time from which it stays at or above ``target`` until the end of the run."""
    points = list(zip(curve["seconds"], curve["reward"]))
    if sustained:  # the point after the last one below the target
        below = [j for j, (_, reward) in enumerate(points) if reward < target]
        j = below[-1] + 1 if below else 0
        return float(points[j][0]) if j < len(points) else None
    for seconds, reward in points:
        if reward >= target:
            return float(seconds)
    return None


def speedup(result: dict, fast: str = "easytune", slow: str = "draft") -> dict:
    """How much sooner ``fast`` reaches ``slow``'s final reward than ``slow`` itself did: at the first evaluation
    at or above it (``fast_seconds``), and from when it stays there (``sustained_fast_seconds``), since a noisy
    reward curve can touch a target once and fall back. With lr grids, each method's best curve
    (:func:`best_curve`) is compared."""
    curves = result["curves"]
    fast_label, slow_label = best_curve(result, fast), best_curve(result, slow)
    target = curves[slow_label]["reward"][-1]
    slow_time = curves[slow_label]["seconds"][-1]
    first = time_to_reach(curves[fast_label], target)
    sustained = time_to_reach(curves[fast_label], target, sustained=True)
    ratio = lambda t: (slow_time / t) if t else None        # noqa: E731 - None when never reached (or at t = 0)
    return {"fast_curve": fast_label, "slow_curve": slow_label,
            "target_reward": target, "slow_seconds": slow_time, "fast_seconds": first, "speedup": ratio(first),
            "sustained_fast_seconds": sustained, "sustained_speedup": ratio(sustained),
            "start_reward": curves[slow_label]["reward"][0], "fast_final_reward": curves[fast_label]["reward"][-1],
            "fast_best_reward": max(curves[fast_label]["reward"])}
