"""Backbones declared once: a :class:`BackboneSpec` per backbone, and the registry that maps names to specs.

A backbone module (``denoiser.py``: MDM, ``latent.py``: MLD, ``consistency.py``: LCM) declares ``SPEC``: its model
config class, its model class, its profile table (one :class:`PretrainConfig` row per profile) and its sampler
defaults. :data:`BACKBONES` names every built-in module once; the command line, the workbench, pretraining and
fine-tuning look a backbone up here and never branch on its name. A backbone of one's own is one new module and one
:func:`register_backbone` call::

    from easytune_lab.diffusion.registry import BackboneSpec, PretrainConfig, register_backbone
    register_backbone(BackboneSpec("tiny", TinyConfig, TinyBackbone, {"smoke": PretrainConfig("tiny", ...)}))

Configs are changed only through :func:`replace_known` (``dataclasses.replace`` on known fields): an unknown key is
one :class:`~easytune_lab.errors.UserError` line that lists the valid ones. :class:`Registry` serves the fine-tuning
methods as well (:mod:`easytune_lab.finetune.methods`).

This module imports no backbone (and no torch): a built-in entry is the module that declares it, imported on first
look-up, so ``easytune --help`` stays fast and the backbone modules can import the types defined here.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from ..errors import UserError
from ..runtime import check_profile

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> specs. ``builtin`` maps a name to ``"module:ATTRIBUTE"``, resolved (imported) on first look-up."""

    def __init__(self, what: str, builtin: Mapping[str, str] | None = None):
        self.what = what
        self._lazy = dict(builtin or {})
        self._specs: dict[str, T] = {}
        self._order: list[str] = list(self._lazy)   # declaration order, whatever has been imported since

    def register(self, name: str, spec: T, *, replace: bool = False) -> T:
        if not replace and (name in self._specs or name in self._lazy):
            raise UserError(f"{self.what}: '{name}' is already registered")
        self._lazy.pop(name, None)
        self._specs[name] = spec
        if name not in self._order:
            self._order.append(name)
        return spec

    def unregister(self, name: str) -> None:
        """Remove a registered (not a built-in) entry, e.g. a plugin at the end of a test."""
        self._specs.pop(name, None)
        if name not in self._lazy and name in self._order:
            self._order.remove(name)

    def names(self) -> tuple[str, ...]:
        """Every name, built-ins first in their declared order (no module is imported)."""
        return tuple(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._specs or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        if name not in self._specs:
            if name not in self._lazy:
                raise UserError(f"{self.what}: unknown {self.what} '{name}' (choose from {', '.join(self.names())})")
            module, _, attribute = self._lazy[name].partition(":")
            self._specs[name] = getattr(importlib.import_module(module), attribute or "SPEC")
            del self._lazy[name]
        return self._specs[name]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self[name]) for name in self.names()]


def replace_known(config: Any, overrides: Mapping[str, Any], what: str) -> Any:
    """``dataclasses.replace(config, **overrides)`` on the config's own fields; ``None`` values keep the default.

    An unknown key raises one line naming it and listing the valid keys (``what`` names the config in it)."""
    names = [f.name for f in dataclasses.fields(config)]
    unknown = [k for k in overrides if k not in names]
    if unknown:
        raise UserError(f"{what}: unknown option{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(repr(k) for k in unknown)} (valid: {', '.join(names)})")
    given = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(config, **given) if given else config


@dataclass
class PretrainConfig:
    """One pretraining run. ``stage_fractions`` split ``steps`` (optimiser steps, the run's training iterations)
    between the backbone's stages (MLD: VAE first)."""

    backbone: str = "mdm"
    profile: str = "smoke"
    model: Any = None
    steps: int = 30
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    checkpoint_every: int = 10
    log_every: int = 10
    stage_fractions: dict = field(default_factory=dict)
    teacher: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class BackboneSpec:
    """Everything the library needs to know about one backbone.

    ``config``: the model config dataclass (its ``feature_dim`` field is set from the data); ``model``: the
    :class:`~easytune_lab.diffusion.backbone.Backbone` subclass, built as ``model(config, vocab)``; ``profiles``:
    one :class:`PretrainConfig` row per profile (``smoke``/``quick``/``paper``). Sampler defaults: the model
    config's ``diffusion`` (sampler, T = ``sample_steps``, guidance) is what ``easytune sample`` uses; with
    ``native_sampler`` a base run is also fine-tuned against and evaluated with it (LCM's few-step consistency
    sampler), otherwise with the fine-tuning profile's DDIM and T, so base and tuned runs share one sampler.
    ``teacher``: the backbone whose finished run this one distils (LCM: ``mld``), given to ``setup(config, data)``
    through ``config.teacher``; ``setup`` returns ``init(model)`` (initial weights) or None. ``motion_space``:
    samples are motions, not latents (a noise-aware reward can score x_t).
    """

    name: str
    config: type
    model: type
    profiles: Mapping[str, PretrainConfig]
    native_sampler: bool = False
    teacher: str | None = None
    setup: Callable[[PretrainConfig, Any], Callable | None] | None = None
    motion_space: bool = True
    description: str = ""

    def profile(self, profile: str, feature_dim: int = 263) -> PretrainConfig:
        """A fresh copy of the profile's row, for ``feature_dim``-wide features."""
        check_profile(profile)
        if profile not in self.profiles:
            raise UserError(f"profile: backbone '{self.name}' has no '{profile}' profile "
                            f"(it has {', '.join(self.profiles)})")
        row = copy.deepcopy(self.profiles[profile])
        return dataclasses.replace(row, model=dataclasses.replace(row.model, feature_dim=feature_dim))

    def build(self, config: PretrainConfig, vocab) -> Any:
        return self.model(config.model, vocab)


#: The built-in backbones: name -> the module that declares its ``SPEC``.
BACKBONES: Registry[BackboneSpec] = Registry("backbone", {
    "mdm": "easytune_lab.diffusion.denoiser:SPEC",
    "mld": "easytune_lab.diffusion.latent:SPEC",
    "lcm": "easytune_lab.diffusion.consistency:SPEC",
})


def register_backbone(spec: BackboneSpec, *, replace: bool = False) -> BackboneSpec:
    """Add a backbone (a new module's ``SPEC``) to :data:`BACKBONES`."""
    return BACKBONES.register(spec.name, spec, replace=replace)


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone ``name`` (one line listing the registered names if there is none)."""
    return BACKBONES[name]
