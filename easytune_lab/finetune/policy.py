"""Fine-tuning policies: one small object per method, answering four questions at each denoising step.

Every differentiable-reward method is the same denoising loop (:mod:`easytune_lab.finetune.loop`) with
different answers, per step ``i`` of a trajectory of ``T`` steps (``i = 0`` is the noisiest step):

1. ``grad``       does this step's denoiser call build a graph?
2. ``detach``     is the input stopped before the call? ``"none"``, ``"input"`` (only the network's input is
                  detached, the update's skip path ``x_{t-1} = a·x_t + ...`` keeps its gradient — DRTune) or
                  ``"state"`` (stop-gradient on x_t itself — EasyTune, paper Eq. 8: the step's graph is
                  ``π_θ(sg(x_t), t, c)`` only, so memory is O(1) in T).
3. ``reward``     is a reward taken here (weight > 0), on the predicted clean motion x̂0 (ODE samplers) or on
                  the noisy x_{t-1} with a noise-aware reward R(x_t, t, c) (SDE samplers)?
4. ``update``     does the optimiser step after this step's backward, or once per trajectory?

``lr_scale`` multiplies the learning rate of the optimiser step taken after this step (EasyTune's step weighting:
with one update per step, a weight on the step's loss would be undone by gradient clipping, which rescales each
step's gradient to the same norm, and by Adam's normalisation; scaling the step size is what a loss weight does
under plain SGD without clipping). Where updates are deferred to one step per trajectory it acts as a loss weight.

Plus ``checkpoint`` (recompute this step's activations in backward: AlignProp) and ``stop`` (end the
trajectory after this step: DRTune / ReFL early stop).

A plan is drawn per trajectory from the policy's own ``numpy.random.Generator`` so that truncations are
drawn the same way for every method and every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UserError

DETACH_MODES = ("none", "input", "state")
#: EasyTune's choices of trained steps (``PolicyConfig.train_steps``).
TRAIN_STEPS = ("all", "uniform", "last", "weighted")
#: ``train_steps="last"``'s default number of steps: the authors' code trains the last k = 10 of T.
LAST_K = 10


@dataclass(frozen=True)
class StepPlan:
    """What the loop does at one denoising step."""

    grad: bool = False
    detach: str = "none"
    reward_weight: float = 0.0
    update: bool = False
    checkpoint: bool = False
    stop: bool = False
    lr_scale: float = 1.0


@dataclass
class PolicyConfig:
    """Options shared by all policies (unused ones are ignored by a method).

    k: DRaFT-K's number of final steps with gradient; DRTune's number of trainable steps.
    train_steps: EasyTune's choice of steps: ``all`` | ``uniform`` (``num_train_steps`` drawn per trajectory)
        | ``last`` (the last ``num_train_steps`` steps, default 10: the authors' code, k = 10; the earlier steps
        only sample, without a graph) | ``weighted`` (all steps, each step's update scaled by ``weighting``:
        ``StepPlan.lr_scale``).
    weighting: ``uniform`` | ``early`` | ``late`` (weights over step index, normalised to mean 1).
    lv_samples: DRaFT-LV's number of re-noised final samples.
    late_fraction: ReFL/DRTune draw their stop step among the last ``late_fraction`` of the trajectory.
    """

    k: int = 1
    train_steps: str = "all"
    num_train_steps: int = 0
    weighting: str = "uniform"
    lv_samples: int = 2
    late_fraction: float = 0.3


class Policy:
    """Base class: subclasses implement :meth:`plan`."""

    name = "base"
    #: DRaFT-LV re-noises the final sample; the loop asks this attribute.
    lv_samples = 0

    def __init__(self, config: PolicyConfig | None = None):
        self.config = config or PolicyConfig()

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        raise NotImplementedError

    def updates_per_trajectory(self, num_steps: int) -> int:
        """Optimiser steps one trajectory of ``num_steps`` takes (what a schedule counted in updates needs)."""
        return 1


def step_weights(num_steps: int, weighting: str) -> np.ndarray:
    """Per-step loss weights over step index i (0 = noisiest), normalised to mean 1.

    ``early`` emphasises high-noise steps (linearly decreasing), ``late`` low-noise steps, ``uniform`` none.
    """
    i = np.arange(num_steps, dtype=np.float64)
    if weighting == "uniform":
        w = np.ones(num_steps)
    elif weighting == "early":
        w = (num_steps - i)
    elif weighting == "late":
        w = i + 1.0
    else:
        raise UserError(f"--weighting: unknown step weighting '{weighting}' (choose uniform, early or late)")
    return w / w.mean()


class EasyTune(Policy):
    """EasyTune-step (paper Eq. 8–9): stop-gradient on x_t, reward on each trained step, update at each step."""

    name = "easytune"
    detach = "state"

    def trained_steps(self, num_steps: int) -> int:
        """How many of the ``num_steps`` steps carry a gradient (and an update): all of them, or
        ``num_train_steps`` (default T // 5 for ``uniform``, the last 10 for ``last``)."""
        cfg = self.config
        if cfg.train_steps == "uniform":
            m = cfg.num_train_steps or max(1, num_steps // 5)
        elif cfg.train_steps == "last":
            m = cfg.num_train_steps or min(LAST_K, num_steps)
        else:
            return num_steps
        if not 1 <= m <= num_steps:
            raise UserError(f"num_train_steps: must be in [1, {num_steps}] (got {m})")
        return m

    def updates_per_trajectory(self, num_steps: int) -> int:
        return self.trained_steps(num_steps)

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        cfg = self.config
        if cfg.train_steps == "all":
            chosen = np.ones(num_steps, dtype=bool)
            weights = np.ones(num_steps)
        elif cfg.train_steps == "uniform":
            m = self.trained_steps(num_steps)
            chosen = np.zeros(num_steps, dtype=bool)
            chosen[rng.choice(num_steps, size=m, replace=False)] = True
            weights = np.ones(num_steps)
        elif cfg.train_steps == "last":
            m = self.trained_steps(num_steps)
            chosen = np.arange(num_steps) >= num_steps - m
            weights = np.ones(num_steps)
        elif cfg.train_steps == "weighted":
            chosen = np.ones(num_steps, dtype=bool)
            weights = step_weights(num_steps, cfg.weighting)
        else:
            raise UserError(f"train_steps: unknown choice '{cfg.train_steps}' (choose {', '.join(TRAIN_STEPS)})")
        return [StepPlan(grad=True, detach=self.detach, reward_weight=1.0, update=True, lr_scale=float(weights[i]))
                if chosen[i] else StepPlan() for i in range(num_steps)]


class EasyTuneChain(EasyTune):
    """EasyTune without the stop-gradient: reward at every step, gradient through the whole chain.

    Updating the parameters in place between steps would invalidate the graph that later rewards
    backpropagate through, so the per-step losses of a trajectory are summed, back-propagated once and the
    optimiser steps once per trajectory. Memory is O(T), which is the point of this ablation.
    """

    name = "easytune-chain"
    detach = "none"

    def updates_per_trajectory(self, num_steps: int) -> int:
        return 1

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        plans = super().plan(num_steps, rng)     # one update per trajectory: the step weights weight the losses
        plans = [StepPlan(grad=True, detach="none", reward_weight=p.lr_scale, update=False) for p in plans]
        plans[-1] = StepPlan(grad=True, detach="none", reward_weight=plans[-1].reward_weight, update=True)
        return plans


class DRaFT(Policy):
    """DRaFT-K (Clark et al. 2024): gradient through the last K steps, reward on the final sample, one update."""

    name = "draft"

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        k = self.config.k
        if not 1 <= k <= num_steps:
            raise UserError(f"--k: DRaFT-K needs 1 <= K <= steps ({num_steps}), got {k}")
        plans = [StepPlan(grad=i >= num_steps - k) for i in range(num_steps)]
        plans[-1] = StepPlan(grad=True, reward_weight=1.0, update=True)
        return plans


class DRaFTLV(Policy):
    """DRaFT-LV: DRaFT-1 whose last step is re-run on ``lv_samples`` re-noised copies of the final sample."""

    name = "draft-lv"

    @property
    def lv_samples(self) -> int:  # type: ignore[override]
        return max(1, self.config.lv_samples)

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        # The sampling pass carries no graph; the loop then re-noises x0 and re-runs the last step with grad.
        return [StepPlan() for _ in range(num_steps)]


class AlignProp(Policy):
    """AlignProp (Prabhudesai et al. 2023): gradient through a random contiguous tail of K ~ U{1..T} steps,
    drawn once per trajectory, with gradient checkpointing of each step; reward on the final sample."""

    name = "alignprop"

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        k = int(rng.integers(1, num_steps + 1))
        plans = [StepPlan(grad=i >= num_steps - k, checkpoint=i >= num_steps - k) for i in range(num_steps)]
        plans[-1] = StepPlan(grad=True, checkpoint=True, reward_weight=1.0, update=True)
        return plans


def _late_stop(num_steps: int, late_fraction: float, rng: np.random.Generator) -> int:
    """A random step index among the last ``late_fraction`` of the trajectory (at least the last step)."""
    first = min(num_steps - 1, int(math.floor(num_steps * (1.0 - late_fraction))))
    return int(rng.integers(first, num_steps))


class DRTune(Policy):
    """DRTune (Wu et al. 2024): the network input is detached at every step (the update's skip path keeps
    its gradient), ``k`` evenly spaced steps carry gradient, the trajectory stops early at a random late
    step t_min and the reward is taken on x̂0 there."""

    name = "drtune"

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        stop = _late_stop(num_steps, self.config.late_fraction, rng)
        k = max(1, min(self.config.k, stop + 1))
        trainable = set(np.linspace(0, stop, k).round().astype(int).tolist())
        plans = [StepPlan(grad=i in trainable, detach="input") for i in range(stop + 1)]
        plans[stop] = StepPlan(grad=True, detach="input", reward_weight=1.0, update=True, stop=True)
        return plans + [StepPlan() for _ in range(num_steps - stop - 1)]


class ReFL(Policy):
    """ReFL (Xu et al. 2023): no gradient until a random late step, one step with gradient, reward on its
    x̂0, update, stop."""

    name = "refl"

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        stop = _late_stop(num_steps, self.config.late_fraction, rng)
        plans = [StepPlan() for _ in range(num_steps)]
        plans[stop] = StepPlan(grad=True, detach="state", reward_weight=1.0, update=True, stop=True)
        return plans


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (EasyTune, EasyTuneChain, DRaFT, DRaFTLV, AlignProp, DRTune, ReFL)
}


def make_policy(method: str, config: PolicyConfig | None = None) -> Policy:
    if method not in POLICIES:
        raise UserError(f"--method: unknown method '{method}' (choose from {', '.join(POLICIES)})")
    return POLICIES[method](config)


def graph_steps(plans: Sequence[StepPlan]) -> list[int]:
    """Indices of the steps whose denoiser call builds a graph (what the tests count)."""
    return [i for i, p in enumerate(plans) if p.grad]
