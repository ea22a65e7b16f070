"""A toy fine-tuning method declared in one module outside the library: sample without a graph, then one step
with gradient at the last denoising step, reward on its x̂0, one optimiser step (DRaFT-1 by another name)."""

from __future__ import annotations

import numpy as np

from easytune_lab.finetune.methods import MethodSpec
from easytune_lab.finetune.policy import Policy, StepPlan


class LastStep(Policy):
    name = "toy-last-step"

    def plan(self, num_steps: int, rng: np.random.Generator) -> list[StepPlan]:
        plans = [StepPlan() for _ in range(num_steps)]
        plans[-1] = StepPlan(grad=True, reward_weight=1.0, update=True)
        return plans


SPEC = MethodSpec("toy-last-step", LastStep, lr={"smoke": 3e-4},
                  description="one gradient step at the last denoising step (a test plugin)")
