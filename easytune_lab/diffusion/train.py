"""Backbone pretraining with checkpoints and exact resume.

A run directory holds::

    RUN/manifest.json         kind "backbone", the resolved PretrainConfig, seed, parents (data, teacher), status
    RUN/vocab.json            the text vocabulary; RUN/mean.npy, RUN/std.npy the data's normalisation
    RUN/weights.safetensors   final weights
    RUN/metrics.json          loss curve (mean loss per ``log_every`` steps), time
    RUN/checkpoint/           weights.safetensors + optimizer.safetensors (optimiser moments, RNG states) +
                              state.json (step, learning rate, optimiser hyper-parameters, scalar RNG state)

Everything random in a step is a function of the step index or of a saved RNG state: the batch order is a
per-epoch permutation seeded by (seed, epoch); diffusion noise, timesteps and condition dropout come from one
saved ``torch.Generator``; dataset crops and dropout layers use torch's global RNG, also saved. So resuming from a
checkpoint reproduces the uninterrupted run bit for bit on CPU. The checkpoint directory is swapped in whole
(:func:`easytune_lab.runs.checkpoint_writer`): a run killed at any moment resumes from a complete checkpoint.

Under ``torchrun`` (:mod:`easytune_lab.distributed`) the backbone trains in DistributedDataParallel: every rank draws
the same global batch (items, crops, captions) and keeps its ``batch_size / world`` rows; the noise, timesteps and
condition dropout are drawn for the global batch and sliced per rank; frame-averaged losses divide by the global
batch's frame count over the number of ranks. So N processes take the same steps as one process on the combined
batch (dropout layers aside: they get a rank-specific seed). ``accumulate > 1`` sums the gradients of that many
consecutive batches per optimiser step, all-reduced once (``DistributedDataParallel.no_sync``). Only rank 0 writes.
A NaN/Inf loss stops the run (:class:`~easytune_lab.errors.NonFiniteError`) and keeps the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import distributed as dist
from ..data.text import Vocabulary
from ..errors import NonFiniteError, UserError
from ..io import write_json, write_npy
from ..runs import (CHECKPOINT, checkpoint_writer, dataset_identity, find_checkpoint, load_state_strict, load_tensors, make_manifest,
                    manifest_config, read_manifest, read_state_json, save_tensors, weights_file, write_manifest,
                    WEIGHTS)
from .backbone import Backbone
from .registry import PretrainConfig, backbone_spec, replace_known

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ------------------------------------------------------------------------------------------------- configs

def pretrain_config(backbone: str, profile: str, feature_dim: int = 263, **overrides) -> PretrainConfig:
    """The backbone's profile row (``smoke`` tiny, ``quick`` 2-core CPU, ``paper`` GPU sizes) with ``overrides``
    replaced on known :class:`PretrainConfig` fields (``None`` keeps the row's value)."""
    config = backbone_spec(backbone).profile(profile, feature_dim)
    return replace_known(config, overrides, "pretrain")


def _from_dict(cls, data: dict):
    """Rebuild a (nested) dataclass from :func:`config_to_dict` output."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints.get(f.name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(data: dict) -> PretrainConfig:
    config = _from_dict(PretrainConfig, data)
    config.model = _from_dict(backbone_spec(config.backbone).config, data["model"])
    return config


def build_backbone(config: PretrainConfig, vocab: Vocabulary) -> Backbone:
    return backbone_spec(config.backbone).build(config, vocab)


# ------------------------------------------------------------------------------------------------ schedule

def stage_ranges(stages: Sequence[str], fractions: dict, total: int) -> list[tuple[str, int, int]]:
    """[(stage, first step, end step)] covering 0..total; stages without a fraction share what is left."""
    given = sum(float(fractions.get(s, 0.0)) for s in stages)
    rest = [s for s in stages if s not in fractions]
    out, start = [], 0
    for i, s in enumerate(stages):
        frac = float(fractions[s]) if s in fractions else (1.0 - given) / max(len(rest), 1)
        end = total if i == len(stages) - 1 else min(total, start + int(round(frac * total)))
        out.append((s, start, end))
        start = end
    return out


def learning_rate(config: PretrainConfig, step_in_stage: int, stage_len: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_lr_ratio · lr`` at the stage end."""
    warm = min(config.warmup, max(stage_len // 4, 1))
    if step_in_stage < warm:
        return config.lr * (step_in_stage + 1) / warm
    progress = (step_in_stage - warm) / max(stage_len - warm, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The items of training step ``step``: a per-epoch permutation seeded by (seed, epoch), last batch dropped."""
    batch_size = min(batch_size, num_items)
    per_epoch = num_items // batch_size
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_items, generator=gen)
    return perm[k * batch_size:(k + 1) * batch_size].tolist()


# ------------------------------------------------------------------------------------------------ checkpoints

def _rng_state(generator: torch.Generator) -> tuple[dict, dict]:
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.train": generator.get_state(),
               "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    scalars = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
               "python": [py[0], list(py[1]), py[2]]}
    return tensors, scalars


def _set_rng_state(tensors: dict, scalars: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.train"])
    kind, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)


def save_checkpoint(run_dir: Path, model: Backbone, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                    state: dict) -> None:
    """Write RUN/checkpoint/ as a whole: built in a sibling directory (state.json last), then swapped in."""
    with checkpoint_writer(run_dir) as new:
        save_tensors(new / WEIGHTS, model.state_dict())
        opt = optimizer.state_dict()
        tensors, opt_scalars = {}, {}
        for idx, entry in opt["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"state.{idx}.{key}"] = value
                else:
                    opt_scalars[f"{idx}.{key}"] = value
        rng_tensors, rng_scalars = _rng_state(generator)
        tensors.update(rng_tensors)
        save_tensors(new / "optimizer.safetensors", tensors)
        groups = [{k: v for k, v in g.items()} for g in opt["param_groups"]]
        write_json(new / "state.json", {**state, "param_groups": groups, "optimizer_scalars": opt_scalars,
                                        "rng": rng_scalars})


def load_checkpoint(run_dir: Path, model: Backbone, device: torch.device) -> tuple[dict, dict]:
    """Load the checkpoint's weights into ``model``; return (state.json, optimizer/RNG tensors)."""
    ckpt = Path(run_dir) / CHECKPOINT
    if not (ckpt / "state.json").is_file():
        raise UserError(f"--resume: {ckpt} has no checkpoint to resume from")
    load_state_strict(model, load_tensors(ckpt / WEIGHTS, device=str(device)), ckpt / WEIGHTS)
    state = read_state_json(ckpt / "state.json", ("step", "rng", "log", "param_groups"))
    path = ckpt / "optimizer.safetensors"
    tensors = load_tensors(path)
    missing = [k for k in ("rng.torch", "rng.train", "rng.numpy") if k not in tensors]
    if missing:
        raise UserError(f"{path}: not this run's optimiser state (no {', '.join(missing)})")
    params = None
    if isinstance(state.get("stage"), str):
        try:
            params = model.stage_parameters(state["stage"])  # the optimiser's parameters, in its numbering
        except (KeyError, ValueError, NotImplementedError):
            params = None
    for key, value in tensors.items():
        if not key.startswith("state."):
            continue
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteError(f"{path}: optimiser state {key} holds NaN/Inf")
        idx = key.split(".")[1]
        if params is not None and value.dim() > 0 and (not idx.isdigit() or int(idx) >= len(params)
                                                       or tuple(value.shape) != tuple(params[int(idx)].shape)):
            raise UserError(f"{path}: optimiser state {key} does not fit this run's parameters "
                            f"(shape {tuple(value.shape)})")
    return state, tensors


def _restore_optimizer(optimizer: torch.optim.Optimizer, state: dict, tensors: dict) -> None:
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            per_param.setdefault(int(idx), {})[name] = value
    for key, value in state.get("optimizer_scalars", {}).items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"checkpoint/optimizer.safetensors: does not fit this run's optimiser ({exc})") from None


# ------------------------------------------------------------------------------------------------ the loop

@dataclass
class PretrainData:
    """What the loop needs from a dataset: items (``dataset[i]`` -> MotionItem), collate, vocab and statistics."""

    dataset: Any
    collate: Callable
    vocab: Vocabulary
    mean: np.ndarray
    std: np.ndarray
    source: str = ""


def _batches(data: PretrainData, config: PretrainConfig, device: torch.device, step: int,
             dtype: torch.dtype | None = None):
    """The whole global batch of ``step`` (used where every rank needs all of it, e.g. stage preparation)."""
    idx = batch_indices(len(data.dataset), config.batch_size, config.seed, step)
    return data.collate([data.dataset[i] for i in idx]).to(device, dtype)


def _shard_batch(data: PretrainData, config: PretrainConfig, device: torch.device, step: int,
                 dtype: torch.dtype | None = None):
    """This rank's rows of the global batch of ``step``.

    Every rank builds every item of the global batch (their random crops and captions come from torch's global
    generator, which must advance alike on all ranks and as in a single process; an item is a slice of the
    in-memory feature array) and collates only its own rows, padded to the global batch's length so that
    per-row noise lines up with a single process's draw.
    """
    idx = batch_indices(len(data.dataset), config.batch_size, config.seed, step)
    items = [data.dataset[i] for i in idx]
    if dist.world_size() == 1:
        return data.collate(items).to(device, dtype)
    lo, hi = dist.shard_bounds(len(items))
    batch = data.collate(items[lo:hi], pad_to=max(int(it.length) for it in items))
    batch.norm_frames = sum(int(it.length) for it in items) / dist.world_size()
    return batch.to(device, dtype)


class _StageLoss(torch.nn.Module):
    """``forward(stage, batch, noise) -> loss`` of a backbone: the module DistributedDataParallel wraps, so that
    its forward (not a plain method call) builds the graph whose gradients DDP all-reduces."""

    def __init__(self, model: Backbone):
        super().__init__()
        self.model = model

    def forward(self, stage: str, batch, noise) -> torch.Tensor:
        return self.model.loss(stage, batch, noise)


def check_world(config: PretrainConfig, num_items: int) -> None:
    """The global batch must split evenly over the processes (validated before anything is written)."""
    dist.check_divisible(min(config.batch_size, num_items), "--batch-size")


def pretrain(config: PretrainConfig, data: PretrainData, run_dir: str | Path, *, resume: bool = False,
             stop_after: int | None = None, device: torch.device | str = "cpu", progress: bool = True,
             parents: dict | None = None, init: Callable[[Backbone], None] | None = None,
             accumulate: int = 1, dtype: str = "float32") -> dict:
    """Train ``config.backbone`` on ``data`` into ``run_dir``; return the metrics dict.

    ``stop_after`` ends the run after that many steps (writing a checkpoint there), as an interruption would;
    ``resume`` continues from ``RUN/checkpoint`` (or starts afresh if the run was killed before its first
    checkpoint). ``init`` sets initial weights (LCM: from the teacher). ``accumulate`` batches are summed per
    optimiser step; ``dtype`` is the parameters' precision (float64 for exact comparisons). Both are recorded in
    the manifest (not in the config, whose hash keys cached runs). Under torchrun every rank calls this; only
    rank 0 writes.
    """
    from ..runtime import progress_bar as tqdm

    run_dir = Path(run_dir)
    device = torch.device(device)
    ctx = dist.context()
    check_world(config, len(data.dataset))
    dist.barrier()  # every rank has validated its input before rank 0 writes anything
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_backbone(config, data.vocab).to(device, DTYPES[dtype])
    ranges = stage_ranges(model.stages, config.stage_fractions, config.steps)
    state: dict = {"step": 0, "log": {"step": [], "stage": [], "loss": []}, "elapsed": 0.0}
    opt_tensors = None
    has_checkpoint = False
    if resume:
        if ctx.is_main:
            find_checkpoint(run_dir)
        dist.barrier()
        has_checkpoint = (run_dir / CHECKPOINT / "state.json").is_file()
    if has_checkpoint:
        state, opt_tensors = load_checkpoint(run_dir, model, device)
        _set_rng_state(opt_tensors, state["rng"], generator)
    elif init is not None:
        init(model)
    manifest = make_manifest("backbone", config, seed=config.seed, device=str(device),
                             parents={"data": data.source, **(parents or {})},
                             extra={"backbone": config.backbone, "status": "running",
                                    "feature_dim": int(np.asarray(data.mean).shape[0]),
                                    "data_identity": dataset_identity(data.source) if data.source else None,
                                    "training": {"world_size": ctx.world_size, "accumulate": accumulate,
                                                 "dtype": dtype}})
    if ctx.is_main:
        write_manifest(run_dir, manifest)  # first: a run killed after this point can be resumed
        if not has_checkpoint:
            data.vocab.save(run_dir / "vocab.json")
            write_npy(run_dir / "mean.npy", np.asarray(data.mean, dtype=np.float32))
            write_npy(run_dir / "std.npy", np.asarray(data.std, dtype=np.float32))

    step = int(state["step"])
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    bar = tqdm(total=config.steps, initial=step, disable=not (progress and ctx.is_main),
               desc=f"pretrain {config.backbone}", dynamic_ncols=True)
    window: list[float] = list(state.get("window", []))
    optimizer, current, wrapped = None, None, None
    accumulate = max(1, int(accumulate))
    started = time.perf_counter()
    while step < end:
        stage, s0, s1 = next(r for r in ranges if r[1] <= step < r[2])
        if stage != current:
            model.requires_grad_(False)
            params = model.stage_parameters(stage)
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
            if opt_tensors is not None and state.get("stage") == stage:  # resumed inside this stage
                _restore_optimizer(optimizer, state, opt_tensors)
            elif step == s0:
                model.prepare_stage(stage, (_batches(data, config, device, s0 + k, DTYPES[dtype]) for k in range(8)))
            opt_tensors = None
            current = stage
            wrapped = dist.wrap_ddp(_StageLoss(model), device)  # after requires_grad is set for this stage
        lr = learning_rate(config, step - s0, s1 - s0)
        for g in optimizer.param_groups:
            g["lr"] = lr
        model.train()
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64)
        for micro in range(accumulate):
            batch = _shard_batch(data, config, device, step * accumulate + micro, DTYPES[dtype])
            noise = dist.ShardedRandom(generator)
            with dist.no_sync(wrapped, micro < accumulate - 1), dist.rank_rng(config.seed, step, micro, device=device):
                loss = wrapped(stage, batch, noise)
                global_loss = dist.all_reduce_mean(loss.detach())
                if not torch.isfinite(global_loss):
                    _stop_nonfinite(run_dir, manifest, float(global_loss), step, stage)
                (loss / accumulate if accumulate > 1 else loss).backward()
            total += global_loss.double().cpu()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], config.grad_clip)
        optimizer.step()
        model.after_step(stage)
        step += 1
        window.append(float(total) / accumulate)
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{window[-1]:.4f}", lr=f"{lr:.2e}")
        if step % config.log_every == 0 or step == s1:
            state["log"]["step"].append(step)
            state["log"]["stage"].append(stage)
            state["log"]["loss"].append(sum(window) / len(window))
            state["log"].setdefault("lr", []).append(lr)
            window = []
        if step % config.checkpoint_every == 0 or step == end:
            state.update(step=step, stage=stage, lr=lr, window=window,
                         elapsed=float(state.get("elapsed", 0.0)) + time.perf_counter() - started)
            started = time.perf_counter()
            if ctx.is_main:
                save_checkpoint(run_dir, model, optimizer, generator, state)
    bar.close()

    done = step >= config.steps
    metrics = {"steps": step, "complete": done, "log": state["log"],
               "final_loss": state["log"]["loss"][-1] if state["log"]["loss"] else None,
               "train_seconds": float(state.get("elapsed", 0.0)), "world_size": ctx.world_size}
    if ctx.is_main:
        if done:
            save_tensors(run_dir / WEIGHTS, model.state_dict())
        write_json(run_dir / "metrics.json", metrics)
        manifest["status"] = "complete" if done else "interrupted"
        manifest["steps_done"] = step
        write_manifest(run_dir, manifest)
    dist.barrier()  # the other ranks return once rank 0's files are in place
    return metrics


