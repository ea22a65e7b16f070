"""Atomic file writing: nothing is ever half-written.

Every writer here writes to a temporary file in the destination's directory and renames it into place
(``os.replace`` is atomic on POSIX and Windows), so a crash leaves either the old file or the new one. An OS error
on the way (disk full, read-only file system, a directory in the way) becomes one :class:`OutputError` line naming
the destination and the error, and the temporary file is removed: nothing is ever half-written.

Every writer refuses NaN/Inf values (:class:`NonFiniteError`) unless the caller passes ``allow_nonfinite=True``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import NonFiniteError, OutputError


def write_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """One line for an OS error while writing ``path``: the path and the OS's own words."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputError(f"{path}: cannot write ({reason})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory (expected a file)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would (0666 & ~umask).
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_finite(path: str | os.PathLike, array: Any, what: str = "values") -> None:
    """Refuse a floating array holding NaN/Inf (:class:`NonFiniteError` naming ``path``)."""
    arr = np.asarray(array)
    if arr.dtype.kind in "fc" and arr.size and not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise NonFiniteError(f"{path}: refusing to write {bad} non-finite (NaN/Inf) {what} of {arr.size}")


def nonfinite_keys(obj: Any, prefix: str = "") -> list[str]:
    """Where a JSON-able object holds a NaN/Inf float: ``['metrics.loss[3]', ...]``."""
    if isinstance(obj, (float, np.floating)):
        return [] if np.isfinite(obj) else [prefix or "(top level)"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in nonfinite_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in nonfinite_keys(v, f"{prefix}[{i}]")]
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fc" and not np.isfinite(obj).all():
        return [prefix or "(top level)"]
    return []


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2, allow_nonfinite: bool = False) -> None:
    """``obj`` as JSON. NaN/Inf are refused (strict JSON has no literal for them); with ``allow_nonfinite`` they
    are written as ``null``."""
    bad = nonfinite_keys(obj)
    if bad and not allow_nonfinite:
        raise NonFiniteError(f"{path}: refusing to write non-finite (NaN/Inf) values at {', '.join(bad[:3])}"
                             + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
    if bad:
        obj = _nonfinite_to_none(obj)
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default, allow_nan=False) + "\n")


def _nonfinite_to_none(obj: Any) -> Any:
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _nonfinite_to_none(obj.tolist())
    if isinstance(obj, dict):
        return {k: _nonfinite_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nonfinite_to_none(v) for v in obj]
    return obj


def write_npy(path: str | os.PathLike, array: np.ndarray, allow_nonfinite: bool = False) -> None:
    if not allow_nonfinite:
        check_finite(path, array)
    buffer = io.BytesIO()  # serialised first, so that a failing write reports the OS error (e.g. disk full)
    np.save(buffer, array, allow_pickle=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def write_csv(path: str | os.PathLike, table: Any, allow_nonfinite: bool = False, **to_csv: Any) -> None:
    """A pandas DataFrame as CSV, atomically; NaN/Inf numbers are refused unless allowed (``to_csv`` options
    such as ``index=False`` pass through)."""
    if not allow_nonfinite:
        numeric = table.select_dtypes("number")
        if numeric.size and not np.isfinite(numeric.to_numpy(dtype=float)).all():
            bad = [c for c in numeric.columns if not np.isfinite(numeric[c].to_numpy(dtype=float)).all()]
            raise NonFiniteError(f"{path}: refusing to write non-finite (NaN/Inf) values in column(s) "
                                 f"{', '.join(map(str, bad[:3]))}")
    with atomic_path(path) as tmp:
        table.to_csv(tmp, **to_csv)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
