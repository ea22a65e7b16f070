"""Devices, seeds and profiles shared by every stage.

Profiles name the scale a stage runs at: ``smoke`` (tiny, seconds on CPU, for tests and CI), ``quick``
(a 2-core CPU laptop, minutes) and ``paper`` (GPU, the paper's model sizes). Each stage keeps its own
config dataclass per profile; this module only validates the name.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm as text_bar

from .errors import NonFiniteError, UserError

PROFILES = ("smoke", "quick", "paper")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise UserError(f"--profile: unknown profile '{profile}' (choose from {', '.join(PROFILES)})")
    return profile


def resolve_device(device: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a user error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device: unknown device '{device}' (choose auto, cpu or cuda)")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` restrict), not the
    machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Threads for CPU work: ``EASYTUNE_THREADS``, else ``OMP_NUM_THREADS`` (so that a stage which sets torch's
    threads itself never overrides what the user asked of every stage), else the available cores shared by the
    processes torchrun started on this node (all of them in a plain run)."""
    for name in ("EASYTUNE_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                threads = 0
            if threads < 1:
                raise UserError(f"{name}: must be a positive integer (got '{value}')")
            return threads
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, available_cores() // per_node)


def parse_int_list(text: str, flag: str, low: int, high: int, what: str = "value") -> list[int]:
    """``"10,50,100"`` -> ``[10, 50, 100]``, every value in [low, high]; one-line errors that name ``flag``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: '{text}' is not a comma-separated list of integers") from None
    if not values or any(not low <= v <= high for v in values):
        raise UserError(f"{flag}: every {what} must be in [{low}, {high}] (got '{text}')")
    return values


def check_json_out(path: os.PathLike | str) -> None:
    """``--out`` of a command that writes one JSON file."""
    if os.path.splitext(str(path))[1].lower() != ".json":
        raise UserError(f"--out {path}: must end in .json")



#: Speed-ups measured by ``easytune bench throughput`` (results/quick/bench/throughput_before.json against
#: throughput_after.json), each on by default:
#:
#: * ``cpu_attention``: on a CPU, ``nn.TransformerEncoder`` runs the regular attention path even without gradient,
#:   not torch's inference fast path (native MHA with ``_masked_softmax``), which costs the quick MDM 20–28 % more
#:   CPU time per guided step (:class:`easytune_lab.diffusion.attention.TransformerEncoder`);
#: * ``fused_adamw``: fine-tuning's AdamW as one fused kernel (EasyTune takes one optimiser step per denoising step);
#: * ``reward_text_once``: the reward's caption embedding computed once per trajectory, not at every reward call.
#:
#: :func:`reference_path` switches them all off: the previous code path, which the tests compare against.
FAST_PATHS = {"cpu_attention": True, "fused_adamw": True, "reward_text_once": True}


@contextlib.contextmanager
def reference_path():
    """Run the enclosed code without the speed-ups of :data:`FAST_PATHS` (the previous code path)."""
    saved = dict(FAST_PATHS)
    FAST_PATHS.update({key: False for key in FAST_PATHS})
    try:
        yield
    finally:
        FAST_PATHS.update(saved)


def compile_unavailable(device) -> str | None:
    """Why ``torch.compile`` cannot run here (None if it can): inductor needs a C compiler for CPU code and a
    Python version dynamo supports."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    try:
        import torch._dynamo as dynamo

        if not dynamo.is_dynamo_supported():
            return f"torch.compile does not support Python {sys.version.split()[0]}"
    except Exception as exc:  # noqa: BLE001 - any import problem means: run eager
        return f"torch._dynamo unavailable ({type(exc).__name__})"
    if getattr(device, "type", str(device)) == "cpu":
        if not any(shutil.which(c) for c in (os.environ.get("CC", ""), "cc", "gcc", "clang") if c):
            return "no C compiler found (CC, cc, gcc or clang), which inductor needs for CPU code"
    return None


def compile_forward(module, device) -> bool:
    """Opt-in: replace ``module.forward`` by ``torch.compile`` of it (parameters and state dict unchanged).

    Where compiling is not possible (:func:`compile_unavailable`), or the compiled call fails the first time it
    runs, the module stays eager after one warning line on stderr. Returns whether the compiled forward is used.
    """
    reason = compile_unavailable(device)
    if reason is not None:
        print(f"warning: --compile: {reason}; running eager", file=sys.stderr)
        return False
    eager = module.forward
    compiled = torch.compile(eager)
    state = {"compiled": True}

    def forward(*args, **kwargs):
        if state["compiled"]:
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a backend that cannot build this graph: eager from now on
                state["compiled"] = False
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
                print(f"warning: --compile: torch.compile failed ({type(exc).__name__}: {first}); running eager",
                      file=sys.stderr)
        return eager(*args, **kwargs)

    forward.uses_compiled = lambda: state["compiled"]  # for tests and reports: still on the compiled path?
    module.forward = forward
    return True


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar (elapsed time, rate and ETA) for every long job: training, cache builds, evaluation.

    In a kernel started by a Jupyter server (JupyterLab, Notebook: ``JPY_SESSION_NAME`` is set) it is
    ``tqdm.auto``'s widget bar; elsewhere (terminal, papermill, CI) the text bar, which also renders in a notebook's
    saved output, where a widget would be stored at its first state. ``EASYTUNE_PROGRESS=text|widget`` overrides."""
    choice = os.environ.get("EASYTUNE_PROGRESS", "auto")
    if choice == "widget" or (choice == "auto" and os.environ.get("JPY_SESSION_NAME")):
        from tqdm.auto import tqdm as widget_bar  # imports ipywidgets

        return widget_bar(iterable, **kwargs)
    return text_bar(iterable, **kwargs)


# ------------------------------------------------------------------------------------------------ numeric options


class NumberRange:
    """The declared range of a numeric option, used as its argparse ``type``: the one place a flag's valid values
    are written down. A value that is not a number, not finite, or outside the range is refused by argparse with
    one line naming the flag (``argument --lr: must be in (0, 1] (got nan)``), before any work starts.

    ``low``/``high`` of None are unbounded; ``low_open``/``high_open`` exclude the bound itself.
    """

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False):
        assert kind in (int, float)
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open
        self.__name__ = kind.__name__  # argparse names the type in its messages

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.kind is int and float(value) != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        def fmt(v):
            return f"{v:g}" if isinstance(v, float) else str(v)

        if self.low is not None and self.high is not None:
            return (f"{'an integer' if self.kind is int else 'a number'} in {'(' if self.low_open else '['}"
                    f"{fmt(self.low)}, {fmt(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {fmt(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {fmt(self.high)}"
        return "a finite number"

    def __call__(self, text: str):
        try:
            value = int(text, 10) if self.kind is int else float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"'{text}' is not {'an integer' if self.kind is int else 'a number'}") \
                from None
        if not self.contains(value):
            what = "must be finite" if isinstance(value, float) and not math.isfinite(value) else \
                f"must be {self.describe()}"
            raise argparse.ArgumentTypeError(f"{what} (got {text})")
        return value

    def __repr__(self) -> str:
        return f"NumberRange({self.kind.__name__}, {self.describe()})"


def integer(low: int | None = None, high: int | None = None) -> NumberRange:
    """An integer option in [low, high]."""
    return NumberRange(int, low, high)


def real(low: float | None = None, high: float | None = None, *, low_open: bool = False,
         high_open: bool = False) -> NumberRange:
    """A finite float option in the given range."""
    return NumberRange(float, low, high, low_open=low_open, high_open=high_open)


SEED = integer(0, 2**32 - 1)          # every --seed
STEPS_T = integer(1, 1000)            # denoising steps T (the schedules have 1000 training timesteps)
COUNT = integer(1, 10**9)             # iterations, epochs, intervals: at least one
COUNT0 = integer(0, 10**9)            # the same where 0 means "off" / "all"
SECONDS = real(0.0, 10**7, low_open=True)


# ------------------------------------------------------------------------------------------------ finiteness


def check_finite_loss(loss, stage: str, step: int) -> None:
    """Stop a trainer whose loss became NaN/Inf (:class:`~easytune_lab.errors.NonFiniteError`, exit 3); every
    rank computes the same all-gathered loss, so every rank stops alike."""
    value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
    if not math.isfinite(value):
        raise NonFiniteError(f"{stage}: the loss became {value} at step {step}; stopped before updating the "
                             "weights (check the data's Std.npy and the learning rate)")


# ------------------------------------------------------------------------------------------------ output paths


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def probe_writable(directory: Path) -> None:
    """Create and remove a temporary file in ``directory``: the OS's own answer to "can I write here?"
    (permissions, read-only mounts, a full disk for new inodes), which ``os.access`` does not give for root."""
    fd, tmp = tempfile.mkstemp(prefix=".easytune-probe-", dir=directory)
    os.close(fd)
    os.unlink(tmp)


def check_output(path: os.PathLike | str, directory: bool = False, suffixes: tuple[str, ...] = ()) -> Path:
    """An output path is of the right kind (a file where a file is written, a directory where a run directory
    is), has an allowed suffix, and its nearest existing folder can be written. Raises ``ValueError`` with the
    reason (:class:`OutputPath` turns it into one argparse line naming the flag)."""
    path = Path(path)
    if directory:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path}: exists and is not a directory (expected a run directory)")
    else:
        if suffixes and path.suffix.lower() not in suffixes:
            raise ValueError(f"{path}: must end in {' or '.join(suffixes)}")
        if path.is_dir():
            raise ValueError(f"{path}: is a directory (expected a {suffixes[0] if suffixes else ''} file)")
    where = _nearest_existing(path if directory else path.parent)
    if not where.is_dir():
        raise ValueError(f"{path}: {where} is a file, not a directory")
    try:
        probe_writable(where)
    except OSError as exc:
        raise ValueError(f"{path}: cannot write in {where} ({exc.strerror or exc})") from None
    return path


class OutputPath:
    """The argparse ``type`` of every output option: ``OutputPath(".json")`` for a file, ``OutputPath(
    directory=True)`` for a run directory. :func:`check_output` runs while the command line is parsed, so a wrong
    kind of target, a wrong suffix or an unwritable place is one line naming the flag, before any work starts."""

    def __init__(self, *suffixes: str, directory: bool = False):
        self.suffixes, self.directory = tuple(s.lower() for s in suffixes), directory
        self.__name__ = "directory" if directory else "file"

    def __call__(self, text: str) -> Path:
        try:
            return check_output(text, self.directory, self.suffixes)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def __repr__(self) -> str:
        return f"OutputPath({', '.join(self.suffixes)}{'directory' if self.directory else ''})"
