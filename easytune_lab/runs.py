"""Run directories: manifests, safetensors checkpoints, resume.

Every stage of the workbench writes a run directory::

    RUN/manifest.json        config dataclass as dict, seed, versions, device, git commit, kind
    RUN/weights.safetensors  final weights (tensors only: loading never executes code)
    RUN/checkpoint/          last checkpoint (weights, optimiser, RNG state, step) for --resume
    RUN/metrics.json         what the stage measured

Checkpoints are swapped in whole (:func:`checkpoint_writer`), so a run killed at any moment resumes from a
complete one. Pickle checkpoints are refused unless the command got ``--allow-pickle``.

Later stages name the run directory they build on.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import UserError
from .io import atomic_path, write_json

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


def config_to_dict(config: Any) -> dict:
    """A dataclass config (possibly nested) as a plain JSON-able dict."""
    if dataclasses.is_dataclass(config):
        return {k: config_to_dict(v) for k, v in dataclasses.asdict(config).items()}
    if isinstance(config, dict):
        return {str(k): config_to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Path):
        return str(config)
    if isinstance(config, (np.integer,)):
        return int(config)
    if isinstance(config, (np.floating,)):
        return float(config)
    return config


def config_hash(config: Any, length: int = 12) -> str:
    """A short stable hash of a configuration (the cache key of trained runs)."""
    blob = json.dumps(config_to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment_info(device: str | None = None) -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    info["device"] = device
    return info


def make_manifest(kind: str, config: Any, seed: int | None = None, device: str | None = None,
                  parents: dict[str, str] | None = None, extra: dict | None = None) -> dict:
    from . import __version__

    manifest = {
        "kind": kind,
        "easytune_lab": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": seed,
        "config": config_to_dict(config),
        "config_hash": config_hash(config),
        "git_commit": git_commit(),
        "environment": environment_info(device),
        "command": " ".join(sys.argv),
        "parents": parents or {},
    }
    if extra:
        manifest.update(extra)
    return manifest


def write_manifest(run_dir: str | os.PathLike, manifest: dict) -> None:
    write_json(Path(run_dir) / MANIFEST, manifest)


def read_manifest(run_dir: str | os.PathLike, kind: str | None = None) -> dict:
    """Read ``RUN/manifest.json``; raise :class:`UserError` if it is missing, broken or of another kind."""
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: run directory does not exist")
    if not path.is_file():
        raise UserError(f"{path}: missing (is {run_dir} a run directory?)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if kind is not None and manifest.get("kind") != kind:
        raise UserError(f"{run_dir}: is a '{manifest.get('kind')}' run, expected a '{kind}' run")
    return manifest


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Save a dict of tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


# ------------------------------------------------------------------------------------------------ loading weights

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
ALLOW_PICKLE_FLAG = "--allow-pickle"
_ALLOW_PICKLE: contextvars.ContextVar[bool] = contextvars.ContextVar("allow_pickle", default=False)


@contextlib.contextmanager
def pickle_allowed(allowed: bool = True) -> Iterator[None]:
    """Within the block, :func:`load_tensors` accepts pickle checkpoints (what ``--allow-pickle`` turns on)."""
    token = _ALLOW_PICKLE.set(bool(allowed))
    try:
        yield
    finally:
        _ALLOW_PICKLE.reset(token)


def add_allow_pickle(parser) -> None:
    """The ``--allow-pickle`` option of every command that loads weights."""
    parser.add_argument(ALLOW_PICKLE_FLAG, action="store_true",
                        help="also load pickle checkpoints (.pt/.pth/.ckpt/.bin/.pkl); unpickling can run "
                             "arbitrary code, so only for files you trust (default: safetensors only)")


def is_pickle(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def pickle_refusal(path: str | os.PathLike) -> UserError:
    return UserError(f"{path}: pickle checkpoint refused (loading it can run arbitrary code); convert it to "
                     f".safetensors, or pass {ALLOW_PICKLE_FLAG} if you trust the file")


def load_tensors(path: str | os.PathLike, device: str = "cpu", allow_pickle: bool | None = None) -> dict:
    """Load a dict of tensors from safetensors.

    Pickle checkpoints are refused unless ``allow_pickle`` (default: whether the command got ``--allow-pickle``,
    see :func:`pickle_allowed`); then a state dict, or a dict holding one under ``state_dict``/``model``, is read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file missing")
    if is_pickle(path):
        if not (_ALLOW_PICKLE.get() if allow_pickle is None else allow_pickle):
            raise pickle_refusal(path)
        return _load_pickle(path, device)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid safetensors file ({exc})") from None


def _load_pickle(path: Path, device: str) -> dict:
    import torch

    try:
        obj = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is the file's problem
        raise UserError(f"{path}: cannot be read as a torch checkpoint ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: holds no dictionary of tensors (a state dict)")
    return {str(k): v for k, v in obj.items()}


