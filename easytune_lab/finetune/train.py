"""A fine-tuning run: base backbone + reward + captions -> fine-tuned backbone, for every method.

Each iteration draws a batch of training captions (with their ground-truth lengths), asks the method's policy
for a plan over the T denoising steps, and runs :func:`easytune_lab.finetune.loop.run_trajectory`. The
optimiser (AdamW), gradient clipping, the learning-rate schedule (counted in optimiser steps), memory/time
probes, checkpoints and evaluation are the same for every method.

The result is a backbone run (``kind: backbone``) whose manifest also records the fine-tuning, so
``easytune eval --model RUN`` and ``easytune sample --run RUN`` work on it unchanged::

    RUN/manifest.json  base backbone config + "finetune" (FinetuneConfig, base/reward runs, status)
    RUN/weights.safetensors, RUN/vocab.json, RUN/mean.npy, RUN/std.npy
    RUN/metrics.json   per-iteration reward/loss/memory/time, evaluations
    RUN/checkpoint/    weights + optimiser state + RNG state for --resume (swapped in whole: a run killed at
                       any moment resumes from a complete checkpoint)

Under ``torchrun`` every rank draws the same global batch of captions and samples its ``batch_size / world`` rows
(noise drawn for the global batch and sliced); the trainable gradients are averaged with one all-reduce before
each optimiser step (:class:`~easytune_lab.distributed.GradientSync`, see :mod:`.loop` for why not a DDP-wrapped
forward), so N processes take the steps one process takes on the combined batch. ``accumulate`` (all methods)
sums a trajectory's per-step gradients into one optimiser step and one all-reduce. Only rank 0 evaluates and
writes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import distributed as dist
from ..data.humanml import HumanMLDataset
from ..diffusion.generate import load_generator
from ..diffusion.registry import backbone_spec
from ..diffusion.sampling import Predictor
from ..diffusion.trajectory import BackboneTrajectory
from ..errors import NonFiniteError, UserError
from ..io import write_json
from ..memory import memory_probe
from ..reward.retrieval import load_reward
from ..runs import (MANIFEST, check_resume_parents, config_to_dict, dataset_identity, find_checkpoint,
                    make_manifest, never_started, read_manifest, write_manifest)
from ..runtime import FAST_PATHS, check_profile, compile_forward, progress_bar as tqdm
from ..training import has_checkpoint, load_checkpoint, lr_scheduler, save_checkpoint
from .adapters import reward_function
from .choices import GRADIENT_AT, REWARD_SCALES, SCHEDULE_CLOCKS
from .loop import LoopConfig, StartParameters, TrajectoryStats, run_trajectory
from .lora import LoraConfig, check_lora, save_weights, trainable_parameters
from .methods import QUICK_LR_PER_TRAJECTORY, method_spec
from .periodic_eval import PeriodicEvaluator, postfix
from .policy import TRAIN_STEPS, PolicyConfig
from .presets import preset as find_preset

CHECKPOINT = "checkpoint"


@dataclass
class FinetuneConfig:
    """One fine-tuning run (paper Sec. 4 / Alg. 1 for EasyTune; the baselines share every other setting)."""

    method: str = "easytune"
    profile: str = "smoke"
    iterations: int = 4               # trajectories (batches of captions)
    batch_size: int = 4
    sampler: str = "ddim"             # ODE sampler: the reward is taken on x̂0 (paper Eq. 9)
    sample_steps: int = 10            # T
    guidance: float = 2.5
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup: int = 0                   # warm-up length, in units of schedule_clock
    lr_schedule: str = "constant"     # constant | cosine (over the run's length in units of schedule_clock)
    schedule_clock: str = "updates"   # what the schedule counts: "updates" (optimiser steps: EasyTune, with one
                                      # per trained step, moves through warm-up T× faster than a one-update method)
                                      # or "trajectories" (the same clock for every method)
    seed: int = 0
    eval_every: int = 0               # iterations between reward evaluations on held-out captions (0 = end only)
    eval_captions: int = 16
    eval_motions: int = 128           # test-split clips scored with the T2M evaluator + oracle (--evaluator; 0 = all)
    checkpoint_every: int = 0         # iterations (0 = only at the end)
    preset: str = ""                  # the preset the options came from (finetune/presets.py), "" for none
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)  # rank 0: full fine-tuning of the denoiser


#: The profiles, one row each (the method's own policy defaults and tuned lr are set from its
#: :class:`~easytune_lab.finetune.methods.MethodSpec`): ``smoke`` (seconds), ``quick`` (a 2-core CPU: 16 trajectories
#: of 8 captions, T = 50, a few minutes per run; lr: DRaFT's best of a grid, EasyTune its own, see
#: :data:`~easytune_lab.finetune.methods.QUICK_LR_PER_STEP`), ``paper`` (GPU).
PROFILES: dict[str, FinetuneConfig] = {
    "smoke": FinetuneConfig(profile="smoke", iterations=4, batch_size=4, sample_steps=10, lr=1e-4, eval_captions=8,
                            eval_motions=32),
    "quick": FinetuneConfig(profile="quick", iterations=16, batch_size=8, sample_steps=50, lr=QUICK_LR_PER_TRAJECTORY,
                            eval_every=8, eval_captions=32, checkpoint_every=8),
    "paper": FinetuneConfig(profile="paper", iterations=1000, batch_size=32, sample_steps=50, lr=1e-5, warmup=100,
                            lr_schedule="cosine", eval_every=100, eval_captions=256, eval_motions=1024,
                            checkpoint_every=100),
}

#: Where each override key of :func:`finetune_config` goes: (section of FinetuneConfig or None, field).
_NOT_OVERRIDES = ("method", "profile", "preset")
OVERRIDES: dict[str, tuple[str | None, str]] = {
    **{f.name: (None, f.name) for f in dataclasses.fields(FinetuneConfig) if f.name not in _NOT_OVERRIDES},
    **{f.name: ("policy", f.name) for f in dataclasses.fields(PolicyConfig)},
    **{f.name: ("loop", f.name) for f in dataclasses.fields(LoopConfig)},
    **{f"lora_{f.name}": ("lora", f.name) for f in dataclasses.fields(LoraConfig)},
}


def with_overrides(cfg: FinetuneConfig, overrides: dict) -> FinetuneConfig:
    """``cfg`` with ``overrides`` replaced (``dataclasses.replace``) on known fields: FinetuneConfig's own, its
    ``policy``'s and ``loop``'s by their names, its ``lora``'s as ``lora_<field>``; ``None`` keeps the value. An
    unknown key is one line listing the valid ones."""
    unknown = [k for k in overrides if k not in OVERRIDES]
    if unknown:
        raise UserError(f"finetune: unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(k) for k in unknown)} (valid: {', '.join(OVERRIDES)})")
    top: dict = {}
    sections: dict[str, dict] = {}
    for key, value in overrides.items():
        if value is not None:
            section, name = OVERRIDES[key]
            (top if section is None else sections.setdefault(section, {}))[name] = value
    cfg = dataclasses.replace(cfg, **top) if top else cfg
    parts = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in sections.items()}
    return dataclasses.replace(cfg, **parts) if parts else cfg


def finetune_config(method: str, profile: str, preset: str | None = None, backbone: str | None = None,
                    **overrides) -> FinetuneConfig:
    """The profile's row for ``method`` (its policy defaults and its lr tuned for the profile, and for ``backbone``
    where that backbone was tuned on its own: :meth:`MethodSpec.tuned_lr`), then the ``preset``'s
    overrides for the method and profile (:mod:`easytune_lab.finetune.presets`; its name is kept in
    ``FinetuneConfig.preset``), then ``overrides`` (:func:`with_overrides`), validated."""
    check_profile(profile)
    spec = method_spec(method)
    row = PROFILES[profile]
    cfg = dataclasses.replace(row, method=method, lr=spec.tuned_lr(profile, backbone, row.lr),
                              policy=spec.policy_config(row.sample_steps), loop=LoopConfig(), lora=LoraConfig())
    if preset:
        cfg = dataclasses.replace(with_overrides(cfg, find_preset(preset).overrides(method, profile)), preset=preset)
    cfg = with_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def validate(cfg: FinetuneConfig) -> None:
    if cfg.iterations < 1:
        raise UserError(f"iterations: must be at least 1 (got {cfg.iterations})")
    if cfg.batch_size < 1:
        raise UserError(f"batch_size: must be at least 1 (got {cfg.batch_size})")
    if not 1 <= cfg.sample_steps <= 1000:
        raise UserError(f"sample_steps: must be in [1, 1000] (got {cfg.sample_steps})")
    if method_spec(cfg.method).uses_k and not 1 <= cfg.policy.k <= cfg.sample_steps:
        raise UserError(f"k: must be in [1, {cfg.sample_steps}] for {cfg.method} (got {cfg.policy.k})")
    if not 0 <= cfg.policy.num_train_steps <= cfg.sample_steps:
        raise UserError(f"num_train_steps: must be in [1, {cfg.sample_steps}] (or 0 for the default; got "
                        f"{cfg.policy.num_train_steps})")
    if cfg.policy.train_steps not in TRAIN_STEPS:
        raise UserError(f"train_steps: unknown choice '{cfg.policy.train_steps}' (choose {', '.join(TRAIN_STEPS)})")
    if cfg.loop.gradient_at not in GRADIENT_AT:
        raise UserError(f"gradient_at: must be one of {', '.join(GRADIENT_AT)} (got '{cfg.loop.gradient_at}')")
    if cfg.loop.reward_scale not in REWARD_SCALES:
        raise UserError(f"reward_scale: must be one of {', '.join(REWARD_SCALES)} (got '{cfg.loop.reward_scale}')")
    if cfg.loop.reward_on not in ("x0_hat", "x_t"):
        raise UserError(f"reward_on: must be x0_hat or x_t (got '{cfg.loop.reward_on}')")
    if cfg.loop.reg_weight < 0:
        raise UserError(f"reg_weight: must be >= 0 (got {cfg.loop.reg_weight})")
    if cfg.schedule_clock not in SCHEDULE_CLOCKS:
        raise UserError(f"schedule_clock: must be one of {', '.join(SCHEDULE_CLOCKS)} (got '{cfg.schedule_clock}')")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise UserError(f"lr_schedule: must be constant or cosine (got '{cfg.lr_schedule}')")
    if cfg.eval_every < 0:
        raise UserError(f"eval_every: must be >= 0 (0 = at the end only; got {cfg.eval_every})")
    if cfg.checkpoint_every < 0:
        raise UserError(f"checkpoint_every: must be >= 0 (0 = at the end only; got {cfg.checkpoint_every})")
    if cfg.eval_motions and cfg.eval_motions < 32:
        raise UserError(f"eval_motions: must be 0 (the whole test split) or at least 32, one R-Precision group "
                        f"(got {cfg.eval_motions})")
    check_lora(cfg.lora)


def expected_updates(cfg: FinetuneConfig) -> int:
    """Optimiser steps per trajectory, as the method's policy takes them (:meth:`MethodSpec.updates_per_trajectory`)."""
    return method_spec(cfg.method).updates_per_trajectory(cfg.policy, cfg.sample_steps)


