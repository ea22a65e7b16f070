"""Backbone pretraining with checkpoints and exact resume.

A run directory holds::

    RUN/manifest.json         kind "backbone", the resolved PretrainConfig, seed, parents (data, teacher), status
    RUN/vocab.json            the text vocabulary; RUN/mean.npy, RUN/std.npy the data's normalisation
    RUN/weights.safetensors   final weights
    RUN/metrics.json          loss curve (mean loss per ``log_every`` steps), time
    RUN/checkpoint/           the shared checkpoint format (:mod:`easytune_lab.training`): weights, optimiser
                              moments and RNG states, state.json (step, stage, learning rate, loss log, config)

Everything random in a step is a function of the step index or of a saved RNG state: the batch order is a
per-epoch permutation seeded by (seed, epoch); diffusion noise, timesteps and condition dropout come from one
saved ``torch.Generator``; dataset crops and dropout layers use torch's global RNG, also saved. So resuming from a
checkpoint reproduces the uninterrupted run bit for bit on CPU. The checkpoint directory is swapped in whole
(:func:`easytune_lab.training.save_checkpoint`): a run killed at any moment resumes from a complete checkpoint.

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
from ..runs import (CHECKPOINT, WEIGHTS, dataset_identity, find_checkpoint, load_state_strict, load_tensors,
                    make_manifest, manifest_config, read_manifest, save_tensors, weights_file, write_manifest)
from ..runtime import progress_bar as tqdm, seed_everything
from ..training import Checkpoint, has_checkpoint, load_checkpoint, lr_at, save_checkpoint, set_lr
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
    """Linear warm-up over ``warmup`` steps (at most a quarter of the stage), then cosine decay to
    ``min_lr_ratio · lr`` at the stage end (:func:`easytune_lab.training.lr_at` over the stage)."""
    warm = min(config.warmup, max(stage_len // 4, 1))
    return lr_at(step_in_stage, config.lr, warm, stage_len, "cosine", config.min_lr_ratio)


def batch_indices(num_items: int, batch_size: int, seed: int, step: int) -> list[int]:
    """The items of training step ``step``: a per-epoch permutation seeded by (seed, epoch), last batch dropped."""
    batch_size = min(batch_size, num_items)
    per_epoch = num_items // batch_size
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_items, generator=gen)
    return perm[k * batch_size:(k + 1) * batch_size].tolist()


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
    run_dir, device, ctx = Path(run_dir), torch.device(device), dist.context()
    check_world(config, len(data.dataset))
    dist.barrier()  # every rank has validated its input before rank 0 writes anything
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = build_backbone(config, data.vocab).to(device, DTYPES[dtype])
    ranges = stage_ranges(model.stages, config.stage_fractions, config.steps)
    state, ckpt = _start_or_resume(run_dir, model, generator, resume, device, init)
    manifest = _manifest(config, data, device, parents, accumulate, dtype)
    if ctx.is_main:
        _write_run_start(run_dir, manifest, data, fresh=ckpt is None)

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
            optimizer, wrapped = _enter_stage(model, stage, s0, step, config, data, device, dtype, ckpt)
            ckpt, current = None, stage  # the checkpoint's optimiser state belongs to the first stage entered
        lr = learning_rate(config, step - s0, s1 - s0)
        set_lr(optimizer, lr)
        window.append(_train_step(model, wrapped, optimizer, stage, step, config, data, device, dtype, generator,
                                  accumulate, lambda value: _stop_nonfinite(run_dir, manifest, value, step, stage)))
        step += 1
        bar.update(1)
        bar.set_postfix(stage=stage, loss=f"{window[-1]:.4f}", lr=f"{lr:.2e}")
        if step % config.log_every == 0 or step == s1:
            for key, value in (("step", step), ("stage", stage), ("loss", sum(window) / len(window)), ("lr", lr)):
                state["log"].setdefault(key, []).append(value)
            window = []
        if step % config.checkpoint_every == 0 or step == end:
            state.update(step=step, stage=stage, lr=lr, window=window,
                         elapsed=float(state.get("elapsed", 0.0)) + time.perf_counter() - started)
            started = time.perf_counter()
            if ctx.is_main:
                save_checkpoint(run_dir, model.state_dict(), optimizer, state, generators={"train": generator},
                                config=config)
    bar.close()
    return _finish(run_dir, model, manifest, state, step, config)


def _stage_parameters(model: Backbone, state: dict) -> list | None:
    """The parameters the checkpoint's optimiser trained (its stage's, in its numbering), or None if unknown."""
    if not isinstance(state.get("stage"), str):
        return None
    try:
        return model.stage_parameters(state["stage"])
    except (KeyError, ValueError, NotImplementedError):
        return None


def _start_or_resume(run_dir: Path, model: Backbone, generator: torch.Generator, resume: bool,
                     device: torch.device, init: Callable[[Backbone], None] | None) -> tuple[dict, Checkpoint | None]:
    """(training state, checkpoint or None): the checkpoint's weights and RNG states when resuming one, else the
    initial weights (``init``) and an empty log."""
    if resume:
        if dist.is_main():
            find_checkpoint(run_dir)  # repairs a checkpoint swap cut short by a kill
        dist.barrier()
        if has_checkpoint(run_dir):  # none yet: killed before its first checkpoint, start afresh
            ckpt = load_checkpoint(run_dir, model, required=("step", "log"), generators=("train",),
                                   params=lambda state: _stage_parameters(model, state), device=device)
            ckpt.restore_rng({"train": generator})
            return ckpt.state, ckpt
    if init is not None:
        init(model)
    return {"step": 0, "log": {"step": [], "stage": [], "loss": []}, "elapsed": 0.0}, None


def _manifest(config: PretrainConfig, data: PretrainData, device: torch.device, parents: dict | None,
              accumulate: int, dtype: str) -> dict:
    return make_manifest("backbone", config, seed=config.seed, device=str(device),
                         parents={"data": data.source, **(parents or {})},
                         extra={"backbone": config.backbone, "status": "running",
                                "feature_dim": int(np.asarray(data.mean).shape[0]),
                                "data_identity": dataset_identity(data.source) if data.source else None,
                                "training": {"world_size": dist.world_size(), "accumulate": accumulate,
                                             "dtype": dtype}})


def _write_run_start(run_dir: Path, manifest: dict, data: PretrainData, fresh: bool) -> None:
    """The manifest first (a run killed after this point can be resumed), then, unless resuming, the vocabulary and
    normalisation statistics."""
    write_manifest(run_dir, manifest)
    if fresh:
        data.vocab.save(run_dir / "vocab.json")
        write_npy(run_dir / "mean.npy", np.asarray(data.mean, dtype=np.float32))
        write_npy(run_dir / "std.npy", np.asarray(data.std, dtype=np.float32))


def _enter_stage(model: Backbone, stage: str, s0: int, step: int, config: PretrainConfig, data: PretrainData,
                 device: torch.device, dtype: str, ckpt: Checkpoint | None):
    """(optimizer, DDP-wrapped loss) of ``stage``: only its parameters train; the optimiser state is the
    checkpoint's when resuming inside the stage, and a stage entered at its first step is prepared
    (:meth:`Backbone.prepare_stage`, e.g. MLD's latent scale) on its first eight batches."""
    model.requires_grad_(False)
    params = model.stage_parameters(stage)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if ckpt is not None and ckpt.state.get("stage") == stage:  # resumed inside this stage
        ckpt.restore_optimizer(optimizer)
    elif step == s0:
        model.prepare_stage(stage, (_batches(data, config, device, s0 + k, DTYPES[dtype]) for k in range(8)))
    return optimizer, dist.wrap_ddp(_StageLoss(model), device)  # after requires_grad is set for this stage


def _train_step(model: Backbone, wrapped, optimizer: torch.optim.Optimizer, stage: str, step: int,
                config: PretrainConfig, data: PretrainData, device: torch.device, dtype: str,
                generator: torch.Generator, accumulate: int, on_nonfinite: Callable[[float], None]) -> float:
    """One optimiser step of ``stage`` on ``accumulate`` consecutive batches; returns the mean global loss."""
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
                on_nonfinite(float(global_loss))
            (loss / accumulate if accumulate > 1 else loss).backward()
        total += global_loss.double().cpu()
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], config.grad_clip)
    optimizer.step()
    model.after_step(stage)
    return float(total) / accumulate


def _finish(run_dir: Path, model: Backbone, manifest: dict, state: dict, step: int, config: PretrainConfig) -> dict:
    """Rank 0 writes the final weights (when complete), metrics and manifest status; every rank returns metrics."""
    done = step >= config.steps
    metrics = {"steps": step, "complete": done, "log": state["log"],
               "final_loss": state["log"]["loss"][-1] if state["log"]["loss"] else None,
               "train_seconds": float(state.get("elapsed", 0.0)), "world_size": dist.world_size()}
    if dist.is_main():
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
