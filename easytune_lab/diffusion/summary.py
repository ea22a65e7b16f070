"""A JSON summary of a pretrained backbone run: training curve and time, sizes, sampling time and sample
statistics in normalised feature units (0 mean / unit variance per channel on the training data)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

from ..io import write_json
from .generate import load_generator


def parameter_count(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def summarise_run(run_dir: str | Path, captions: Sequence[str], length: int = 120, seed: int = 0,
                  step_counts: Sequence[int] | None = None, device: str = "cpu") -> dict:
    """Training log of ``run_dir`` plus, for each sampling step count (default: the backbone's), the time to
    generate one motion per caption and the per-channel mean/std of the samples in normalised units."""
    run_dir = Path(run_dir)
    gen = load_generator(run_dir, device)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = {
        "run": str(run_dir), "backbone": gen.config.backbone, "profile": gen.config.profile,
        "parameters": {"total": parameter_count(gen.backbone), "denoiser": parameter_count(gen.backbone.net)},
        "train": {"steps": metrics["steps"], "seconds": round(metrics["train_seconds"], 1),
                  "final_loss": metrics["final_loss"], "curve": metrics["log"]},
        "sampler": gen.sampler, "guidance": gen.guidance, "captions": list(captions), "length": length,
        "sampling": [],
    }
    for steps in step_counts or [gen.steps]:
        start = time.perf_counter()
        x = gen.sample_normalised(list(captions), [length] * len(captions), seed, steps=steps).float().cpu()
        seconds = time.perf_counter() - start
        flat = x.reshape(-1, x.shape[-1])
        out["sampling"].append({
            "steps": steps, "seconds": round(seconds, 3), "seconds_per_motion": round(seconds / len(captions), 4),
            "finite": bool(torch.isfinite(x).all()),
            "channel_mean_abs": round(float(flat.mean(0).abs().mean()), 4),   # 0 on the data
            "channel_std_mean": round(float(flat.std(0).mean()), 4),          # 1 on the data
        })
    return out


def summary_captions() -> list[str]:
    """Captions used for sample checks (phrased like the procedural data's)."""
    return ["a person walks forward.", "the person jumps up.", "a person waves hello with the right hand.",
            "a human takes a bow.", "a person squats down and stands up.", "a man kicks with their left leg."]


def write_summary(path: str | Path, summary: dict) -> None:
    write_json(path, summary)
