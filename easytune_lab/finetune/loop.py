"""The one trajectory loop that every fine-tuning method runs through.

A method is a :class:`~easytune_lab.finetune.policy.Policy` that hands the loop one
:class:`~easytune_lab.finetune.policy.StepPlan` per denoising step; the loop, the optimiser, gradient clipping,
the regulariser, memory/time probes and the distributed all-reduce are shared, so comparisons between methods are
fair. Gradients are computed on the live parameters: no copy of the model is made per batch.

Data-parallel training (torchrun) averages the trainable gradients over the ranks with one all-reduce right before
each optimiser step (``sync_gradients``, a :class:`~easytune_lab.distributed.GradientSync`), so EasyTune's per-step
updates cost one all-reduce each. With ``accumulate`` the per-step backward passes still run at once (the graph of
one denoiser call at a time) but their gradients accumulate locally and the trajectory ends with a single
all-reduce and optimiser step.

The loop talks to the backbone through a trajectory (:class:`~easytune_lab.diffusion.trajectory.Steps`: how to draw
x_T, run reverse step ``i`` and re-noise a clean sample), whose steps it runs with the one denoising loop
(:func:`~easytune_lab.diffusion.trajectory.denoise`, the policy deciding each step's grad/detach/checkpoint and what
follows it), and to the reward through a callable ``reward(x, t) -> (B,)``:

* ODE samplers (DDIM, consistency): the reward is taken on the step's predicted clean motion x̂0 with t = 0
  (paper Eq. 9, ``reward_on="x0_hat"``);
* SDE samplers with a noise-aware reward: the reward scores the step's output x_{t-1} at its noise level
  (``reward_on="x_t"``).

Per-step EasyTune loss (paper Eq. 9): ``L_t(θ) = −R(π_θ(sg(x_t), t, c))`` with one optimiser step per trained
step, so the graph alive at any time covers one denoiser call; a step weighting w_t scales that step's update
(``StepPlan.lr_scale``, i.e. θ ← θ − w_t·lr·(optimiser direction of ∇L_t)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..diffusion.trajectory import StepRecord, Steps, denoise
from .choices import GRADIENT_AT, REWARD_SCALES
from .policy import Policy, StepPlan

#: What the loop needs from a backbone + sampler + condition (kept under its old name).
Trajectory = Steps


RewardFn = Callable[[torch.Tensor, int], torch.Tensor]
RegulariserFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]


@dataclass
class LoopConfig:
    """Options of the shared loop."""

    reward_on: str = "x0_hat"        # "x0_hat" (ODE samplers) or "x_t" (noise-aware reward)
    grad_clip: float = 1.0           # max global grad norm (0 = off)
    reg_weight: float = 0.0          # weight of the regulariser toward the frozen base model
    gradient_at: str = "live"        # "live": each step's gradient at the parameters as updated so far in the
                                     # trajectory; "start": the trajectory and every per-step gradient at the
                                     # parameters the trajectory started with, the updates compounding on a
                                     # separate copy that samples the next trajectory (the authors' code)
    reward_scale: str = "tau"        # "tau": R = τ·cos(E_M, E_T) (the reward model's learned scale); "unit": cos




class StartParameters:
    """``LoopConfig.gradient_at = "start"`` without a copy of the model: one extra buffer per trainable tensor,
    allocated once per run and refreshed at the start of each trajectory.

    While the trajectory runs, the parameters hold θ_start (the values at its start), so the samples and every
    per-step gradient g_i = ∇θ L_i(θ_start) are taken there; the buffer holds the live values θ. An update swaps
    the two (O(1): the tensors' storages are exchanged, nothing is copied), lets the optimiser apply g_i to θ, and
    swaps back, so the updates compound, θ ← θ − lr·u(g_i) step after step. :meth:`finish` leaves θ in the
    parameters: the updated model samples the next trajectory.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        self.params = list(params)
        self.other = [p.detach().clone() for p in self.params]
        self.live_in_params = True

    def buffers(self) -> list[torch.Tensor]:
        """The extra storages (for memory probes that leave parameters out)."""
        return list(self.other)

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            held = p.data
            p.data = self.other[i]
            self.other[i] = held
        self.live_in_params = not self.live_in_params

    def begin(self) -> None:
        """At a trajectory's start: the buffer becomes the live copy, the parameters stay at θ_start."""
        if not self.live_in_params:
            self._swap()
        with torch.no_grad():
            for p, o in zip(self.params, self.other):
                o.copy_(p)
        self.live_in_params = False       # the parameters now stand for θ_start, the buffer for θ

    def update(self, step: Callable[[], None]) -> None:
        """Run ``step`` (clip + optimiser step) on the live values with the gradients taken at θ_start."""
        self._swap()
        try:
            step()
        finally:
            self._swap()

    def finish(self) -> None:
        """At a trajectory's end: the live values go back into the parameters."""
        if not self.live_in_params:
            self._swap()


@dataclass
class TrajectoryStats:
    """What one trajectory did: rewards, losses, counted graph-building calls, memory and time per phase."""

    rewards: list[float] = field(default_factory=list)      # mean reward at each reward-taking step
    reward_steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)   # per optimiser step, before clipping
    graph_calls: list[int] = field(default_factory=list)    # step indices whose denoiser call built a graph
    optimizer_steps: int = 0
    final_reward: float = float("nan")
    peak_bytes: int = 0
    time: dict = field(default_factory=lambda: {"sampling": 0.0, "reward": 0.0, "backward": 0.0, "optimizer": 0.0})


