"""One prepared device check at the paper profile's model sizes (``easytune bench paper``, scripts/device_check.sh).

A researcher with a GPU for a few minutes gets, in one JSON file naming the device:

* **memory** (paper Fig. 6): the peak training memory of one trajectory against T ∈ {10, 20, 50} for EasyTune
  (all steps, and the last 10 steps as in the authors' code: ``train_steps="last"``), EasyTune-chain, DRaFT-50
  (K = min(50, T)), AlignProp and DRTune. On CUDA ``peak_bytes`` is ``torch.cuda.max_memory_allocated`` above
  what was allocated when the trajectory began and ``peak_allocated_bytes`` the absolute peak (both after
  ``reset_peak_memory_stats``); on CPU it is the autograd graph's saved bytes
  (:mod:`easytune_lab.memory`), so the same command runs in CI.
* **time**: each method's wall time for one training trajectory (a second, warm trajectory, synchronised), the
  same trajectory sampled without gradient, and a plain supervised training step of the backbone (the pretraining
  loss, backward, optimiser step) at the same batch size.
* **reward curve**: EasyTune and DRaFT-50 trained side by side for a short wall-clock budget each, the held-out
  reward after every trajectory (:func:`easytune_lab.finetune.bench.speed_benchmark`).

Every phase rewrites the JSON (``complete`` false until the end), so a run cut short keeps what it measured.
The backbone and reward are whatever runs are named; scripts/device_check.sh trains both briefly at the chosen
profile on procedural data (a GPU machine may have no network and no dataset), so the reward curve checks the
mechanics and the time scale at paper size, not the paper's alignment claim.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..data.humanml import HumanMLDataset, collate_motions
from ..diffusion.train import load_backbone
from ..diffusion.trajectory import denoise
from ..io import write_json
from ..memory import memory_probe
from ..runs import read_manifest
from .bench import speed_benchmark
from .train import Finetuner, finetune_config

CHECK_STEPS = (10, 20, 50)
DRAFT_K = 50  # DRaFT-50: gradient through the last min(50, T) steps


@dataclass(frozen=True)
class CheckMethod:
    """A row label of the check, the policy it runs and its policy options for a trajectory of T steps."""

    label: str
    method: str
    options: Callable[[int], dict] = field(default=lambda steps: {})


CHECK_METHODS = (
    CheckMethod("easytune", "easytune", lambda t: {"train_steps": "all"}),
    CheckMethod("easytune-last10", "easytune", lambda t: {"train_steps": "last", "num_train_steps": min(10, t)}),
    CheckMethod("easytune-chain", "easytune-chain"),
    CheckMethod("draft-50", "draft", lambda t: {"k": min(DRAFT_K, t)}),
    CheckMethod("alignprop", "alignprop"),
    CheckMethod("drtune", "drtune", lambda t: {"k": min(5, t)}),
)
CURVE_METHODS = ("easytune", "draft")  # the reward curve: EasyTune against DRaFT-50 (the profiles' k = 50)


def device_description(device: torch.device) -> dict:
    """The device the numbers were measured on."""
    info = {"type": device.type, "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), memory_bytes=int(props.total_memory),
                    cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}")
    else:
        info["name"] = f"CPU ({info['cpu']}, {info['threads']} threads)"
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def _sampling_seconds(tuner: Finetuner, texts, lengths, steps: int) -> float:
    traj = tuner.trajectory(texts, lengths, steps)
    _sync(tuner.device)
    start = time.perf_counter()
    denoise(traj, traj.initial_noise(torch.Generator().manual_seed(0)), None)
    _sync(tuner.device)
    return time.perf_counter() - start


def memory_and_time(profile: str, base: Path, reward: Path, data: Path, device: torch.device, steps: Sequence[int],
                    batch_size: int, length: int | None, seed: int = 0, progress: bool = True) -> list[dict]:
    """One row per (method, T): peak memory of a trajectory, then the wall time of a second (warm) one."""
    from tqdm.auto import tqdm

    rows = []
    combos = [(m, t) for t in steps for m in CHECK_METHODS]
    for spec, num_steps in tqdm(combos, desc="memory and time", unit="run", disable=not progress):
        options = spec.options(num_steps)
        cfg = finetune_config(spec.method, profile, seed=seed, sample_steps=num_steps, batch_size=batch_size,
                              **options)
        tuner = Finetuner(cfg, base, reward, data, device)
        texts, lengths = tuner.prompts.draw(batch_size, np.random.default_rng(seed))
        if length is not None:
            lengths = [min(length, tuner.generator.max_frames)] * len(texts)
        absolute = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        stats = tuner.iteration(texts=texts, lengths=lengths)
        if device.type == "cuda":
            absolute = int(torch.cuda.max_memory_allocated(device))
        _sync(device)
        start = time.perf_counter()
        timed = tuner.iteration(probe_kind="none", texts=texts, lengths=lengths)
        _sync(device)
        seconds = time.perf_counter() - start
        rows.append({"method": spec.label, "policy": spec.method, "options": options, "steps": num_steps,
                     "batch_size": batch_size, "lengths": [int(n) for n in lengths],
                     "peak_bytes": int(stats.peak_bytes), "peak_allocated_bytes": absolute,
                     "graph_calls": len(stats.graph_calls), "optimizer_steps": int(timed.optimizer_steps),
                     "trajectory_seconds": seconds,
                     "sampling_seconds": _sampling_seconds(tuner, texts, lengths, num_steps),
                     "final_reward": float(timed.final_reward)})
        del tuner
    return rows


def train_step_seconds(base: Path, data: Path, device: torch.device, batch_size: int, repeats: int = 5,
                       seed: int = 0) -> dict:
    """A plain supervised training step of the backbone (its pretraining loss, backward, AdamW step), warm."""
    model, config, _ = load_backbone(base, device)
    stage = model.stages[-1]
    model.train()
    optimizer = torch.optim.AdamW(model.stage_parameters(stage), lr=1e-6)
    torch.manual_seed(seed)
    dataset = HumanMLDataset(data, "train", mode="train", seed=seed)
    batch = collate_motions([dataset[i % len(dataset)] for i in range(batch_size)]).to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if device.type == "cuda" else \
        torch.Generator().manual_seed(seed)
    times = []
    for r in range(repeats + 1):  # the first step warms up (allocations, kernels) and is not counted
        _sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(stage, batch, generator)
        loss.backward()
        optimizer.step()
        _sync(device)
        if r:
            times.append(time.perf_counter() - start)
    return {"seconds": float(np.mean(times)), "repeats": repeats, "batch_size": batch_size,
            "frames": [int(n) for n in batch.lengths], "stage": stage, "backbone": config.backbone,
            "parameters": _parameters(model)}


def reward_curve(profile: str, base: Path, reward: Path, data: Path, device: torch.device, seconds: float,
                 batch_size: int, eval_captions: int, seed: int = 0, progress: bool = True) -> dict:
    """EasyTune against DRaFT-50, each for ``seconds`` of training, interleaved (the speed benchmark)."""
    result = speed_benchmark(CURVE_METHODS, seconds, profile, base, reward, data, device, seed=seed,
                             progress=progress, batch_size=batch_size, eval_captions=eval_captions)
    result.pop("config", None)
    return result


def paper_check(profile: str, base: Path, reward: Path, data: Path, device: torch.device, out: Path,
                steps: Sequence[int] = CHECK_STEPS, batch_size: int = 8, length: int | None = 196,
                curve_seconds: float = 60.0, eval_captions: int = 32, seed: int = 0,
                progress: bool = True) -> dict:
    """All three phases; the JSON at ``out`` is rewritten after each. Returns the final result."""
    start = time.perf_counter()
    result = {
        "check": "easytune bench paper", "complete": False, "profile": profile, "seed": seed,
        "device": device_description(device),
        "memory_measure": "cuda_max_memory_allocated" if device.type == "cuda" else "autograd_saved_bytes",
        "steps": list(steps), "batch_size": batch_size, "length": length,
        "runs": {"base": str(base), "reward": str(reward), "data": str(data),
                 "base_config": read_manifest(base).get("config", {}).get("model")},
        "phases_seconds": {},
    }

    def phase(name: str, fn):
        t0 = time.perf_counter()
        result[name] = fn()
        result["phases_seconds"][name] = round(time.perf_counter() - t0, 3)
        result["seconds"] = round(time.perf_counter() - start, 3)
        write_json(out, result)

    phase("memory", lambda: memory_and_time(profile, base, reward, data, device, steps, batch_size, length, seed,
                                            progress))
    phase("train_step", lambda: train_step_seconds(base, data, device, batch_size, seed=seed))
    phase("reward_curve", lambda: reward_curve(profile, base, reward, data, device, curve_seconds, batch_size,
                                               eval_captions, seed, progress))
    result["complete"] = True
    write_json(out, result)
    return result


def summary_lines(result: dict) -> list[str]:
    """The check's numbers as printable lines (MiB, seconds)."""
    lines = [f"device: {result['device']['name']} ({result['memory_measure']})"]
    by_method: dict[str, list[dict]] = {}
    for row in result.get("memory", []):
        by_method.setdefault(row["method"], []).append(row)
    for method, rows in by_method.items():
        mem = ", ".join(f"T={r['steps']}: {r['peak_bytes'] / 2**20:.1f} MiB" for r in rows)
        last = rows[-1]
        lines.append(f"{method:>16s} {mem}; trajectory {last['trajectory_seconds']:.3f} s at T={last['steps']} "
                     f"(sampling {last['sampling_seconds']:.3f} s)")
    if "train_step" in result:
        lines.append(f"plain training step: {result['train_step']['seconds']:.4f} s at batch "
                     f"{result['train_step']['batch_size']}")
    for label, curve in result.get("reward_curve", {}).get("curves", {}).items():
        lines.append(f"{label:>16s} reward {curve['reward'][0]:.4f} -> {curve['reward'][-1]:.4f} in "
                     f"{curve['seconds'][-1]:.1f} s ({curve['iterations'][-1]} trajectories)")
    return lines
