"""Fine-tuning methods declared once: a :class:`MethodSpec` per method, and the registry that maps names to specs.

A method is its :class:`~easytune_lab.finetune.policy.Policy` (which steps carry gradient, where the reward is
taken, when the optimiser steps) plus what the rest of the library needs to know about it: its policy defaults
(DRaFT's K, DRTune's number of trainable steps), its tuned learning rate per profile, and how many optimiser steps
one trajectory takes (asked of the policy, so the formula lives in one place). Fine-tuning, the benches and the
workbench read :data:`METHODS` and never branch on a method's name. A method of one's own is one new module (a
``Policy`` subclass and its spec) and one :func:`register_method` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..diffusion.registry import Registry
from .policy import AlignProp, DRaFT, DRaFTLV, DRTune, EasyTune, EasyTuneChain, Policy, PolicyConfig, ReFL

#: Quick-profile learning rates, chosen by ``easytune bench speed --lrs`` on the quick MDM and SPL reward: the lr of
#: each grid with the highest held-out reward after 60 s of training (results/quick/finetune/speed_quick.json).
#: EasyTune (one AdamW step per denoising step) from {1e-7, 3e-7, 1e-6}; DRaFT-50 (one per trajectory) from
#: {2e-6, 2e-5, 6e-5}. The other methods, which also step once per trajectory, take DRaFT's (not tuned on their own).
QUICK_LR_PER_STEP = 3e-7
QUICK_LR_PER_TRAJECTORY = 6e-5
#: On the quick MLD (the paper's backbone), with the same SPL reward, each lr is scored by its held-out reward
#: (validation captions) after the profile's whole fine-tuning budget, 16 trajectories, seed 0 (``scripts/tune_lr.py``,
#: results/quick/finetune/lr_grid_mld.json): EasyTune from {3e-7, 1e-6, 3e-6, 1e-5}, DRaFT-50 from {6e-5, 2e-4,
#: 6e-4, 2e-3}; both picks are inside their grids. (A first grid scored by the reward after 120 s of training,
#: about 6 EasyTune trajectories, picked 3e-5, its grid's edge, which then lost reward over 16 trajectories:
#: speed_quick_mld.json, speed_quick_mld_grid1.json.)
QUICK_MLD_LR_PER_STEP = 3e-6
QUICK_MLD_LR_PER_TRAJECTORY = 6e-4


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method.

    ``policy``: its :class:`Policy` class (built with the run's :class:`PolicyConfig`). ``lr``: its tuned learning
    rate per profile (key ``"quick"``), or per profile and backbone where a backbone was tuned on its own (key
    ``"quick/mld"``), where it differs from the fine-tuning profile's row (:meth:`tuned_lr`). ``policy_defaults``: PolicyConfig fields
    it sets in every profile; ``default_k(T)``: its K for a trajectory of T steps (DRaFT-K: K = T, i.e. DRaFT-50 at
    T = 50), or None when the method has no K (then ``uses_k`` is False and ``k`` is ignored).
    """

    name: str
    policy: type[Policy]
    lr: Mapping[str, float] = field(default_factory=dict)
    policy_defaults: Mapping[str, Any] = field(default_factory=dict)
    default_k: Callable[[int], int] | None = None
    description: str = ""

    @property
    def uses_k(self) -> bool:
        return self.default_k is not None

    def tuned_lr(self, profile: str, backbone: str | None = None, default: float | None = None) -> float | None:
        """The lr tuned for ``profile`` on ``backbone`` if there is one, else for ``profile``, else ``default``."""
        if backbone is not None and f"{profile}/{backbone}" in self.lr:
            return self.lr[f"{profile}/{backbone}"]
        return self.lr.get(profile, default)

    def policy_config(self, num_steps: int) -> PolicyConfig:
        """The method's policy defaults for a profile with T = ``num_steps``."""
        k = {"k": self.default_k(num_steps)} if self.default_k is not None else {}
        return PolicyConfig(**{**k, **self.policy_defaults})

    def make_policy(self, config: PolicyConfig | None = None) -> Policy:
        return self.policy(config)

    def updates_per_trajectory(self, config: PolicyConfig, num_steps: int) -> int:
        """Optimiser steps per trajectory of ``num_steps`` (EasyTune: one per trained step; the others: one)."""
        return self.make_policy(config).updates_per_trajectory(num_steps)


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method (a new module's spec) to :data:`METHODS`."""
    return METHODS.register(spec.name, spec, replace=replace)


def method_spec(name: str) -> MethodSpec:
    """The spec of method ``name`` (one line listing the registered names if there is none)."""
    return METHODS[name]


_PER_TRAJECTORY = {"quick": QUICK_LR_PER_TRAJECTORY, "quick/mld": QUICK_MLD_LR_PER_TRAJECTORY}

for _spec in (
    MethodSpec("easytune", EasyTune, lr={"quick": QUICK_LR_PER_STEP, "quick/mld": QUICK_MLD_LR_PER_STEP},
               description="EasyTune-step: stop-gradient on x_t, reward and update at every trained step"),
    MethodSpec("easytune-chain", EasyTuneChain, lr=_PER_TRAJECTORY,
               description="EasyTune without the stop-gradient: one update per trajectory (O(T) memory)"),
    MethodSpec("draft", DRaFT, lr=_PER_TRAJECTORY, default_k=lambda num_steps: num_steps,
               description="DRaFT-K: gradient through the last K steps, reward on the final sample"),
    MethodSpec("draft-lv", DRaFTLV, lr=_PER_TRAJECTORY,
               description="DRaFT-LV: DRaFT-1 with re-noised copies of the final sample"),
    MethodSpec("alignprop", AlignProp, lr=_PER_TRAJECTORY,
               description="AlignProp: a random contiguous tail with gradient checkpointing"),
    MethodSpec("drtune", DRTune, lr=_PER_TRAJECTORY, default_k=lambda num_steps: min(5, num_steps),
               description="DRTune: detached inputs, k trainable steps, early stop at a random late step"),
    MethodSpec("refl", ReFL, lr=_PER_TRAJECTORY,
               description="ReFL: one gradient step at a random late step, reward on its x0 estimate"),
):
    register_method(_spec)
