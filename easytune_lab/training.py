"""Trainer plumbing: one learning-rate schedule, one checkpoint format, the RNG states a checkpoint carries.

:func:`lr_at` is the schedule of pretraining (per stage), reward training and fine-tuning (through
:func:`lr_scheduler`, a ``LambdaLR``); the evaluator trains at a constant rate. Pretraining and fine-tuning write
and resume checkpoints through :func:`save_checkpoint` and :func:`load_checkpoint` (reward and evaluator training
have no checkpoints: they run in minutes and are rebuilt from the cache).

A checkpoint is the directory ``RUN/checkpoint/``, built aside and swapped in whole
(:func:`easytune_lab.runs.checkpoint_writer`), so a run killed at any moment resumes from a complete one::

    weights.safetensors    the model's state dict
    optimizer.safetensors  optimiser tensors ``state.<parameter index>.<name>`` and RNG tensors: ``rng.torch``
                           (torch's global generator), ``rng.numpy`` (NumPy's global key), ``rng.cuda.<device>``,
                           ``rng.<name>`` for every named ``torch.Generator`` of the trainer
    state.json             written last: the trainer's counters and logs (``step`` or ``iteration``, ...),
                           ``param_groups`` and ``optimizer_scalars`` (the rest of the optimiser's state dict),
                           ``scheduler`` (a LambdaLR's state, or null), ``rng`` (NumPy's and Python's global
                           scalars, and ``generators``: the trainer's named ``numpy.random.Generator`` states),
                           ``config`` (the resolved config) and ``format``

Fine-tuning runs started before this format have ``state.safetensors`` (``model.*``, ``optim.<index>.<name>``,
``rng.noise``, ``rng.torch``) and ``numpy_rng`` in ``state.json`` instead; :func:`load_checkpoint` reads them too
(:func:`_read_legacy_finetune`), so they still resume. Pretraining checkpoints of before are this format without
``scheduler``, ``config`` and ``rng.generators``.

Every damaged or mismatching checkpoint file is one :class:`~easytune_lab.errors.UserError` line naming the file,
raised while loading: before the resumed run writes anything.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import NonFiniteError, UserError
from .io import write_json
from .runs import (CHECKPOINT, WEIGHTS, checkpoint_writer, config_to_dict, load_state_strict, load_tensors,
                   read_state_json, save_tensors)

SCHEDULES = ("constant", "cosine")
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"
FORMAT = 2
LEGACY_FINETUNE = "state.safetensors"   # fine-tuning checkpoints before FORMAT 2


# ------------------------------------------------------------------------------------------------ learning rate

def lr_at(step: int, base_lr: float, warmup: int, total: int, schedule: str = "cosine",
          min_ratio: float = 0.0) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``.

    Linear warm-up over the first ``warmup`` steps, ``base_lr · (step + 1) / warmup``; then ``constant``:
    ``base_lr``, or ``cosine``: half a cosine from ``base_lr`` down to ``min_ratio · base_lr`` at step ``total``
    (SGDR, Loshchilov & Hutter 2017, without restarts)::

        lr = base_lr · (min_ratio + (1 - min_ratio) · ½ (1 + cos(π · min(1, (step - warmup) / (total - warmup)))))

    E.g. ``base_lr = 1, warmup = 2, total = 6, cosine``: 0.5, 1, 1, 0.854, 0.5, 0.146, then 0 from step 6 on.
    With ``base_lr = 1`` it is the multiplier a ``LambdaLR`` applies (:func:`lr_scheduler`).
    """
    if schedule not in SCHEDULES:
        raise UserError(f"lr_schedule: must be {' or '.join(SCHEDULES)} (got '{schedule}')")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr * 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return base_lr * (min_ratio + (1 - min_ratio) * cosine)