def schedule_length(cfg: FinetuneConfig, accumulate: bool = False) -> int:
    """The run's length in the schedule's unit (``cfg.schedule_clock``): its trajectories, or its optimiser steps
    (trajectories × the method's updates per trajectory; one with ``accumulate``)."""
    if cfg.schedule_clock == "trajectories":
        return cfg.iterations
    return cfg.iterations * (1 if accumulate else expected_updates(cfg))


def make_scheduler(cfg: FinetuneConfig, optimizer: torch.optim.Optimizer, accumulate: bool = False):
    """(the LR scheduler, whether it advances after every optimiser step): with ``schedule_clock="updates"`` the
    trainer steps it after each optimiser step, with ``"trajectories"`` once after each trajectory, so warm-up and
    cosine run over :func:`schedule_length` units of that clock."""
    scheduler = lr_scheduler(optimizer, cfg.warmup, schedule_length(cfg, accumulate), cfg.lr_schedule)
    return scheduler, cfg.schedule_clock == "updates"


def adamw(params, **options) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch supports it (``runtime.FAST_PATHS["fused_adamw"]``): the same update
    (to float32 rounding) at a fraction of the for-each-parameter loop's cost, which EasyTune pays once per denoising
    step. Falls back to the plain implementation where the parameters' device or dtype has no fused kernel."""
    params = list(params)
    if FAST_PATHS["fused_adamw"]:
        try:
            return torch.optim.AdamW(params, fused=True, **options)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(params, **options)


