"""Run directories: manifests, safetensors checkpoints, resume.

Every stage of the workbench writes a run directory::

    RUN/manifest.json        config dataclass as dict, seed, versions, device, git commit, kind
    RUN/weights.safetensors  final weights (tensors only: loading never executes code)
    RUN/checkpoint/          last checkpoint (weights, optimiser, RNG state, step) for --resume
    RUN/metrics.json         what the stage measured

Later stages name the run directory they build on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .io import atomic_path, write_json

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


def config_to_dict(config: Any) -> dict:
    """A dataclass config (possibly nested) as a plain JSON-able dict."""
    if dataclasses.is_dataclass(config):
        return {k: config_to_dict(v) for k, v in dataclasses.asdict(config).items()}
    if isinstance(config, dict):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, (np.integer,)):
        return int(config)
    if isinstance(config, (np.floating,)):
        return float(config)
    return config


def config_hash(config: Any, length: int = 12) -> str:
    """A short stable hash of a configuration (the cache key of trained runs)."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: str | None = None) -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    info["device"] = device
    return info


def make_manifest(kind: str, config: Any, seed: int | None = None, device: str | None = None,
                  parents: dict[str, str] | None = None, extra: dict | None = None) -> dict:
    from . import __version__

    manifest = {
        "kind": kind,
        "easytune_lab": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": seed,
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "git_commit": git_commit(),
        "environment": environment_info(device),
        "command": " ".join(sys.argv),
        "parents": parents or {},
    }
    if extra:
        manifest.update(extra)
    return manifest


def write_manifest(run_dir: str | os.PathLike, manifest: dict) -> None:
    write_json(Path(run_dir) / MANIFEST, manifest)


def read_manifest(run_dir: str | os.PathLike, kind: str | None = None) -> dict:
    """Read ``RUN/manifest.json``; raise :class:`UserError` if it is missing, broken or of another kind."""
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: run directory does not exist")
    if not path.is_file():
        raise UserError(f"{path}: missing (is {run_dir} a run directory?)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if kind is not None and manifest.get("kind") != kind:
        raise UserError(f"{run_dir}: is a '{manifest.get('kind')}' run, expected a '{kind}' run")
    return manifest


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Save a dict of tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> dict:
    """Load safetensors weights; pickle-based files are refused (see :func:`load_state`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file missing")
    if path.suffix in {".pt", ".pth", ".pkl", ".ckpt", ".bin"}:
        raise UserError(f"{path}: pickle checkpoints can execute code and are refused; convert to .safetensors")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid safetensors file ({exc})") from None
