"""Every numeric flag of every command, enumerated from the argparse definitions (a new flag is covered without
editing this file), tried with nan, ±inf, negative, zero and huge values.

The declared range (:class:`easytune_lab.runtime.NumberRange`, the flag's argparse ``type``) is the source of truth:
a value inside it must be accepted as that number, a value outside it refused by ``easytune`` itself with exit 2,
one line naming the flag, no traceback and no output written. A numeric flag without a declared range fails
``test_every_numeric_flag_declares_its_range``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from easytune_lab.cli import build_parser, main
from easytune_lab.runtime import NumberRange, OutputPath

from helpers import run_cli

VALUES = ["nan", "inf", "-inf", "-1", "0", "1e30", "1000000000000000", "2.5"]


def leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, parser) of every runnable subcommand."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, prefix + (name,))


def _valid_value(action: argparse.Action, tmp: Path) -> str:
    if action.choices:
        return str(list(action.choices)[0])
    if isinstance(action.type, NumberRange):
        r = action.type
        low = r.low if r.low is not None else 0
        value = low + (1 if r.low_open or r.kind is int and r.low is None else 0)
        return str(int(value) if r.kind is int else float(value) if not r.low_open else float(low) + 0.5 *
                   min(1.0, (r.high - low) if r.high is not None else 1.0))
    if isinstance(action.type, OutputPath):
        return str(tmp / f"out{action.type.suffixes[0] if action.type.suffixes else ''}")
    return "x"


def base_argv(words: tuple[str, ...], parser: argparse.ArgumentParser, tmp: Path, skip: argparse.Action) -> list[str]:
    """The command with every required option and positional filled with a valid placeholder."""
    argv = list(words)
    for action in parser._actions:
        if action is skip or isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:                     # positional
            argv.append(_valid_value(action, tmp))
        elif action.required:
            argv += [action.option_strings[0], _valid_value(action, tmp)]
    return argv


PARSER = build_parser()
LEAVES = dict(leaf_parsers(PARSER))


def numeric_cases():
    cases = []
    for words, parser in LEAVES.items():
        for action in parser._actions:
            if isinstance(action.type, NumberRange):
                for value in VALUES:
                    cases.append(pytest.param(words, action.option_strings[0], value,
                                              id=f"{' '.join(words)} {action.option_strings[0]} {value}"))
    return cases


CASES = numeric_cases()


def test_every_numeric_flag_declares_its_range():
    """No int/float flag without a declared range: a new one must say what it accepts to be added."""
    bare = [f"{' '.join(words)} {a.option_strings or a.dest}"
            for words, parser in LEAVES.items() for a in parser._actions if a.type in (int, float)]
    assert not bare, f"numeric flags without a NumberRange type: {bare}"
    assert len({c.values[:2] for c in CASES}) >= 45      # the catalogue covers every numeric flag there is


def _parse_number(kind: type, text: str):
    try:
        return int(text, 10) if kind is int else float(text)
    except ValueError:
        return None


@pytest.mark.parametrize("words,flag,value", CASES)
def test_numeric_flag_value(words, flag, value, tmp_path, capsys):
    parser = LEAVES[words]
    action = next(a for a in parser._actions if flag in a.option_strings)
    argv = base_argv(words, parser, tmp_path, skip=action) + [f"{flag}={value}"]  # "=": -1 is not an option
    number = _parse_number(action.type.kind, value)
    allowed = number is not None and action.type.contains(number)
    if allowed:  # inside the declared range: parsed as that number (the command is not run)
        parsed = getattr(PARSER.parse_args(argv), action.dest)
        parsed = parsed[-1] if isinstance(parsed, list) else parsed
        assert parsed == number or (isinstance(number, float) and math.isclose(parsed, number))
        return
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert flag in lines[0] and value in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_catalogue_size(capsys):
    commands = {words for words, _, _ in (c.values for c in CASES)}
    flags = {c.values[:2] for c in CASES}
    with capsys.disabled():
        print(f"\nflag catalogue: {len(flags)} numeric flags x {len(VALUES)} values = {len(CASES)} cases "
              f"over {len(commands)} commands")
    assert len(CASES) == len(flags) * len(VALUES)


# ------------------------------------------------------------------------------------------ renamed options
# One name per concept (easytune_lab.commands.options): --sample-steps for T, --iterations for training iterations.
# An old spelling is a deprecated alias: the same value, plus one deprecation line on stderr.

def alias_cases():
    from easytune_lab.commands.options import deprecated_aliases

    return [pytest.param(words, action, old, id=f"{' '.join(words)} {old}")
            for words, parser in LEAVES.items() for action in parser._actions
            for old in deprecated_aliases(action)]


ALIASES = alias_cases()


def test_the_renamed_options():
    found = {(" ".join(words), action.option_strings[0], old) for words, action, old in (c.values for c in ALIASES)}
    assert found == {("pretrain", "--iterations", "--steps"), ("finetune", "--iterations", "--steps"),
                     ("sample", "--sample-steps", "--steps"), ("eval", "--sample-steps", "--steps"),
                     ("bench memory", "--sample-steps", "--steps"), ("bench paper", "--sample-steps", "--steps")}
    # no option of any command is still spelled --steps or --num-steps on its own
    names = {s for parser in LEAVES.values() for a in parser._actions for s in a.option_strings[:1]}
    assert not names & {"--steps", "--num-steps"}


@pytest.mark.parametrize("words,action,old", ALIASES)
def test_a_deprecated_alias_gives_the_same_value_and_one_warning(words, action, old, tmp_path, capsys):
    parser = LEAVES[words]
    value = _valid_value(action, tmp_path)
    argv = base_argv(words, parser, tmp_path, skip=action)
    capsys.readouterr()
    new = getattr(PARSER.parse_args(argv + [action.option_strings[0], value]), action.dest)
    assert capsys.readouterr().err == ""                          # the option's own name: silent
    aliased = getattr(PARSER.parse_args(argv + [old, value]), action.dest)
    lines = capsys.readouterr().err.strip().splitlines()
    assert aliased == new and str(new) == value
    assert lines == [f"easytune: warning: {old} is deprecated, use {action.option_strings[0]}"]
    # an out-of-range value given by the old spelling is refused naming the option, in one line
    if isinstance(action.type, NumberRange):
        code, err = run_cli(argv + [f"{old}=0"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and action.option_strings[0] in err, err
