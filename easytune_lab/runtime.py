"""Devices, seeds and profiles shared by every stage.

Profiles name the scale a stage runs at: ``smoke`` (tiny, seconds on CPU, for tests and CI), ``quick``
(a 2-core CPU laptop, minutes) and ``paper`` (GPU, the paper's model sizes). Each stage keeps its own
config dataclass per profile; this module only validates the name.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys

import numpy as np

from .errors import UserError

PROFILES = ("smoke", "quick", "paper")


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise UserError(f"--profile: unknown profile '{profile}' (choose from {', '.join(PROFILES)})")
    return profile


def resolve_device(device: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a user error."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine (use --device cpu or auto)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device: unknown device '{device}' (choose auto, cpu or cuda)")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def default_threads() -> int:
    """Threads for CPU work: ``EASYTUNE_THREADS``, else the cores shared by the processes torchrun started on
    this node (all of them in a plain run)."""
    if "EASYTUNE_THREADS" in os.environ:
        return int(os.environ["EASYTUNE_THREADS"])
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, (os.cpu_count() or 1) // per_node)


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
    import torch

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
    import torch

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