def lr_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int, schedule: str = "cosine",
                 min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` whose multiplier at step s is ``lr_at(s, 1, warmup, total, schedule, min_ratio)``; call its
    ``step()`` after every optimiser step."""
    lr_at(0, 1.0, warmup, total, schedule, min_ratio)  # an unknown schedule is refused here, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, 1.0, warmup, total, schedule, min_ratio))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (trainers that compute :func:`lr_at` themselves)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------------------ RNG states

def rng_state(generators: Mapping[str, torch.Generator] = {},
              numpy_generators: Mapping[str, np.random.Generator] = {}) -> tuple[dict, dict]:
    """(tensors, JSON scalars) of the global torch/CUDA/NumPy/Python generators and the named ones."""
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state()}
    tensors.update({f"rng.{name}": g.get_state() for name, g in generators.items()})
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    scalars = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
               "python": [py[0], list(py[1]), py[2]],
               "generators": {name: g.bit_generator.state for name, g in numpy_generators.items()}}
    return tensors, scalars


def required_rng(generators: Sequence[str] = ()) -> tuple[str, ...]:
    """The RNG tensors a checkpoint of a trainer with these named torch generators must hold."""
    return ("rng.torch", *(f"rng.{name}" for name in generators), "rng.numpy")


def set_rng_state(tensors: Mapping[str, torch.Tensor], scalars: Mapping[str, Any],
                  generators: Mapping[str, torch.Generator] = {},
                  numpy_generators: Mapping[str, np.random.Generator] = {}) -> None:
    """Restore what :func:`rng_state` captured (global states a legacy checkpoint lacks are left as they are)."""
    torch.set_rng_state(tensors["rng.torch"])
    for name, g in generators.items():
        g.set_state(tensors[f"rng.{name}"])
    if "rng.numpy" in tensors and "numpy" in scalars:
        kind, pos, has_gauss, cached = scalars["numpy"]
        np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    if "python" in scalars:
        version, internal, gauss = scalars["python"]
        random.setstate((version, tuple(internal), gauss))
    for name, g in numpy_generators.items():
        g.bit_generator.state = scalars["generators"][name]
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)


# ------------------------------------------------------------------------------------------------ checkpoints

def save_checkpoint(run_dir: str | os.PathLike, model_state: Mapping[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, state: dict, *,
                    generators: Mapping[str, torch.Generator] = {},
                    numpy_generators: Mapping[str, np.random.Generator] = {},
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, config: Any = None,
                    name: str = CHECKPOINT) -> None:
    """Write ``RUN/<name>/`` as a whole (built aside, ``state.json`` last, then swapped in): the model's state dict,
    the optimiser, the scheduler, every RNG state, the config and the trainer's ``state`` (counters, logs)."""
    with checkpoint_writer(run_dir, name) as new:
        save_tensors(new / WEIGHTS, dict(model_state))
        opt = optimizer.state_dict()
        tensors, opt_scalars = {}, {}
        for idx, entry in opt["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"state.{idx}.{key}"] = value
                else:
                    opt_scalars[f"{idx}.{key}"] = value
        rng_tensors, rng_scalars = rng_state(generators, numpy_generators)
        tensors.update(rng_tensors)
        save_tensors(new / OPTIMIZER, tensors)
        groups = [dict(g) for g in opt["param_groups"]]
        write_json(new / STATE, {**state, "param_groups": groups, "optimizer_scalars": opt_scalars,
                                 "scheduler": None if scheduler is None else scheduler.state_dict(),
                                 "rng": rng_scalars, "config": None if config is None else config_to_dict(config),
                                 "format": FORMAT})


@dataclass
class Checkpoint:
    """A loaded checkpoint: the trainer's ``state`` (state.json) and the optimiser/RNG ``tensors``; the model's
    weights are already in the model. ``restore`` puts the rest back."""

    path: Path
    state: dict
    tensors: dict
    legacy: bool = False
    optimizer_file: Path = field(default=Path(OPTIMIZER))

    def restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Load the optimiser's moments (and, unless legacy, its hyper-parameters) into ``optimizer``."""
        per_param: dict[int, dict] = {}
        for key, value in self.tensors.items():
            if key.startswith("state."):
                _, idx, name = key.split(".", 2)
                per_param.setdefault(int(idx), {})[name] = value
        for key, value in self.state.get("optimizer_scalars", {}).items():
            idx, name = key.split(".", 1)
            per_param.setdefault(int(idx), {})[name] = value
        groups = self.state.get("param_groups") or optimizer.state_dict()["param_groups"]
        try:
            optimizer.load_state_dict({"state": per_param, "param_groups": groups})
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.optimizer_file}: does not fit this run's optimiser ({exc})") from None

    def restore_scheduler(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        """Load the scheduler's state and set the optimiser's learning rates to its last ones."""
        scheduler.load_state_dict(self.state["scheduler"])
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr

    def restore_rng(self, generators: Mapping[str, torch.Generator] = {},
                    numpy_generators: Mapping[str, np.random.Generator] = {}) -> None:
        set_rng_state(self.tensors, self.state.get("rng", {}), generators, numpy_generators)

    def restore(self, optimizer: torch.optim.Optimizer | None = None,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                generators: Mapping[str, torch.Generator] = {},
                numpy_generators: Mapping[str, np.random.Generator] = {}) -> None:
        """Optimiser, scheduler and RNG states, as saved."""
        if optimizer is not None:
            self.restore_optimizer(optimizer)
        if scheduler is not None:
            self.restore_scheduler(scheduler)
        self.restore_rng(generators, numpy_generators)


def has_checkpoint(run_dir: str | os.PathLike, name: str = CHECKPOINT) -> bool:
    """Whether ``RUN/<name>/`` holds a complete checkpoint (its ``state.json``)."""
    return (Path(run_dir) / name / STATE).is_file()


def load_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, *, required: Sequence[str] = (),
                    generators: Sequence[str] = (), numpy_generators: Sequence[str] = (),
                    params: Callable[[dict], Sequence[torch.Tensor] | None] | None = None,
                    device: torch.device | str = "cpu", name: str = CHECKPOINT) -> Checkpoint:
    """Read ``RUN/<name>/`` (this format or a legacy fine-tuning one) and load its weights into ``model``.

    ``required``: the trainer's keys ``state.json`` must hold; ``generators``/``numpy_generators``: the names of the
    trainer's own generators the checkpoint must hold; ``params(state)``: the parameters the optimiser state must
    fit (checked by shape), or None. Every file is checked here, so a damaged one is one line naming it before the
    resumed run writes anything.
    """
    ckpt = Path(run_dir) / name
    if not (ckpt / STATE).is_file():
        raise UserError(f"--resume: {ckpt} has no checkpoint to resume from")
    if (ckpt / LEGACY_FINETUNE).is_file() and not (ckpt / OPTIMIZER).is_file():
        return _read_legacy_finetune(ckpt, model, required, generators, numpy_generators, params)
    state = read_state_json(ckpt / STATE, (*required, "rng", "param_groups"))
    if not isinstance(state["rng"], dict) or any(k not in state["rng"].get("generators", {})
                                                 for k in numpy_generators):
        raise UserError(f"{ckpt / STATE}: damaged checkpoint state (no RNG state of {', '.join(numpy_generators)})"
                        f"; remove {ckpt} to resume from the start")
    load_state_strict(model, load_tensors(ckpt / WEIGHTS, device=str(device)), ckpt / WEIGHTS)
    path = ckpt / OPTIMIZER
    tensors = load_tensors(path)
    missing = [k for k in required_rng(generators) if k not in tensors]
    if missing:
        raise UserError(f"{path}: not this run's optimiser state (no {', '.join(missing)})")
    _check_optimizer_tensors(path, tensors, "state.", params(state) if params is not None else None)
    return Checkpoint(ckpt, state, tensors, optimizer_file=path)


def _check_optimizer_tensors(path: Path, tensors: dict, prefix: str, params: Sequence[torch.Tensor] | None) -> None:
    """Optimiser tensors are finite and, given the parameters, fit them by index and shape."""
    params = None if params is None else list(params)
    for key, value in tensors.items():
        if not key.startswith(prefix):
            continue
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteError(f"{path}: optimiser state {key} holds NaN/Inf")
        idx = key[len(prefix):].split(".")[0]
        if params is not None and value.dim() > 0 and (not idx.isdigit() or int(idx) >= len(params)
                                                       or tuple(value.shape) != tuple(params[int(idx)].shape)):
            raise UserError(f"{path}: optimiser state {key} does not fit this run's parameters "
                            f"(shape {tuple(value.shape)})")


def _read_legacy_finetune(ckpt: Path, model: torch.nn.Module, required: Sequence[str], generators: Sequence[str],
                          numpy_generators: Sequence[str], params) -> Checkpoint:
    """A fine-tuning checkpoint written before FORMAT 2: ``state.safetensors`` holds the model (``model.*``), the
    optimiser (``optim.<index>.<name>``) and the RNGs; ``state.json`` the NumPy generator (``numpy_rng``) and the
    scheduler. Converted to this format in memory (the optimiser keeps its current hyper-parameters)."""
    keys = [k for k in required if k not in ("param_groups", "rng")]
    state = read_state_json(ckpt / STATE, (*keys, "numpy_rng"))
    path = ckpt / LEGACY_FINETUNE
    tensors = load_tensors(path, device="cpu")
    load_state_strict(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    missing = [k for k in (f"rng.{g}" for g in generators) if k not in tensors] + \
        ([] if "rng.torch" in tensors else ["rng.torch"])
    if missing:
        raise UserError(f"{path}: not this run's checkpoint state (no {', '.join(missing)})")
    _check_optimizer_tensors(path, tensors, "optim.", params(state) if params is not None else None)
    converted = {f"state.{k[len('optim.'):]}": v for k, v in tensors.items() if k.startswith("optim.")}
    converted.update({k: v for k, v in tensors.items() if k.startswith("rng.")})
    names = list(numpy_generators)
    state["rng"] = {"generators": {names[0]: state.pop("numpy_rng")}} if names else {}
    state.setdefault("param_groups", None)
    return Checkpoint(ckpt, state, converted, legacy=True, optimizer_file=path)
