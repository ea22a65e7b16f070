"""Trainer plumbing: one learning-rate schedule, one checkpoint format, one resume path.

:func:`lr_at` is the schedule of every trainer: pretraining computes it per stage, fine-tuning through
:func:`lr_scheduler` (a ``LambdaLR``), reward and evaluator training through :class:`LRSchedule` (the evaluator's
rate is ``constant``). Every trainer writes and resumes checkpoints through :func:`save_checkpoint` and
:func:`load_checkpoint`; reward and evaluator training resume through :func:`resume_checkpoint` (see
:class:`Checkpointing`), which adds the check that the saved config is the run's.

A checkpoint is the directory ``RUN/checkpoint/``, built aside and swapped in whole
(:func:`easytune_lab.runs.checkpoint_writer`), so a run killed at any moment resumes from a complete one::

    weights.safetensors    the model's state dict
    <name>.safetensors     further state dicts of the model the trainer keeps (the evaluator's best epoch: best)
    optimizer.safetensors  optimiser tensors ``state.<parameter index>.<name>`` and RNG tensors: ``rng.torch``
                           (torch's global generator), ``rng.numpy`` (NumPy's global key), ``rng.cuda.<device>``,
                           ``rng.<name>`` for every named ``torch.Generator`` of the trainer
    state.json             written last: the trainer's counters and logs (``step``, ``iteration`` or ``epoch``, ...),
                           ``param_groups`` and ``optimizer_scalars`` (the rest of the optimiser's state dict),
                           ``scheduler`` (an LR scheduler's state, or null), ``rng`` (NumPy's and Python's global
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

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import distributed as dist
from .errors import NonFiniteError, UserError
from .io import write_json
from .runs import (CHECKPOINT, WEIGHTS, checkpoint_writer, config_to_dict, find_checkpoint, load_state_strict,
                   load_tensors, read_state_json, save_tensors)

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


class LRSchedule(torch.optim.lr_scheduler.LRScheduler):
    """The learning rate of step s is ``lr_at(s, base_lr, warmup, total, schedule, min_ratio)`` for every parameter
    group's base rate: the value :func:`lr_at` gives, bit for bit (a ``LambdaLR`` multiplies ``base_lr`` by
    ``lr_at(s, 1, ...)``, which can differ in the last digit during warm-up). Call ``step()`` after every optimiser
    step; its ``state_dict()`` is plain JSON (the checkpoint's ``scheduler``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, total: int, schedule: str = "cosine",
                 min_ratio: float = 0.0):
        lr_at(0, 1.0, warmup, total, schedule, min_ratio)  # an unknown schedule is refused here
        self.warmup, self.total, self.schedule, self.min_ratio = int(warmup), int(total), schedule, float(min_ratio)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [lr_at(self.last_epoch, base, self.warmup, self.total, self.schedule, self.min_ratio)
                for base in self.base_lrs]


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
                    extra_weights: Mapping[str, Mapping[str, torch.Tensor]] = {},
                    name: str = CHECKPOINT) -> None:
    """Write ``RUN/<name>/`` as a whole (built aside, ``state.json`` last, then swapped in): the model's state dict,
    the optimiser, the scheduler, every RNG state, the config and the trainer's ``state`` (counters, logs).
    ``extra_weights``: further state dicts of the same model, each written as ``<key>.safetensors``."""
    with checkpoint_writer(run_dir, name) as new:
        save_tensors(new / WEIGHTS, dict(model_state))
        for key, weights in extra_weights.items():
            save_tensors(new / f"{key}.safetensors", dict(weights))
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
    weights: dict = field(default_factory=dict)   # the extra state dicts asked for, by name

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
                    extra_weights: Sequence[str] = (), device: torch.device | str = "cpu",
                    name: str = CHECKPOINT) -> Checkpoint:
    """Read ``RUN/<name>/`` (this format or a legacy fine-tuning one) and load its weights into ``model``.

    ``required``: the trainer's keys ``state.json`` must hold; ``generators``/``numpy_generators``: the names of the
    trainer's own generators the checkpoint must hold; ``params(state)``: the parameters the optimiser state must
    fit (checked by shape), or None; ``extra_weights``: the further state dicts of ``model`` it must hold (checked
    against ``model`` like its weights, returned in :attr:`Checkpoint.weights`). Every file is checked here, so a
    damaged one is one line naming it before the resumed run writes anything.
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
    extra = {}
    for key in extra_weights:  # each is checked by loading it into the model, which the weights then overwrite
        extra[key] = load_tensors(ckpt / f"{key}.safetensors", device=str(device))
        load_state_strict(model, extra[key], ckpt / f"{key}.safetensors")
    load_state_strict(model, load_tensors(ckpt / WEIGHTS, device=str(device)), ckpt / WEIGHTS)
    path = ckpt / OPTIMIZER
    tensors = load_tensors(path)
    missing = [k for k in required_rng(generators) if k not in tensors]
    if missing:
        raise UserError(f"{path}: not this run's optimiser state (no {', '.join(missing)})")
    _check_optimizer_tensors(path, tensors, "state.", params(state) if params is not None else None)
    return Checkpoint(ckpt, state, tensors, optimizer_file=path, weights=extra)


# ------------------------------------------------------------------------------------------------ resume path

@dataclass
class Checkpointing:
    """How a trainer checkpoints and resumes (reward and evaluator training; units are the trainer's: epochs).

    ``run_dir``: where ``RUN/checkpoint/`` goes; ``every``: units between checkpoints (one is also written at the
    end and at ``stop_after``); ``resume``: continue from the checkpoint (:func:`resume_checkpoint`);
    ``stop_after``: end after that many units with a checkpoint, as an interruption would; ``settings``: JSON
    values besides the trainer's own config that decide the run (seed, dataset identity, parent runs), saved in
    the checkpoint's ``config`` and required to be the same on resume. ``resumed`` is the state of the checkpoint
    the trainer resumed from (None for a fresh start).
    """

    run_dir: Path
    every: int = 1
    resume: bool = False
    stop_after: int | None = None
    settings: dict = field(default_factory=dict)
    resumed: dict | None = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        if int(self.every) < 1:
            raise UserError(f"checkpoint_every: must be >= 1 (got {self.every})")
        if self.stop_after is not None and int(self.stop_after) < 1:
            raise UserError(f"stop_after: must be >= 1 (got {self.stop_after})")

    def end(self, total: int) -> int:
        """Where the loop of ``total`` units stops: ``total``, or ``stop_after`` when it comes first."""
        return total if self.stop_after is None else min(total, int(self.stop_after))

    def due(self, done: int, total: int) -> bool:
        """Whether a checkpoint is written once ``done`` units are done."""
        return done % int(self.every) == 0 or done == self.end(total)


def _flat(value: Any, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def resume_checkpoint(run_dir: str | os.PathLike, model: torch.nn.Module, *, config: Any,
                      optimizer: torch.optim.Optimizer | None = None,
                      scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                      required: Sequence[str] = (), generators: Mapping[str, torch.Generator] = {},
                      numpy_generators: Mapping[str, np.random.Generator] = {}, extra_weights: Sequence[str] = (),
                      params: Callable[[dict], Sequence[torch.Tensor] | None] | None = None,
                      device: torch.device | str = "cpu", name: str = CHECKPOINT) -> Checkpoint | None:
    """The resume path: rank 0 repairs a checkpoint swap cut short by a kill (:func:`find_checkpoint`); then, if
    ``RUN/<name>/`` holds a complete checkpoint, every rank loads it (:func:`load_checkpoint`), checks that it was
    saved with ``config`` (compared as JSON, naming the settings that differ) and restores the optimiser, the
    scheduler and every RNG state. None when there is none yet (killed before the first checkpoint): the run
    starts afresh."""
    if dist.is_main():
        find_checkpoint(run_dir, name)
    dist.barrier()
    if not has_checkpoint(run_dir, name):
        return None
    ckpt = load_checkpoint(run_dir, model, required=(*required, "config"), generators=tuple(generators),
                           numpy_generators=tuple(numpy_generators), params=params, extra_weights=extra_weights,
                           device=device, name=name)
    saved, now = _flat(ckpt.state["config"]), _flat(json.loads(json.dumps(config_to_dict(config))))
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k, "<absent>") != now.get(k, "<absent>"))
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise UserError(f"{ckpt.path}: saved by a run with other settings ({shown}); resuming continues the saved "
                        f"run with the same settings (or remove {ckpt.path} to start afresh)")
    if optimizer is not None and not ckpt.state.get("param_groups"):
        raise UserError(f"{ckpt.path / STATE}: damaged checkpoint state (no optimiser parameter groups); remove "
                        f"{ckpt.path} to resume from the start")
    if scheduler is not None and not isinstance(ckpt.state.get("scheduler"), dict):
        raise UserError(f"{ckpt.path / STATE}: damaged checkpoint state (no scheduler state); remove {ckpt.path} "
                        "to resume from the start")
    ckpt.restore(optimizer, scheduler, generators, numpy_generators)
    return ckpt


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
