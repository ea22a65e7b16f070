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
import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import NonFiniteError, OutputError, UserError
from .io import atomic_path, write_error, write_json

MANIFEST = "manifest.json"
MIN_STD = 1e-6  # smallest usable normalisation Std: dividing by less turns features into overflows (HumanML3D's >= 0.01)
WEIGHTS = "weights.safetensors"



def check_run_out(out: Path, resume: bool) -> None:
    """``--out`` of a training command: absent or empty for a new run; with ``--resume`` an unfinished run (its
    directory exists and holds no manifest yet)."""
    if not resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"--out {out}: exists and is not an empty directory (use --resume to continue it)")
        return
    if not out.is_dir():
        raise UserError(f"--resume: {out} does not exist (nothing to resume)")
    if (out / MANIFEST).exists():
        raise UserError(f"--resume: {out} holds a finished run ({MANIFEST}); nothing to resume")

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
    info["torch"] = torch.__version__
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
    info["device"] = device
    return info


def make_manifest(kind: str, config: Any, seed: int | None = None, device: str | None = None,
                  parents: dict[str, str] | None = None, extra: dict | None = None) -> dict:
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


def read_manifest(run_dir: str | os.PathLike, kind: str | None = None, flag: str | None = None) -> dict:
    """Read ``RUN/manifest.json``; raise :class:`UserError` if it is missing, broken or of another kind (the
    message starts with ``flag``, the option that named the run, when given)."""
    try:
        return _read_manifest(run_dir, kind)
    except UserError as exc:
        if flag is None:
            raise
        raise type(exc)(f"{flag}: {exc}") from None