@dataclass
class Prompts:
    """Captions and ground-truth lengths of a split (the prompts a fine-tuning run samples from)."""

    captions: list[str]
    lengths: list[int]

    @classmethod
    def from_split(cls, root: Path, split: str, max_frames: int) -> "Prompts":
        ds = HumanMLDataset(root, split, mode="eval")
        captions, lengths = [], []
        for clip in ds.clips:
            for cap in clip.captions:
                captions.append(cap.text)
                lengths.append(min(clip.length, max_frames) // 4 * 4)
        if not captions:
            raise UserError(f"{root}/{split}.txt: no usable motions with captions")
        return cls(captions, lengths)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[list[str], list[int]]:
        idx = rng.choice(len(self.captions), size=n, replace=len(self.captions) < n)
        return [self.captions[i] for i in idx], [self.lengths[i] for i in idx]


class Finetuner:
    """Holds the live backbone, reward, optimiser and RNGs of one run; :meth:`iteration` runs one trajectory."""

    def __init__(self, cfg: FinetuneConfig, base_run: Path, reward_run: Path, data: Path, device: torch.device,
                 memory: str = "auto", accumulate: bool = False, dtype: torch.dtype | None = None,
                 compile: bool = False):
        self.cfg, self.base_run, self.reward_run, self.data, self.device = cfg, base_run, reward_run, data, device
        self.generator = load_generator(base_run, device)
        self.backbone = self.generator.backbone
        if dtype is not None:  # e.g. float64 for exact comparisons across process counts
            self.backbone.to(dtype)
        self.backbone.eval()
        self.backbone.requires_grad_(False)
        self.params = trainable_parameters(self.backbone.net, cfg.lora, cfg.seed)  # all, or LoRA's A and B
        self.compiled = False
        if compile:  # opt-in torch.compile of the denoiser's forward (eager after one warning where unavailable)
            self.compiled = compile_forward(self.backbone.net, device)
        # LoopConfig.gradient_at == "start": one buffer of the trainable weights for the whole run (never a model copy)
        self.start_params = StartParameters(self.params) if cfg.loop.gradient_at == "start" else None
        self.net_params = list(self.backbone.net.parameters())  # not counted as saved activations by the probe
        if self.start_params is not None:
            self.net_params += self.start_params.buffers()
        self.reward = load_reward(reward_run, device)
        if dtype is not None:
            self.reward.to(dtype)
        self.reward.requires_grad_(False)
        if cfg.loop.reward_on == "x_t":
            if not self.reward.cfg.noise_aware:
                raise UserError(f"--reward {reward_run}: --reward-on x_t needs a noise-aware reward "
                                "(easytune reward train --noise-aware)")
            if not backbone_spec(self.backbone.kind).motion_space:
                raise UserError("--reward-on x_t: a noise-aware reward scores motions, so it needs a motion-space "
                                f"backbone (e.g. mdm), not '{self.backbone.kind}'")
        self.base_net = None
        if cfg.loop.reg_weight > 0:  # one frozen copy for the whole run, never per batch
            self.base_net = copy.deepcopy(self.backbone.net).requires_grad_(False)
        self.policy = method_spec(cfg.method).make_policy(cfg.policy)
        self.optimizer = adamw(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.accumulate = accumulate
        self.sync = dist.GradientSync(self.params)  # a no-op in a single process
        self.scheduler, self.per_update = make_scheduler(cfg, self.optimizer, accumulate)
        self.prompts = Prompts.from_split(data, "train", self.generator.max_frames)
        self.eval_prompts = Prompts.from_split(data, "val", self.generator.max_frames)
        self.rng = np.random.default_rng(cfg.seed)
        self.noise = torch.Generator().manual_seed(cfg.seed)
        self.memory = memory

    # ---------------------------------------------------------------------------------------------- one step
    def trajectory(self, texts, lengths, num_steps: int | None = None, **shard) -> BackboneTrajectory:
        """``shard``: ``max_len`` and ``rows`` of data-parallel training (see :class:`BackboneTrajectory`)."""
        with torch.no_grad():
            return BackboneTrajectory(self.backbone, texts, lengths, self.cfg.sampler,
                                      num_steps or self.cfg.sample_steps, self.cfg.guidance, **shard)

    def regulariser(self, traj: BackboneTrajectory):
        if self.base_net is None:
            return None
        base = Predictor(self.base_net, self.backbone.schedule)

        def reg(x_t: torch.Tensor, i: int, x0_hat: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                target, _ = base(x_t.detach(), traj.pairs[i][0], traj.cond, traj.guidance)
            return (x0_hat - target).pow(2).mean()

        return reg

    def iteration(self, probe_kind: str | None = None, texts=None, lengths=None) -> TrajectoryStats:
        """One trajectory on a batch of training captions (or the given ``texts``/``lengths``)."""
        if texts is None:
            texts, lengths = self.prompts.draw(self.cfg.batch_size, self.rng)
        shard = {}
        if dist.world_size() > 1:  # this rank's rows of the global batch, padded and noised as one process would
            shard = {"max_len": max(lengths), "rows": (dist.rank(), dist.world_size())}
            texts, lengths = dist.shard(list(texts)), dist.shard(list(lengths))
        traj = self.trajectory(texts, lengths, **shard)
        plans = self.policy.plan(traj.num_steps, self.rng)
        probe = memory_probe(self.device, self.net_params, probe_kind or self.memory)
        with probe:
            stats = run_trajectory(traj, self.policy, plans,
                                   reward_function(self.reward, traj, self.cfg.loop.reward_scale), self.optimizer,
                                   self.params, self.cfg.loop, probe=probe, generator=self.noise,
                                   regulariser=self.regulariser(traj),
                                   after_update=self.scheduler.step if self.per_update else None,
                                   sync_gradients=self.sync, accumulate=self.accumulate,
                                   start_parameters=self.start_params)
        if not self.per_update:
            self.scheduler.step()
        stats.peak_bytes = int(probe.peak_bytes)
        if dist.world_size() > 1:  # the logged rewards/losses are means over the global batch
            n = len(stats.rewards)
            mean = dist.all_reduce_mean(torch.tensor(stats.rewards + stats.losses, dtype=torch.float64,
                                                     device=self.device)).tolist()
            stats.rewards, stats.losses = mean[:n], mean[n:]
            stats.final_reward = stats.rewards[-1] if stats.rewards else float("nan")
        values = stats.rewards + stats.losses
        if not all(math.isfinite(v) for v in values):
            raise NonFiniteError(f"non-finite reward or loss in iteration (rewards {stats.rewards[:3]}...)")
        return stats

    @torch.no_grad()
    def evaluate_reward(self, seed: int = 1234) -> float:
        """Mean reward of samples for a fixed set of held-out captions (same noise every time)."""
        rng = np.random.default_rng(seed)
        texts, lengths = self.eval_prompts.draw(self.cfg.eval_captions, rng)
        traj = self.trajectory(texts, lengths)
        _, x0_hat = traj.run(torch.Generator().manual_seed(seed))
        return float(reward_function(self.reward, traj)(x0_hat, 0).mean())

    # ---------------------------------------------------------------------------------------------- state
    def save_checkpoint(self, out: Path, state: dict) -> None:
        """Write OUT/checkpoint/ (:func:`easytune_lab.training.save_checkpoint`): the backbone's weights, the
        optimiser, the lr scheduler, the noise/caption RNGs, the config and ``state`` (iteration, logs)."""
        save_checkpoint(out, self.backbone.state_dict(), self.optimizer, state, generators={"noise": self.noise},
                        numpy_generators={"rng": self.rng}, scheduler=self.scheduler, config=self.cfg, name=CHECKPOINT)

    def load_checkpoint(self, out: Path) -> dict:
        """Continue from OUT/checkpoint/ (also a checkpoint of the format before the shared one); return its
        state (iteration, elapsed, log, evals)."""
        ckpt = load_checkpoint(out, self.backbone, required=("iteration", "elapsed", "log", "evals", "scheduler"),
                               generators=("noise",), numpy_generators=("rng",), params=lambda state: self.params,
                               name=CHECKPOINT)
        ckpt.restore(self.optimizer, self.scheduler, {"noise": self.noise}, {"rng": self.rng})
        return ckpt.state


def _copy_base_files(base_run: Path, out: Path) -> dict:
    base_manifest = read_manifest(base_run, kind="backbone")
    for name in ("vocab.json", "mean.npy", "std.npy"):
        shutil.copyfile(base_run / name, out / name)
    return base_manifest


def run_finetune(cfg: FinetuneConfig, base_run: Path, reward_run: Path, data: Path, out: Path,
                 device: torch.device, *, resume: bool = False, progress: bool = True,
                 stop_after: int | None = None, evaluate: Callable[[Path], dict] | None = None,
                 evaluator: Path | None = None, accumulate: bool = False, dtype: str = "float32") -> dict:
    """Fine-tune ``base_run`` with ``cfg.method`` against ``reward_run`` into ``out``; return metrics.

    ``stop_after`` ends the run after that many iterations with a checkpoint, as an interruption would;
    ``resume`` continues from ``OUT/checkpoint`` and gives the same weights as an uninterrupted run on CPU (a run
    killed before its first checkpoint starts afresh). ``accumulate``: one optimiser step per trajectory (see
    :func:`~easytune_lab.finetune.loop.run_trajectory`); ``dtype``: the precision of backbone and reward (float64
    for exact comparisons); both are recorded in the manifest. Under torchrun every rank calls
    this; rank 0 evaluates and writes, a NaN/Inf stops every rank (:class:`~easytune_lab.errors.NonFiniteError`).
    ``evaluator`` (an evaluator run) adds the T2M metrics and the oracle's accuracy on ``cfg.eval_motions`` test
    clips to every evaluation (:mod:`easytune_lab.finetune.periodic_eval`).
    """
    out, main = Path(out), dist.is_main()
    parents = {"base": base_run, "reward": reward_run, "data": data, "evaluator": evaluator}
    _check_run_arguments(cfg, out, resume, dtype, evaluator)
    if resume:
        check_resumable(out, cfg, accumulate, dtype, parents=parents)
    tuner = Finetuner(cfg, base_run, reward_run, data, device, accumulate=accumulate,
                      dtype=getattr(torch, dtype) if dtype != "float32" else None)
    periodic = None if evaluator is None else PeriodicEvaluator(evaluator, data, device, cfg.eval_motions,
                                                                cfg.sampler, cfg.sample_steps, seed=cfg.seed)

    def evaluation(iteration: int, optimizer_steps: int, seconds: float) -> dict:
        entry = {"iteration": iteration, "optimizer_steps": optimizer_steps, "seconds": seconds,
                 "reward": tuner.evaluate_reward()}
        if periodic is not None:
            entry.update(periodic(tuner.generator))
        return entry

    dist.barrier()  # every rank has validated its input before rank 0 writes anything
    start_it, elapsed, log, evals = _start_or_resume(out, tuner, resume)
    manifest = _manifest(cfg, parents, device, accumulate, dtype)
    if main:
        write_manifest(out, manifest)  # first: a run killed after this point can be resumed
        _copy_base_files(base_run, out)
    if not evals and main:
        evals.append(evaluation(0, 0, 0.0))

    bar = tqdm(total=cfg.iterations, initial=start_it, disable=not (progress and main),
               desc=f"finetune {cfg.method}", dynamic_ncols=True)
    steps_done = log["optimizer_steps"][-1] if log["optimizer_steps"] else 0
    end = cfg.iterations if stop_after is None else min(cfg.iterations, stop_after)
    for it in range(start_it, end):
        t0 = time.perf_counter()
        try:
            stats = tuner.iteration()
        except NonFiniteError as exc:
            _stop_nonfinite(out, manifest, exc, it)
        elapsed += time.perf_counter() - t0
        steps_done += stats.optimizer_steps
        _log_iteration(log, it + 1, stats, steps_done, float(tuner.scheduler.get_last_lr()[0]))
        bar.update(1)
        last = it + 1 == cfg.iterations
        if ((cfg.eval_every and (it + 1) % cfg.eval_every == 0) or last) and main:
            evals.append(evaluation(it + 1, steps_done, elapsed))
        bar.set_postfix(reward=f"{log['reward'][-1]:.3f}", loss=f"{log['loss'][-1]:.3f}",
                        mem=f"{stats.peak_bytes / 2**20:.1f}MiB", **(postfix(evals[-1]) if evals else {}))
        if ((cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0) or last or it + 1 == end) and main:
            tuner.save_checkpoint(out, {"iteration": it + 1, "elapsed": elapsed, "log": log, "evals": evals})
    bar.close()
    if not main:  # rank 0 writes the results; the others wait for it
        dist.barrier()
        return {"method": cfg.method, "iterations": end, "complete": end >= cfg.iterations,
                "optimizer_steps": steps_done}
    if end < cfg.iterations:
        manifest["status"] = "interrupted"
        manifest["iterations_done"] = end
        write_manifest(out, manifest)
        dist.barrier()
        return {"method": cfg.method, "iterations": end, "complete": False}
    metrics = _finish(out, tuner, manifest, log, evals, steps_done, elapsed, evaluate)
    dist.barrier()
    return metrics


def _check_run_arguments(cfg: FinetuneConfig, out: Path, resume: bool, dtype: str, evaluator: Path | None) -> None:
    """What can be refused before anything is loaded: the batch split, the output directory, the precision."""
    dist.check_divisible(cfg.batch_size, "--batch-size")
    if resume and not out.is_dir():
        raise UserError(f"--resume: {out} does not exist (nothing to resume)")
    if not resume and out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: exists and is not empty (use --resume to continue it)")
    if dtype not in ("float32", "float64"):
        raise UserError(f"--dtype: must be float32 or float64 (got '{dtype}')")
    if dtype != "float32" and evaluator is not None:
        raise UserError("--dtype: --evaluator scores float32 motions; evaluate a float64 run afterwards instead")


def _start_or_resume(out: Path, tuner: Finetuner, resume: bool) -> tuple[int, float, dict, list]:
    """(first iteration, elapsed seconds, log, evaluations): the checkpoint's when resuming one (its weights,
    optimiser, scheduler and RNG states loaded into ``tuner``), else a fresh start."""
    if resume:
        if dist.is_main():
            find_checkpoint(out, CHECKPOINT)  # repairs a checkpoint swap cut short by a kill
        dist.barrier()
        if has_checkpoint(out, CHECKPOINT):  # none yet: killed before its first checkpoint, start afresh
            state = tuner.load_checkpoint(out)
            return state["iteration"], state["elapsed"], state["log"], state["evals"]
    log = {"iteration": [], "reward": [], "final_reward": [], "loss": [], "peak_bytes": [], "optimizer_steps": [],
           "time": [], "grad_norm": []}
    return 0, 0.0, log, []


def _manifest(cfg: FinetuneConfig, parents: dict, device: torch.device, accumulate: bool, dtype: str) -> dict:
    """The run's manifest: the base backbone's config (so the run loads as a backbone) and the fine-tuning."""
    base_manifest = read_manifest(parents["base"], kind="backbone")
    return make_manifest("backbone", base_manifest["config"], seed=cfg.seed, device=str(device),
                         parents={k: str(v) for k, v in parents.items() if v is not None},
                         extra={"backbone": base_manifest.get("backbone"), "status": "running",
                                "feature_dim": base_manifest.get("feature_dim"),
                                "data_identity": dataset_identity(parents["data"]),
                                "finetune": config_to_dict(cfg),
                                "training": {"world_size": dist.world_size(), "accumulate": accumulate,
                                             "dtype": dtype}})


def _log_iteration(log: dict, iteration: int, stats: TrajectoryStats, steps_done: int, lr: float) -> None:
    """Append one iteration's reward, loss, memory, optimiser steps, time, gradient norm and lr to ``log``."""
    log["iteration"].append(iteration)
    log["reward"].append(float(np.mean(stats.rewards)) if stats.rewards else None)
    log["final_reward"].append(stats.final_reward if math.isfinite(stats.final_reward) else None)
    log["loss"].append(float(np.mean(stats.losses)) if stats.losses else None)
    log["peak_bytes"].append(stats.peak_bytes)
    log["optimizer_steps"].append(steps_done)
    log["time"].append({k: round(v, 6) for k, v in stats.time.items()})
    log["grad_norm"].append(float(np.mean(stats.grad_norms)) if stats.grad_norms else 0.0)
    log.setdefault("lr", []).append(lr)  # the schedule's lr after the iteration


def _finish(out: Path, tuner: Finetuner, manifest: dict, log: dict, evals: list, steps_done: int, elapsed: float,
            evaluate: Callable[[Path], dict] | None) -> dict:
    """Rank 0 of a complete run: merged weights, metrics.json, manifest status ``complete``; returns the metrics."""
    cfg = tuner.cfg
    save_weights(out, tuner.backbone, cfg.lora)  # merged weights (+ adapter.safetensors for LoRA)
    peak = max(log["peak_bytes"]) if log["peak_bytes"] else 0
    phases = {k: float(sum(t[k] for t in log["time"])) for k in ("sampling", "reward", "backward", "optimizer")}
    metrics = {"method": cfg.method, "iterations": cfg.iterations, "optimizer_steps": steps_done,
               "train_seconds": elapsed, "time_per_phase": phases, "peak_bytes": peak,
               "memory_measure": "cuda_max_memory_allocated" if tuner.device.type == "cuda" else "autograd_saved_bytes",
               "reward_before": evals[0]["reward"], "reward_after": evals[-1]["reward"],
               "evaluations": evals, "log": log}
    if evaluate is not None:
        metrics["evaluation"] = evaluate(out)
    write_json(out / "metrics.json", metrics)
    manifest["status"] = "complete"
    write_manifest(out, manifest)
    return metrics


# options that only change what is evaluated or how often it is saved, not the trained weights
_RESUME_FREE = ("eval_every", "eval_captions", "eval_motions", "checkpoint_every")


def check_resumable(out: Path, cfg: FinetuneConfig, accumulate: bool, dtype: str = "float32",
                    parents: dict | None = None) -> None:
    """``--resume`` continues the saved configuration: refuse a different one, naming what differs, and other
    parent runs or another dataset (:func:`~easytune_lab.runs.check_resume_parents`)."""
    if never_started(out):
        return
    if not (out / MANIFEST).is_file():
        raise UserError(f"--resume: {out} has no {MANIFEST} (not a fine-tuning run)")
    manifest = read_manifest(out, kind="backbone")
    saved = manifest.get("finetune")
    if saved is None:
        raise UserError(f"--resume: {out} is a pretraining run, not a fine-tuning run")
    current = config_to_dict(cfg)
    saved = _with_defaults(saved, config_to_dict(FinetuneConfig()))   # options added since the run started
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in _RESUME_FREE and saved.get(k) != current.get(k))
    if "lora" in changed:
        trained = (saved.get("lora") or {}).get("rank", 0)
        raise UserError(f"--resume: {out} was trained with --lora-rank {trained}, not {cfg.lora.rank}")
    if changed:
        raise UserError(f"--resume: {out} was started with other settings ({', '.join(changed)}); "
                        "--resume continues the saved configuration")
    if parents is not None:
        check_resume_parents(out, manifest, parents, optional=("evaluator",))
    training = manifest.get("training", {})
    was = bool(training.get("accumulate", False))
    if was != bool(accumulate):
        raise UserError(f"--accumulate: {out} was started {'with' if was else 'without'} it")
    if training.get("dtype", "float32") != dtype:
        raise UserError(f"--dtype {dtype}: {out} was started with {training.get('dtype', 'float32')}")


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """``saved`` (a manifest's config) with the default of every option it does not name: a run started before an
    option existed ran with its default, so resuming it with the default is not a change of settings."""
    out = dict(saved)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def _stop_nonfinite(out: Path, manifest: dict, exc: NonFiniteError, iteration: int):
    """A NaN/Inf stops the run (every rank sees the same all-reduced values): mark the manifest, keep the last
    checkpoint, raise one clear line."""
    ckpt = out / CHECKPOINT / "state.json"
    last = json.loads(ckpt.read_text())["iteration"] if ckpt.is_file() else None
    if dist.is_main():
        manifest.update(status="failed", failure=f"{exc} at iteration {iteration + 1}")
        write_manifest(out, manifest)
    kept = (f"the last good checkpoint (iteration {last}) is kept in {out / CHECKPOINT}" if last is not None
            else "no checkpoint had been written yet")
    raise NonFiniteError(f"finetune: {exc} at iteration {iteration + 1}; stopped, {kept}") from None