def weights_file(run_dir: str | os.PathLike) -> Path:
    """``RUN/weights.safetensors``, or a pickle ``RUN/weights.pt`` (etc.) in its place (refused on loading
    unless pickles are allowed)."""
    run_dir = Path(run_dir)
    safe = run_dir / WEIGHTS
    if safe.is_file():
        return safe
    for suffix in PICKLE_SUFFIXES:
        candidate = run_dir / f"weights{suffix}"
        if candidate.is_file():
            return candidate
    return safe


def check_model_dir(path: str | os.PathLike, option: str) -> None:
    """A local Hugging Face model directory whose weights are only pickles is refused without --allow-pickle."""
    path = Path(path)
    if not path.is_dir() or _ALLOW_PICKLE.get():
        return
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p for p in path.iterdir() if p.is_file() and is_pickle(p))
    if pickles:
        raise UserError(f"{option} {path}: its weights ({pickles[0].name}) are a pickle checkpoint (loading it can "
                        f"run arbitrary code); convert them to .safetensors, or pass {ALLOW_PICKLE_FLAG} if you "
                        "trust the files")


def hf_pickle_kwargs() -> dict:
    """Keyword arguments for ``from_pretrained``: safetensors only unless pickles are allowed."""
    return {} if _ALLOW_PICKLE.get() else {"use_safetensors": True}


# ------------------------------------------------------------------------------------------------ checkpoints

CHECKPOINT = "checkpoint"


@contextlib.contextmanager
def checkpoint_writer(run_dir: str | os.PathLike, name: str = CHECKPOINT) -> Iterator[Path]:
    """Build ``RUN/<name>/`` as a whole: the block writes into ``RUN/<name>.new/``, which then replaces it.

    The block must write its ``state.json`` last (its presence marks a complete checkpoint). Whenever the process
    dies, :func:`find_checkpoint` finds a complete checkpoint: the previous one or the new one.
    """
    run_dir = Path(run_dir)
    new, old, final = run_dir / f"{name}.new", run_dir / f"{name}.old", run_dir / name
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    yield new
    if not (new / "state.json").is_file():
        raise RuntimeError(f"{new}: checkpoint written without its state.json")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(run_dir: str | os.PathLike, name: str = CHECKPOINT) -> Path | None:
    """The last complete checkpoint ``RUN/<name>/`` (repaired after an interrupted swap), or None.

    :func:`checkpoint_writer` renames ``<name>`` to ``<name>.old`` and ``<name>.new`` to ``<name>``; a kill between
    the two renames leaves no ``<name>``, and the complete ``.new`` (else ``.old``) is moved back into place.
    Only one process may call it (rank 0; the others wait at a barrier).
    """
    run_dir = Path(run_dir)
    new, old, final = run_dir / f"{name}.new", run_dir / f"{name}.old", run_dir / name
    if not (final / "state.json").is_file():
        for candidate in (new, old):
            if (candidate / "state.json").is_file():
                shutil.rmtree(final, ignore_errors=True)
                candidate.rename(final)
                break
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    return final if (final / "state.json").is_file() else None


def never_started(run_dir: str | os.PathLike) -> bool:
    """True if ``run_dir`` is an existing directory that a run was killed in before it wrote its manifest
    (it holds nothing but temporary files)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    return all(p.name.startswith(".") and p.name.endswith(".tmp") for p in run_dir.iterdir())


# ----------------------------------------------------------------------------------------------- names and listing
NAMES = "names.json"            # CACHE/names.json: {name: absolute run directory}, written by `--name`
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def project_root(start: str | os.PathLike | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: the working directory) holding ``pyproject.toml`` and
    ``easytune_lab/``; the working directory itself when there is none."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "easytune_lab").is_dir():
            return folder
    return here


def cache_root() -> Path:
    """The cache of datasets and trained runs that names are kept in: ``$EASYTUNE_CACHE``, else ``.cache`` in the
    project root (:func:`project_root`)."""
    env = os.environ.get("EASYTUNE_CACHE")
    return Path(env) if env else project_root() / ".cache"


def read_names(cache: str | os.PathLike | None = None) -> dict[str, str]:
    """The registered run names (``--name``) of ``cache`` (default :func:`cache_root`), name -> run directory."""
    path = Path(cache or cache_root()) / NAMES
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}


def check_name(name: str, out: str | os.PathLike, cache: str | os.PathLike | None = None) -> None:
    """``--name``: letters, digits, ``.``, ``_``, ``-``; not a name already given to another run directory."""
    if not name or not set(name) <= NAME_CHARS or name in (".", "..") or name == "gt":
        raise UserError(f"--name '{name}': use letters, digits, '.', '_' and '-' only (and not 'gt')")
    taken = read_names(cache).get(name)
    if taken is not None and Path(taken) != Path(out).resolve() and Path(taken).exists():
        raise UserError(f"--name '{name}': already names {taken}")


def register_name(name: str, run_dir: str | os.PathLike, cache: str | os.PathLike | None = None) -> None:
    """Record ``name`` for ``run_dir`` in ``CACHE/names.json`` and in the run's manifest (``name``)."""
    run_dir = Path(run_dir).resolve()
    cache = Path(cache or cache_root())
    names = read_names(cache)
    names[name] = str(run_dir)
    write_json(cache / NAMES, dict(sorted(names.items())))
    if (run_dir / MANIFEST).is_file():
        manifest = json.loads((run_dir / MANIFEST).read_text())
        manifest["name"] = name
        write_manifest(run_dir, manifest)