class _Clock:
    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()


def run_trajectory(
    trajectory: Trajectory,
    policy: Policy,
    plans: Sequence[StepPlan],
    reward: RewardFn,
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.nn.Parameter],
    config: LoopConfig | None = None,
    probe=None,
    generator: torch.Generator | None = None,
    regulariser: RegulariserFn | None = None,
    after_update: Callable[[], None] | None = None,
    sync_gradients: Callable[[], None] | None = None,
    accumulate: bool = False,
    start_parameters: StartParameters | None = None,
) -> TrajectoryStats:
    """Run one denoising trajectory under ``plans`` and apply the policy's updates.

    ``probe`` is a memory probe from :mod:`easytune_lab.analysis.memory` already entered (its ``observe`` is
    called before every backward). ``sync_gradients`` runs before each optimiser step (the all-reduce of
    data-parallel training); ``after_update`` after it (LR scheduler). ``accumulate`` defers every update of the
    trajectory to one optimiser step at its end. ``config.gradient_at == "start"``: the trajectory and its per-step
    gradients are taken at the parameters it started with (:class:`StartParameters`; pass the run's own
    ``start_parameters`` to reuse one buffer, else one is allocated for this trajectory).
    """
    config = config or LoopConfig()
    if config.gradient_at not in GRADIENT_AT:
        raise ValueError(f"gradient_at: must be one of {', '.join(GRADIENT_AT)} (got '{config.gradient_at}')")
    frozen = None
    if config.gradient_at == "start":
        frozen = start_parameters or StartParameters(params)
        frozen.begin()
    stats = TrajectoryStats()
    x = trajectory.initial_noise(generator)
    device = x.device
    clock = _Clock(device)
    pending: list[torch.Tensor] = []  # losses of this trajectory not yet back-propagated
    finishing = False

    def take_reward(x_prev: torch.Tensor, x0_hat: torch.Tensor, i: int) -> torch.Tensor:
        start = clock.now()
        if config.reward_on == "x_t" and i < trajectory.num_steps - 1:
            r = reward(x_prev, trajectory.noise_level(i))
        else:
            r = reward(x0_hat, 0)
        stats.time["reward"] += clock.now() - start
        return r

    def backward(loss: torch.Tensor) -> None:
        if probe is not None:
            probe.observe()
        start = clock.now()
        loss.backward()
        stats.time["backward"] += clock.now() - start
        if probe is not None:
            probe.backward_done()

    owed = False  # accumulate: an update deferred to the end of the trajectory

    def update(lr_scale: float = 1.0) -> None:
        nonlocal owed
        if accumulate and not finishing:
            owed = True
            return
        start = clock.now()
        if sync_gradients is not None:
            sync_gradients()
        if config.grad_clip > 0:   # clipping computes the global norm (before clipping) anyway
            norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
        else:
            norm = _grad_norm(params)
        stats.grad_norms.append(norm)
        base_lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:   # this step's update only (StepPlan.lr_scale)
            group["lr"] = group["lr"] * lr_scale
        if frozen is not None:                 # the gradient was taken at θ_start; the step moves the live θ
            frozen.update(optimizer.step)
        else:
            optimizer.step()
        for group, lr in zip(optimizer.param_groups, base_lrs):   # the schedule's lr again
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        stats.optimizer_steps += 1
        stats.time["optimizer"] += clock.now() - start
        if after_update is not None:
            after_update()

    step_input = x  # the x_t step i actually received (detached under detach="state")

    def run_step(x_t: torch.Tensor, i: int, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal step_input
        plan = plans[i]
        if plan.detach == "state":
            x_t = x_t.detach()
        step_input = x_t
        start = clock.now()
        with torch.set_grad_enabled(plan.grad):
            if plan.grad and plan.checkpoint:
                out = checkpoint(trajectory.step, x_t, i, noise, plan.detach == "input", use_reentrant=False)
            else:
                out = trajectory.step(x_t, i, noise, plan.detach == "input")
        stats.time["sampling"] += clock.now() - start
        return out

    def after_step(record: StepRecord) -> bool:
        nonlocal pending
        i, plan, x_prev, x0_hat = record.i, plans[record.i], record.x_prev, record.x0_hat
        if plan.grad:
            stats.graph_calls.append(i)

        if plan.reward_weight > 0:
            r = take_reward(x_prev, x0_hat, i)
            stats.rewards.append(float(r.detach().mean()))
            stats.reward_steps.append(i)
            if r.requires_grad:
                # deferred updates (accumulate) cannot scale a step's lr: the scale weights its loss instead
                weight = plan.reward_weight * (plan.lr_scale if accumulate else 1.0)
                loss = -weight * r.mean()
                if regulariser is not None and config.reg_weight > 0:
                    loss = loss + config.reg_weight * regulariser(step_input, i, x0_hat)
                stats.losses.append(float(loss.detach()))
                pending.append(loss)
        if plan.update and pending:
            # One backward over the losses gathered since the last update (one loss for EasyTune; all the
            # per-step losses of the trajectory for EasyTune-chain, whose parameters must not move mid-graph).
            backward(torch.stack(pending).sum())
            update(plan.lr_scale)
            pending = []
        return plan.stop or i == len(plans) - 1

    if plans:
        x, _ = denoise(trajectory, x, generator, step=run_step, callback=after_step)
    if pending:  # a policy that stopped before its update step
        backward(torch.stack(pending).sum())
        update()

    stats.final_reward = stats.rewards[-1] if stats.rewards else float("nan")

    lv = policy.lv_samples
    if lv:
        # DRaFT-LV: re-noise the final sample to the last step's level n times; one grad step each.
        x0 = x.detach()
        last = trajectory.num_steps - 1
        losses = []
        for _ in range(lv):
            x_t = trajectory.renoise(x0, last, generator)
            start = clock.now()
            _, x0_hat = trajectory.step(x_t, last, trajectory.draw_noise(last, x_t, generator), False)
            stats.time["sampling"] += clock.now() - start
            stats.graph_calls.append(last)
            r = take_reward(x0_hat, x0_hat, last)
            losses.append(-r.mean())
            stats.rewards.append(float(r.detach().mean()))
            stats.reward_steps.append(last)
        loss = torch.stack(losses).mean()
        stats.losses.append(float(loss.detach()))
        backward(loss)
        update()

    finishing = True
    if owed:
        update()
    if frozen is not None:
        frozen.finish()
    if probe is not None:
        stats.peak_bytes = int(max(probe.peak_bytes, probe.observe()))
    return stats


def _grad_norm(params: Sequence[torch.nn.Parameter]) -> float:
    norms = [p.grad.detach().norm() for p in params if p.grad is not None]
    if not norms:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(norms)))
