"""Option names shared by every command: one name per concept, old spellings kept as deprecated aliases.

* ``--sample-steps``: the number of denoising steps T (library: ``sample_steps``), in ``sample``, ``eval``,
  ``finetune`` and ``bench memory|paper`` (formerly ``--steps`` in all but ``finetune``);
* ``--iterations``: training iterations (library: ``iterations`` in fine-tuning; pretraining's optimiser steps,
  ``PretrainConfig.steps``), in ``pretrain`` and ``finetune`` (formerly ``--steps``).

An old spelling still works and prints one deprecation line on stderr (:func:`renamed`). The checkpoint options of
the epoch-based trainers (``evaluator train``, ``reward train|spl``) are declared once, in
:func:`add_checkpoint_options`.
"""

from __future__ import annotations

import argparse
import sys

from ..runtime import COUNT


class _RenamedStore(argparse._StoreAction):
    """``store``, plus one stderr line when the option is given by a deprecated spelling."""

    deprecated: tuple[str, ...] = ()

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated:
            print(f"easytune: warning: {option_string} is deprecated, use {self.option_strings[0]}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def renamed(*old: str) -> type[argparse.Action]:
    """An argparse ``action`` for an option whose first spelling is its name and ``old`` its deprecated aliases:
    ``p.add_argument("--iterations", "--steps", action=renamed("--steps"), ...)``."""
    return type("RenamedStore", (_RenamedStore,), {"deprecated": tuple(old)})


def deprecated_aliases(action: argparse.Action) -> tuple[str, ...]:
    """The deprecated spellings of an option (empty for an option without any)."""
    return tuple(getattr(action, "deprecated", ()))


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """``--checkpoint-every``, ``--stop-after`` and ``--resume`` of a trainer that checkpoints per epoch."""
    p.add_argument("--checkpoint-every", type=COUNT, default=1, help="epochs between checkpoints (default 1)")
    p.add_argument("--stop-after", type=COUNT, default=None,
                   help="stop after this many epochs with a checkpoint, as an interruption would (for tests)")
    p.add_argument("--resume", action="store_true",
                   help="continue --out from its last checkpoint (from the start if it was killed before the "
                        "first) with the same options")