def _stop_nonfinite(run_dir: Path, manifest: dict, value: float, step: int, stage: str):
    """Stop on a NaN/Inf loss: record it in the manifest, keep the last checkpoint, raise one clear line."""
    ckpt = run_dir / CHECKPOINT / "state.json"
    last = json.loads(ckpt.read_text())["step"] if ckpt.is_file() else None
    if dist.is_main():
        manifest.update(status="failed", failure=f"loss {value} at step {step + 1} (stage {stage})")
        write_manifest(run_dir, manifest)
    kept = (f"the last good checkpoint (step {last}) is kept in {run_dir / CHECKPOINT}; "
            "resume it with --resume after changing what diverged") if last is not None else "no checkpoint yet"
    raise NonFiniteError(f"pretrain: the loss became {value} at step {step + 1} (stage {stage}); stopped, {kept}")


def load_backbone(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Backbone, PretrainConfig, dict]:
    """A finished backbone run -> (model in eval mode, its config, its manifest)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir, kind="backbone")
    if manifest.get("status") != "complete" or not weights_file(run_dir).is_file():
        raise UserError(f"{run_dir}: pretraining did not finish (status {manifest.get('status')}); "
                        "continue it with `easytune pretrain --resume`")
    vocab = Vocabulary.load(run_dir / "vocab.json")
    with manifest_config(run_dir):
        config = config_from_dict(manifest["config"])
        model = build_backbone(config, vocab)
    load_state_strict(model, load_tensors(weights_file(run_dir)), weights_file(run_dir))
    return model.to(device).eval(), config, manifest
