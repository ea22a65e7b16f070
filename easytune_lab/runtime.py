"""Devices, seeds and profiles shared by every stage.

Profiles name the scale a stage runs at: ``smoke`` (tiny, seconds on CPU, for tests and CI), ``quick``
(a 2-core CPU laptop, minutes) and ``paper`` (GPU, the paper's model sizes). Each stage keeps its own
config dataclass per profile; this module only validates the name.
"""

from __future__ import annotations

import os
import random

import numpy as np

from .errors import UserError

PROFILES = ("smoke", "quick", "paper")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise UserError(f"--profile: unknown profile '{profile}' (choose from {', '.join(PROFILES)})")
    return profile


def resolve_device(device: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a user error."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device: unknown device '{device}' (choose auto, cpu or cuda)")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_threads() -> int:
    """Threads for CPU work: ``EASYTUNE_THREADS``, else the cores shared by the processes torchrun started on
    this node (all of them in a plain run)."""
    if "EASYTUNE_THREADS" in os.environ:
        return int(os.environ["EASYTUNE_THREADS"])
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, (os.cpu_count() or 1) // per_node)


def parse_int_list(text: str, flag: str, low: int, high: int, what: str = "value") -> list[int]:
    """``"10,50,100"`` -> ``[10, 50, 100]``, every value in [low, high]; one-line errors that name ``flag``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of integers") from None
    if not values or any(not low <= v <= high for v in values):
        raise UserError(f"{flag}: every {what} must be in [{low}, {high}] (got '{text}')")
    return values


def check_json_out(path: os.PathLike | str) -> None:
    """``--out`` of a command that writes one JSON file."""
    if os.path.splitext(str(path))[1].lower() != ".json":
        raise UserError(f"--out {path}: must end in .json")



def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar (elapsed time, rate and ETA) for every long job: training, cache builds, evaluation.

    In a kernel started by a Jupyter server (JupyterLab, Notebook: ``JPY_SESSION_NAME`` is set) it is
    ``tqdm.auto``'s widget bar; elsewhere (terminal, papermill, CI) the text bar, which also renders in a notebook's
    saved output, where a widget would be stored at its first state. ``EASYTUNE_PROGRESS=text|widget`` overrides."""
    choice = os.environ.get("EASYTUNE_PROGRESS", "auto")
    if choice == "widget" or (choice == "auto" and os.environ.get("JPY_SESSION_NAME")):
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm(iterable, **kwargs)