def _read_manifest(run_dir: str | os.PathLike, kind: str | None = None) -> dict:
    path = Path(run_dir) / MANIFEST
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir}: run directory does not exist")
    if not path.is_file():
        raise UserError(f"{path}: missing (is {run_dir} a run directory?)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    check_manifest(manifest, path)
    if kind is not None and manifest.get("kind") != kind:
        raise UserError(f"{run_dir}: is a '{manifest.get('kind')}' run, expected a '{kind}' run")
    return manifest


def check_manifest(manifest: Any, path: str | os.PathLike) -> None:
    """The schema every manifest shares: a JSON object with a string ``kind``, a ``config`` object and (when
    present) ``parents`` an object of strings."""
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a run manifest (a JSON {type(manifest).__name__}, expected an object)")
    if not isinstance(manifest.get("kind"), str):
        raise UserError(f"{path}: not a run manifest (no 'kind')")
    if not isinstance(manifest.get("config"), dict):
        raise UserError(f"{path}: not a run manifest (no 'config' object)")
    parents = manifest.get("parents", {})
    if not isinstance(parents, dict) or not all(isinstance(v, str) for v in parents.values()):
        raise UserError(f"{path}: 'parents' must map names to run directories")


@contextlib.contextmanager
def manifest_config(run_dir: str | os.PathLike) -> Iterator[None]:
    """Within the block, building a model from ``manifest['config']`` fails with one line naming the manifest
    (a missing or mistyped field, a size no model can have) instead of a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UserError(f"{Path(run_dir) / MANIFEST}: 'config' does not describe a model of this run "
                        f"({type(exc).__name__}: {exc})") from None


def read_normalisation(run_dir: str | os.PathLike, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A run's normalisation statistics (``RUN/mean.npy`` + ``RUN/std.npy``, or ``RUN/normalisation.npz`` with
    ``mean`` and ``std``): present, 1-d float of ``width``, finite, Std > 0; one line naming the file otherwise."""
    run_dir = Path(run_dir)
    npz = run_dir / "normalisation.npz"
    if npz.is_file() and not (run_dir / "mean.npy").is_file():
        try:
            with np.load(npz, allow_pickle=False) as z:
                pairs = [(npz, "mean", np.asarray(z["mean"])), (npz, "std", np.asarray(z["std"]))]
        except KeyError as exc:
            raise UserError(f"{npz}: no {exc} array") from None
        except Exception as exc:  # noqa: BLE001 - zip/npy errors of a damaged file
            raise UserError(f"{npz}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    else:
        pairs = []
        for name in ("mean", "std"):
            path = run_dir / f"{name}.npy"
            if not path.is_file():
                raise UserError(f"{path}: missing (the run's normalisation statistics)")
            try:
                pairs.append((path, name, np.load(path, allow_pickle=False)))
            except Exception as exc:  # noqa: BLE001 - any failure to read is the file's problem
                raise UserError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from None
    out = []
    for path, name, arr in pairs:
        label = f"{path}" if path.suffix == ".npy" else f"{path} ({name})"
        if arr.dtype.kind != "f" or arr.ndim != 1 or (width is not None and arr.shape[0] != width):
            raise UserError(f"{label}: expected a 1-d float array" + (f" of {width} values" if width else "")
                            + f", got {arr.dtype} {arr.shape}")
        if not np.isfinite(arr).all():
            raise NonFiniteError(f"{label}: holds NaN/Inf")
        if name == "std" and not (arr >= MIN_STD).all():
            raise UserError(f"{label}: {int((arr < MIN_STD).sum())} value(s) below {MIN_STD:g} (smallest "
                            f"{arr.min():.3g}); normalising by them overflows")
        out.append(arr.astype(np.float32))
    if out[0].shape != out[1].shape:
        raise UserError(f"{run_dir}: mean and std have different widths ({out[0].shape[0]} vs {out[1].shape[0]})")
    return out[0], out[1]


def load_state_strict(module, state: dict, path: str | os.PathLike, allow_missing: tuple[str, ...] = ()) -> None:
    """``module.load_state_dict(state)`` after checking names, shapes and finiteness against the module the
    manifest's config built: weights of another kind or size are one line naming the file, not a traceback.
    Keys starting with one of ``allow_missing`` may be absent (they keep the module's values)."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(allow_missing)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = (f"missing {', '.join(missing[:2])}" if missing else "") + ("; " if missing and unexpected else "") \
            + (f"unexpected {', '.join(unexpected[:2])}" if unexpected else "")
        raise UserError(f"{path}: weights do not match the run's config ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected: {detail}); weights of another kind of run?")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise UserError(f"{path}: weight {k} has shape {tuple(v.shape)}, the run's config gives "
                            f"{tuple(expected[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NonFiniteError(f"{path}: weight {k} holds NaN/Inf")
    module.load_state_dict(state, strict=not allow_missing)


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None,
                 allow_nonfinite: bool = False) -> None:
    """Save a dict of tensors as safetensors, atomically; NaN/Inf weights are refused unless allowed."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if not allow_nonfinite:
        for k, v in tensors.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise NonFiniteError(f"{path}: refusing to write weight {k}, which holds NaN/Inf")
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as exc:  # safetensors reports OS errors (disk full) in its own type
            raise write_error(path, OSError(str(exc))) from None


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
    path = Path(path)
    sys.audit("easytune_lab.read", str(path))  # safetensors reads in Rust, unseen by the interpreter's "open" event
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


# ------------------------------------------------------------------------------------------------ locking


def lock_path(run_dir: str | os.PathLike) -> Path:
    """The lock file of a run directory: ``.NAME.lock`` beside it (not inside, so that a run directory's content
    and the "absent or empty" checks are the same whether or not it is locked)."""
    run_dir = Path(os.path.abspath(run_dir))
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on ``run_dir`` for the block: a second process writing the same directory is refused
    at once with one line naming the holder's pid (:class:`OutputError`). The lock is an OS file lock
    (``filelock``, ``flock`` on POSIX): the kernel drops it when its process dies, so a lock left by a killed run
    is taken over by the next one, and its pid note is simply overwritten."""
    path = lock_path(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=0)
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = path.read_text().split()[0]
        except (OSError, IndexError):
            holder = "unknown"
        raise OutputError(f"{flag} {run_dir}: another easytune process (pid {holder}) is writing it; wait for it "
                          "to finish or stop it") from None
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with open(path, "w") as fh:  # a second descriptor: writing through it leaves the flock held
            fh.write(f"{os.getpid()} {' '.join(sys.argv[:3])}\n")
        yield path
    finally:
        lock.release()


@contextlib.contextmanager
def build_lock(run_dir: str | os.PathLike, log=None) -> Iterator[Path]:
    """Wait for, then hold, the build lock of a cached run (``.NAME.build.lock`` beside it): two processes that
    ask the run cache for the same run at once (two notebooks of ``easytune reproduce --jobs 2``) build it once;
    the second waits here, then finds it complete. ``log`` is told once when this process has to wait and for
    whom. An OS file lock, as :func:`run_lock`: a killed builder's lock is released with its process."""
    path = Path(os.path.abspath(run_dir))
    path = path.parent / f".{path.name}.build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log is not None:
            try:
                holder = path.read_text().split()[0]
            except (OSError, IndexError):
                holder = "unknown"
            log(f"[cache] waiting for {Path(run_dir).name}: process {holder} is building it")
        lock.acquire()
    try:
        with open(path, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        yield path
    finally:
        lock.release()


# ------------------------------------------------------------------------------------------------ resume

PARENT_FLAGS = {"data": "--data", "base": "--base", "reward": "--reward", "teacher": "--teacher",
                "evaluator": "--evaluator", "init": "--init"}
DATA_IDENTITY_FILES = ("Mean.npy", "Std.npy", "train.txt", "val.txt", "test.txt")


def dataset_identity(root: str | os.PathLike) -> dict[str, str]:
    """Short hashes of what identifies a dataset directory's content for training: its normalisation statistics
    and split lists (a dataset regenerated with another seed, or another dataset, differs in at least one)."""
    identity = {}
    for name in DATA_IDENTITY_FILES:
        path = Path(root) / name
        try:
            identity[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        except OSError:
            identity[name] = "missing"
    return identity


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(os.fspath(a)) == os.path.realpath(os.fspath(b))


def check_resume_parents(out: str | os.PathLike, manifest: dict, parents: dict[str, Any],
                         optional: tuple[str, ...] = ()) -> None:
    """``--resume`` of ``out``: every parent run or dataset given now (``{"base": PATH, "data": PATH, ...}``; None
    = not given) must be the one the manifest recorded, and the dataset must still have the recorded identity.
    A mismatch is one line naming the flag, both paths, and that ``--resume`` continues the saved run."""
    saved = manifest.get("parents", {}) or {}
    identity = manifest.get("data_identity")
    for name, given in parents.items():
        if name == "data" and given is not None and isinstance(identity, dict):
            continue  # a dataset is compared by content (below): a moved copy of the same data resumes
        flag = PARENT_FLAGS.get(name, f"--{name}")
        recorded = saved.get(name)
        if given is None and recorded is None or name in optional and (given is None or recorded is None):
            continue  # an optional parent (an evaluator that only scores) may be added or dropped on resume
        if given is None or recorded is None:
            raise UserError(f"{flag}: {out} was started {'with ' + flag + ' ' + str(recorded) if recorded else 'without ' + flag}"
                            f"; --resume continues the saved run with the same {flag}")
        if not _same_path(given, recorded):
            raise UserError(f"{flag} {given}: {out} was started with {flag} {recorded}; --resume continues the saved "
                            f"run with the same {flag}")
    recorded = manifest.get("data_identity")
    if parents.get("data") is not None and isinstance(recorded, dict):
        now = dataset_identity(parents["data"])
        changed = [name for name in DATA_IDENTITY_FILES if name in recorded and now.get(name) != recorded[name]]
        if changed:
            raise UserError(f"--data {parents['data']}: {', '.join(changed)} differ from the dataset {out} was started "
                            "on; --resume needs the same dataset")


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


def read_state_json(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict:
    """A checkpoint's ``state.json`` (a JSON object holding ``required`` keys); one line if damaged."""
    path = Path(path)
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: damaged checkpoint state, not valid JSON ({exc}); remove {path.parent} to "
                        "resume from the start") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"{path}: damaged checkpoint state (expected an object with {', '.join(required) or 'keys'})"
                        f"; remove {path.parent} to resume from the start")
    return state


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
