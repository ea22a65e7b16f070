"""The ``easytune`` command line.

Each group of subcommands lives in ``easytune_lab/commands/<name>.py`` and exposes ``register(subparsers)``.
User errors (:class:`easytune_lab.errors.UserError`) print one line and exit non-zero, without a traceback.
Training commands take ``--name NAME``; every option that takes a run accepts such a name as well as a path
(``easytune runs`` lists them; :func:`easytune_lab.runs.resolve_run`). Commands marked ``distributed`` (pretrain, reward train|spl, evaluator train, finetune) also run under ``torchrun``
(:mod:`easytune_lab.distributed`); the others refuse to.

The library's errors name its own parameters (``num_train_steps: must be in [1, 10]``); a command shows such a
leading name as the option that sets it (``--num-train-steps: ...``, :func:`in_flag_terms`). Renamed options keep
their old spelling as a deprecated alias (:mod:`easytune_lab.commands.options`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from . import __version__, distributed
from .errors import UserError
from .runs import check_name, pickle_allowed, register_name, run_lock, write_tensorboard

# Command modules, in the order their groups appear in ``easytune --help``.
COMMAND_MODULES = [
    "data",
    "reproduce",
    "runs",
    "evaluator",
    "eval",
    "reward",
    "export",
    "pretrain",
    "sample",
    "finetune",
    "bench",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's convention)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _leaf_parsers(parser: argparse.ArgumentParser):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
    for action in subs:
        for sub in dict.fromkeys(action.choices.values()):
            yield from _leaf_parsers(sub)


def in_flag_terms(message: str, flags: dict[str, str]) -> str:
    """``message`` with a leading library parameter name (``name: ...``) replaced by the command's option for it."""
    head, sep, rest = message.partition(":")
    if sep and head in flags:
        return f"{flags[head]}:{rest}"
    return message


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="easytune", description="easytune_lab: differentiable-reward fine-tuning of text-to-motion diffusion models")
    parser.add_argument("--version", action="version", version=f"easytune_lab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"easytune_lab.commands.{name}")
        module.register(sub)
    for leaf in _leaf_parsers(parser):   # library parameter name -> the option that sets it (error messages)
        leaf.set_defaults(flag_names={a.dest: a.option_strings[0] for a in leaf._actions
                                      if a.option_strings and not isinstance(a, argparse._HelpAction)})
    return parser


def _first_process() -> bool:
    """Rank 0 of a torchrun launch (by its environment, whether or not it joined the group yet), or a plain run."""
    return os.environ.get("RANK", "0").strip() in ("0", "")


def _locked(args: argparse.Namespace):
    """The exclusive lock on the run directory a command writes (``set_defaults(lock="out")`` names the option),
    held by the first process only (under torchrun the others write nothing there)."""
    name = getattr(args, "lock", None)
    if not name or getattr(args, name, None) is None or not _first_process():
        return contextlib.nullcontext()
    return run_lock(getattr(args, name), f"--{name.replace('_', '-')}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if distributed.launched() and not getattr(args, "distributed", False):
            raise UserError(f"{args.command}: runs in one process; start it without torchrun "
                            "(torchrun is for pretrain, reward train|spl, evaluator train and finetune)")
        name = getattr(args, "name", None)
        if name is not None:                 # training commands: checked before anything is trained
            check_name(name, args.out)
        with pickle_allowed(getattr(args, "allow_pickle", False)), _locked(args):
            result = args.func(args)
        if getattr(args, "distributed", False) and not result and _first_process() and getattr(args, "out", None):
            write_tensorboard(args.out)      # training curves for TensorBoard, when it is installed
            if name is not None:
                register_name(name, args.out)
    except UserError as exc:
        if _first_process():  # under torchrun every rank fails alike; one line is enough
            print(f"easytune: error: {in_flag_terms(str(exc), getattr(args, 'flag_names', {}))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("easytune: interrupted", file=sys.stderr)
        return 130
    finally:
        distributed.teardown()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
