"""Measuring training memory, exactly on CPU and with the allocator on GPU.

On CPU the workbench counts the bytes the autograd graph saves for backward: every tensor that passes
through :func:`torch.autograd.graph.saved_tensors_hooks` is recorded by its storage (so views and repeated
saves of one storage count once), parameters excluded (they exist whether or not a graph is built). The
largest graph alive at any backward call is the peak. The count is exact and repeatable, so the paper's
O(1)-vs-O(T) memory claim (Fig. 6) can be tested on any machine.

On GPU, :class:`CudaMemoryProbe` reports ``torch.cuda.max_memory_allocated`` over the phase, minus the
memory allocated when the phase began.
"""

from __future__ import annotations

from typing import Iterable

import torch


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


class SavedTensorMeter:
    """Counts the distinct storages saved by autograd between two backward passes.

    Use as a context manager around the code that builds graphs; call :meth:`backward_done` after each
    ``backward`` (with ``retained=True`` when the graph was kept). ``peak_bytes`` is the largest total seen
    at any :meth:`observe` (called by the loop right before each backward).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {_storage_key(p)[0] for p in exclude}
        self._live: dict[int, int] = {}
        self.peak_bytes = 0
        self._hooks = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr, nbytes = _storage_key(t)
        if ptr not in self._exclude and ptr != 0:
            self._live[ptr] = nbytes
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        assert self._hooks is not None
        self._hooks.__exit__(*exc)
        self._hooks = None

    @property
    def current_bytes(self) -> int:
        return sum(self._live.values())

    def observe(self) -> int:
        current = self.current_bytes
        self.peak_bytes = max(self.peak_bytes, current)
        return current

    def backward_done(self, retained: bool = False) -> None:
        if not retained:
            self._live.clear()


class CudaMemoryProbe:
    """Peak CUDA memory over a phase, relative to what was allocated when it began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start_bytes = 0
        self.peak_bytes = 0

    def __enter__(self) -> "CudaMemoryProbe":
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start_bytes = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.device)
        self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self.start_bytes

    def observe(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) - self.start_bytes

    def backward_done(self, retained: bool = False) -> None:  # the allocator tracks this itself
        pass


class NullProbe:
    """A probe that measures nothing (for speed runs)."""

    peak_bytes = 0

    def __enter__(self) -> "NullProbe":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def observe(self) -> int:
        return 0

    def backward_done(self, retained: bool = False) -> None:
        pass


def memory_probe(device: torch.device, params: Iterable[torch.Tensor] = (), kind: str = "auto"):
    """The probe for ``device``: allocator statistics on CUDA, saved-tensor bytes on CPU (or ``kind='saved'``)."""
    if kind == "none":
        return NullProbe()
    if kind == "saved" or device.type != "cuda":
        return SavedTensorMeter(exclude=params)
    return CudaMemoryProbe(device)
