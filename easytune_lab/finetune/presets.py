"""Presets: whole configurations of a comparison, declared as data — the authors' (``official``) and a fair one.

A :class:`Preset` is a table of :func:`~easytune_lab.finetune.train.finetune_config` overrides: ``common`` for every
method, then ``per_method`` rows (``"*"`` for the methods without a row of their own), then ``per_profile`` rows that
scale budgets to the profile; plus the reward the methods fine-tune against. The preset's name and the overrides it
resolved to are saved in the run manifest with the rest of the configuration.

``official`` is what the authors' public code does (github.com/wengwanjiang/EasyTune: ``ft_mld_chain.py --ft_type
EZtune --ft_k 10``, ``mld/models/modeltype/mld.py`` ``_diffusion_reverse_ft_EZTUne``, ``configs/ft_mld_t2m.yaml``,
``train_spm.py``):

* EasyTune trains only the last k = 10 of the T = 50 DDIM steps, one AdamW update each, with every per-step gradient
  taken at the parameters the batch started with (``gradient_at="start"``);
* the reward is −cos(E_M(x̂0), E_T(c)) with λ = 1 (``reward_scale="unit"``) from the authors' SPL reward
  (``reward="spl-official"``: :func:`~easytune_lab.reward.train.official_spl`);
* classifier-free guidance 7.5 inside the fine-tuning trajectories; 64 captions per trajectory;
* AdamW lr 1e-5, betas (0.9, 0.999), no weight decay, clip 1.0, cosine schedule whose 1000 warm-up steps count
  optimiser steps (``schedule_clock="updates"``), so EasyTune (10 updates per batch) leaves warm-up after 100 batches
  and a baseline (1 update per batch) after 1000;
* EasyTune trains 10 epochs, the baselines 4 (the budgets below keep that 10 : 4 ratio at the small profiles).

Not reproduced on purpose: the authors' early stopping (EasyTune only) and their choice of checkpoint on the test
split; every run here trains its whole budget and nothing is selected on test data.

``fair`` gives every method the same number of trajectories of our 8 captions, counts the schedule in trajectories,
keeps our settings (all steps, live parameters, τ-scaled reward, our SPL, guidance 2.5) and gives each method its own
tuned lr (:attr:`~easytune_lab.finetune.methods.MethodSpec.lr`, chosen on held-out captions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..diffusion.registry import Registry

#: the rewards a preset can name (``Workbench.finetune(reward=...)``)
REWARDS = ("plain", "spl", "spl-official", "noise-aware")


@dataclass(frozen=True)
class Preset:
    """A configuration of a comparison, as data (see the module docstring)."""

    name: str
    description: str
    common: Mapping[str, Any] = field(default_factory=dict)
    per_method: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    per_profile: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    reward: str = "spl"

    def overrides(self, method: str, profile: str) -> dict:
        """The finetune_config overrides of ``method`` at ``profile``: common, then the method's row (or ``"*"``),
        then the profile's row for the method (or ``"*"``)."""
        out = dict(self.common)
        out.update(self.per_method.get(method, self.per_method.get("*", {})))
        rows = self.per_profile.get(profile, {})
        out.update(rows.get(method, rows.get("*", {})))
        return out


PRESETS: Registry[Preset] = Registry("preset")


def register_preset(preset: Preset, *, replace: bool = False) -> Preset:
    """Add a preset to :data:`PRESETS`."""
    if preset.reward not in REWARDS:
        raise ValueError(f"preset {preset.name}: unknown reward '{preset.reward}' (choose {', '.join(REWARDS)})")
    return PRESETS.register(preset.name, preset, replace=replace)


def preset(name: str) -> Preset:
    """The preset ``name`` (one line listing the registered ones if there is none)."""
    return PRESETS[name]


register_preset(Preset(
    name="official",
    description="the authors' public code: last-10 steps at the start parameters, unit cosine reward, CFG 7.5, "
                "64 captions, lr 1e-5 cosine with warm-up in optimiser steps, 10 : 4 epochs, their SPL",
    common=dict(batch_size=64, guidance=7.5, lr=1e-5, weight_decay=0.0, grad_clip=1.0, lr_schedule="cosine",
                schedule_clock="updates", reward_scale="unit"),
    per_method={"easytune": dict(train_steps="last", num_train_steps=10, gradient_at="start")},
    # budgets in trajectories, keeping the authors' 10 : 4 epochs; warm-up in optimiser steps: 1000 of the paper's
    # ~1440 baseline batches (4 epochs of HumanML3D at 64), i.e. ~70 % of a baseline's budget at every profile
    per_profile={
        "smoke": {"easytune": dict(iterations=5, warmup=1), "*": dict(iterations=2, warmup=1)},
        "quick": {"easytune": dict(iterations=25, warmup=7), "*": dict(iterations=10, warmup=7)},
        "paper": {"easytune": dict(iterations=3600, warmup=1000), "*": dict(iterations=1440, warmup=1000)},
    },
    reward="spl-official",
))

register_preset(Preset(
    name="fair",
    description="equal trajectories for every method, schedule counted in trajectories, each method at its tuned "
                "lr, our settings (all steps, live parameters, τ-scaled reward, our SPL, 8 captions)",
    common=dict(schedule_clock="trajectories", gradient_at="live", reward_scale="tau", train_steps="all"),
    per_profile={"smoke": {"*": dict(iterations=4)}, "quick": {"*": dict(iterations=16)},
                 "paper": {"*": dict(iterations=1000)}},
    reward="spl",
))