def resolve_run(value: str | os.PathLike | None, cache: str | os.PathLike | None = None) -> Path | None:
    """A run argument as a path: the one place where names become run directories.

    ``value`` is returned as a path when it exists or looks like one (holds a ``/``); otherwise it may be a name
    given with ``--name`` (``CACHE/names.json``) or the folder name of a cached run (``backbone-mdm-3b0631e55107``
    under ``CACHE/runs/``), as ``easytune runs`` lists them. Anything else is returned unchanged as a path, for the
    command's own checks to reject with their message."""
    if value is None:
        return None
    path = Path(value)
    if path.exists() or len(path.parts) != 1 or str(value) == "gt":
        return path
    cache = Path(cache or cache_root())
    named = read_names(cache).get(str(value))
    if named is not None:
        return Path(named)
    cached = cache / "runs" / str(value)
    return cached if cached.is_dir() else path


def run_path(value: str) -> Path:
    """argparse ``type`` of every option that takes a run (a path or a name, see :func:`resolve_run`)."""
    return resolve_run(value)


def add_name_argument(parser) -> None:
    """``--name NAME`` of the training commands: afterwards any run option accepts NAME (``easytune runs``)."""
    parser.add_argument("--name", default=None,
                        help="a name for the finished run; any option that takes a run then accepts it "
                             "(listed by `easytune runs`)")


def describe_run(run_dir: str | os.PathLike, names: dict[str, str] | None = None, now: float | None = None) -> dict:
    """One row of ``easytune runs``: name, stage, backbone or method, profile, seed, key options, status, age
    and path, read from the run's manifest (``status: broken`` when it cannot be read)."""
    run_dir = Path(run_dir)
    by_path = {str(Path(v).resolve()): k for k, v in (names or {}).items()}
    row = {"name": by_path.get(str(run_dir.resolve()), ""), "stage": "?", "what": "", "profile": "", "seed": "",
           "options": "", "status": "broken", "age": "", "path": str(run_dir)}
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return row
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    key = manifest.get("cache_key") if isinstance(manifest.get("cache_key"), dict) else {}
    ft = manifest.get("finetune") if isinstance(manifest.get("finetune"), dict) else {}
    stage = manifest.get("kind", "?")
    what, options = "", []
    if ft:
        stage, what = "finetune", f"{ft.get('method', '?')} ({manifest.get('backbone') or config.get('backbone', '?')})"
        policy = ft.get("policy") if isinstance(ft.get("policy"), dict) else {}
        loop = ft.get("loop") if isinstance(ft.get("loop"), dict) else {}
        lora = ft.get("lora") if isinstance(ft.get("lora"), dict) else {}
        options += [f"{k}={ft[k]}" for k in ("lr", "iterations", "sampler", "sample_steps") if k in ft]
        if ft.get("method", "").startswith("draft"):
            options.append(f"k={policy.get('k')}")
        if policy.get("train_steps") not in (None, "all"):
            options.append(f"train_steps={policy['train_steps']}"
                           + (f"/{policy.get('weighting')}" if policy["train_steps"] == "weighted" else ""))
        if loop.get("reward_on") not in (None, "x0_hat"):
            options.append(f"reward_on={loop['reward_on']}")
        if lora.get("rank"):
            options.append(f"lora_rank={lora['rank']}")
    else:
        if stage == "backbone":
            what = str(manifest.get("backbone") or config.get("backbone", ""))
        elif stage in ("reward", "reward-spl"):
            model = config.get("model") if isinstance(config.get("model"), dict) else {}
            what = "noise-aware" if model.get("noise_aware") or key.get("noise_aware") else "plain"
        elif stage == "eval":
            what = str(key.get("model", ""))
        train = config.get("train") if isinstance(config.get("train"), dict) else config
        options += [f"{k}={train[k]}" for k in ("steps", "epochs", "lr", "batch_size")
                    if train.get(k) not in (None, "", 0)]
    parents = manifest.get("parents") if isinstance(manifest.get("parents"), dict) else {}
    options += [f"{k}={Path(str(v)).name}" for k, v in parents.items() if k != "data" and v]
    created = manifest.get("created")
    age = ""
    if created:
        try:
            seconds = (now or time.time()) - time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) + time.timezone
            age = _age(seconds)
        except (ValueError, OverflowError):
            age = ""
    row.update({"name": manifest.get("name") or row["name"], "stage": stage, "what": what,
                "profile": str(config.get("profile") or key.get("profile") or manifest.get("profile") or ""),
                "seed": "" if manifest.get("seed") is None else str(manifest.get("seed")),
                "options": " ".join(options), "status": str(manifest.get("status", "unknown")), "age": age})
    return row


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def list_runs(cache: str | os.PathLike | None = None) -> list[dict]:
    """Every run under ``CACHE/runs/`` and every named run (``CACHE/names.json``), newest first, as
    :func:`describe_run` rows; temporary build folders are left out."""
    cache = Path(cache or cache_root())
    names = read_names(cache)
    dirs = {p.resolve(): p for p in sorted((cache / "runs").glob("*")) if p.is_dir() and not p.name.startswith(".")}
    for path in names.values():
        if Path(path).is_dir():
            dirs.setdefault(Path(path).resolve(), Path(path))
    rows = [describe_run(p, names) for p in dirs.values()]
    for name, path in names.items():
        if not Path(path).is_dir():
            rows.append({"name": name, "stage": "?", "what": "", "profile": "", "seed": "", "options": "",
                         "status": "missing", "age": "", "path": path})
    created = {str(p): (p / MANIFEST).stat().st_mtime if (p / MANIFEST).is_file() else 0 for p in dirs.values()}
    return sorted(rows, key=lambda r: -created.get(r["path"], 0))


# ----------------------------------------------------------------------------------------------- training curves
TENSORBOARD = "tensorboard"     # RUN/tensorboard/: event files of the run's curves (only with the `tb` extra)
NOT_CURVES = frozenset({"optimizer_steps", "seconds", "texts_seen"})   # counters and clocks, not curves


def training_series(metrics: dict) -> dict[str, tuple[str, list[float], list[float]]]:
    """The curves a run logged in its ``metrics.json``, as ``{name: (x label, x, y)}``: pretraining's ``log``
    (loss and lr per logged step), fine-tuning's ``log`` (reward, loss, gradient norm, lr per iteration) and
    ``evaluations``, reward and evaluator training's ``history`` (per epoch). Non-numeric and mismatched series
    are left out."""
    series: dict[str, tuple[str, list[float], list[float]]] = {}

    def add(prefix: str, rows: dict, xkey: str) -> None:
        x = rows.get(xkey)
        if not isinstance(x, list) or not x:
            return
        for key, values in rows.items():
            if key == xkey or key in NOT_CURVES or not isinstance(values, list) or len(values) != len(x):
                continue
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                series[f"{prefix}/{key}"] = (xkey, [float(v) for v in x], [float(v) for v in values])

    def columns(rows: list) -> dict:
        keys = [k for k in rows[0] if all(isinstance(r, dict) and k in r for r in rows)]
        return {k: [r[k] for r in rows] for k in keys}

    log = metrics.get("log")
    if isinstance(log, dict):
        add("train", log, "iteration" if "iteration" in log else "step")
    history = metrics.get("history")
    if isinstance(history, list) and history and isinstance(history[0], dict):
        add("train", columns(history), "epoch")
    evaluations = metrics.get("evaluations")
    if isinstance(evaluations, list) and evaluations and isinstance(evaluations[0], dict):
        add("eval", columns(evaluations), "iteration")
    return series


def write_tensorboard(run_dir: str | os.PathLike) -> Path | None:
    """Write the run's curves (:func:`training_series`) as TensorBoard event files into ``RUN/tensorboard/``, so
    ``tensorboard --logdir .cache/runs`` shows every run. Only when the ``tensorboard`` package is importable
    (``pip install "easytune_lab[tb]"``); otherwise, or when the run has no curves, nothing is written and None is
    returned. Rewrites the folder whole (written beside it and swapped in)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    series = training_series(metrics) if isinstance(metrics, dict) else {}
    if not series:
        return None
    final = run_dir / TENSORBOARD
    tmp = run_dir / f".{TENSORBOARD}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(tmp))
    try:
        for name, (_, xs, ys) in series.items():
            for x, y in zip(xs, ys):
                writer.add_scalar(name, y, global_step=int(x))
    finally:
        writer.close()
    old = run_dir / f".{TENSORBOARD}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
