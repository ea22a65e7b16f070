"""Multi-process data-parallel training with ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc_per_node N -m easytune_lab.cli <command> ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`setup` reads them, joins the process group (``nccl`` on CUDA, one GPU per local rank;
``gloo`` on CPU) and returns the device. Without those variables (or with ``WORLD_SIZE=1``) nothing is
initialised and every helper here is a no-op, so single-process code paths are unchanged.

How the training stages use it:

* a global batch of ``B`` items is drawn identically on every rank and split into contiguous rows,
  ``B / world`` per rank (:func:`shard_bounds`); losses are means over items, so averaging the ranks'
  gradients (DistributedDataParallel, or :class:`GradientSync`) gives the gradient of the combined batch;
* random draws that must differ between ranks (diffusion noise, timesteps, condition dropout) come from
  :class:`ShardedRandom`: drawn for the whole global batch from a generator all ranks share, each rank keeps its
  own rows. Ranks therefore see different noise, and N processes see exactly the noise one process would on the
  combined batch. Dropout layers, which draw from torch's global generator, get a rank-specific seed
  (:func:`rank_seed`);
* only rank 0 writes files (:func:`is_main`); the others wait at :func:`barrier`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .errors import UserError
from .runtime import resolve_device

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and the backend in use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


_CONTEXT = Context()


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment variables; (0, 1, 0) without them."""
    values = {}
    for name in ENV_VARS:
        raw = os.environ.get(name)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise UserError(f"{name}={raw!r}: must be an integer (set by torchrun)") from None
    world = values.get("WORLD_SIZE", 1)
    rank = values.get("RANK", 0)
    local = values.get("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise UserError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local}: not a valid process layout")
    return rank, world, local


def launched() -> bool:
    """True when this process is one of several started by torchrun."""
    return env_world()[1] > 1


def setup(device: str = "auto") -> tuple[Context, torch.device]:
    """Join the process group when started by torchrun; return (context, this rank's device).

    ``device`` is ``auto``, ``cpu`` or ``cuda``: ``auto`` means CUDA when available. On CUDA each local rank
    takes GPU ``LOCAL_RANK`` and the backend is ``nccl``; on CPU it is ``gloo``. Calling it again returns the
    same context.
    """
    global _CONTEXT
    rank, world, local = env_world()
    resolved = resolve_device(device)
    if world == 1:
        return _CONTEXT, resolved
    if resolved.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local + 1))
        if torch.cuda.device_count() < max(per_node, local + 1):  # the same verdict on every rank
            raise UserError(f"--device {device}: {per_node} processes per node need as many GPUs, "
                            f"{torch.cuda.device_count()} visible")
        resolved = torch.device("cuda", local)
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise UserError("MASTER_ADDR/MASTER_PORT: not set; start multi-process runs with torchrun")
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30))
    _CONTEXT = Context(rank=rank, world_size=world, local_rank=local, backend=backend)
    return _CONTEXT, resolved


def teardown() -> None:
    """Leave the process group (if joined)."""
    global _CONTEXT
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = Context()


def context() -> Context:
    return _CONTEXT


def is_main() -> bool:
    """True on rank 0 (the only rank that writes files) and in single-process runs."""
    return _CONTEXT.is_main


def rank() -> int:
    return _CONTEXT.rank


def world_size() -> int:
    return _CONTEXT.world_size


def barrier() -> None:
    """Wait until every rank gets here (no-op in a single process)."""
    if _CONTEXT.active:
        dist.barrier()


# ------------------------------------------------------------------------------------------------ sharding

def check_divisible(batch_size: int, name: str = "--batch-size") -> None:
    """A global batch must split into equal shards (the loss is a mean over the combined batch)."""
    world = _CONTEXT.world_size
    if batch_size % world:
        raise UserError(f"{name}: {batch_size} does not split evenly over {world} processes "
                        f"(use a multiple of {world})")


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of ``n`` items that rank ``rank_`` (default: this one) processes."""
    r = _CONTEXT.rank if rank_ is None else rank_
    w = _CONTEXT.world_size if world is None else world
    if n % w:
        raise ValueError(f"shard_bounds: a batch of {n} does not split evenly over {w} processes")
    per = n // w
    return r * per, (r + 1) * per


def shard(items: Sequence, rank_: int | None = None, world: int | None = None) -> Sequence:
    """This rank's contiguous rows of ``items`` (a list or a tensor's first dimension)."""
    lo, hi = shard_bounds(len(items), rank_, world)
    return items[lo:hi]


def rank_seed(seed: int, *keys: int) -> int:
    """A seed for randomness that must differ between ranks (dropout), a function of (seed, keys, rank)."""
    value = int(seed) * 1_000_003 + _CONTEXT.rank
    for k in keys:
        value = value * 1_000_033 + int(k)
    return value % (2**63 - 1)


@contextlib.contextmanager
def rank_rng(seed: int, *keys: int, device: torch.device | None = None) -> Iterator[None]:
    """Under several processes, run the block with torch's global generator forked and seeded per rank.

    For dropout layers, whose masks must differ between ranks, while the global generator (which also draws the
    data's random crops and captions) keeps advancing alike on every rank. The seed is a function of
    ``(seed, keys, rank)``, so a resumed run needs no extra state. A no-op in a single process.
    """
    if not _CONTEXT.active:
        yield
        return
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rank_seed(seed, *keys))
        yield


class ShardedRandom:
    """Random tensors for a global batch, of which this rank keeps its rows.

    ``randn(shape)`` with ``shape[0] = b`` (this rank's rows) draws ``(b · world, *shape[1:])`` from the shared
    generator and returns rows ``[rank · b, (rank + 1) · b)``: every rank advances the generator alike, and the
    union of the ranks' rows is what a single process draws for the combined batch. With one process it is the
    plain draw.
    """

    def __init__(self, generator: torch.Generator, rank_: int | None = None, world: int | None = None):
        self.generator = generator
        self.rank = _CONTEXT.rank if rank_ is None else rank_
        self.world = _CONTEXT.world_size if world is None else world

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def _rows(self, x: torch.Tensor, b: int) -> torch.Tensor:
        return x if self.world == 1 else x[self.rank * b:(self.rank + 1) * b]

    def _global(self, shape: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        shape = tuple(int(s) for s in shape)
        return shape[0], (shape[0] * self.world, *shape[1:])

    def randn(self, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        b, full = self._global(shape)
        return self._rows(torch.randn(full, generator=self.generator, device=self.device, dtype=dtype), b)

    def rand(self, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
        b, full = self._global(shape)
        return self._rows(torch.rand(full, generator=self.generator, device=self.device, dtype=dtype), b)

    def randint(self, low: int, high: int, shape: Sequence[int]) -> torch.Tensor:
        b, full = self._global(shape)
        return self._rows(torch.randint(low, high, full, generator=self.generator, device=self.device), b)


def as_random(generator) -> ShardedRandom:
    """``generator`` as a :class:`ShardedRandom` (a plain ``torch.Generator`` draws unsharded)."""
    if isinstance(generator, ShardedRandom):
        return generator
    return ShardedRandom(generator, 0, 1)


# ------------------------------------------------------------------------------------------------ collectives

def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over the ranks (a new tensor; ``values`` itself when single-process)."""
    if not _CONTEXT.active:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / _CONTEXT.world_size


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0; backward: the gradients every rank computed for these rows, summed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(_CONTEXT.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        rows = grad.shape[0] // _CONTEXT.world_size
        return grad[_CONTEXT.rank * rows:(_CONTEXT.rank + 1) * rows]


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` concatenated along the first dimension in rank order (equal shapes on every rank),
    differentiable: each rank's rows receive the sum of the gradients all ranks computed for them. ``x`` itself
    in a single process."""
    if not _CONTEXT.active:
        return x
    return _GatherRows.apply(x)


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True on every rank if ``flag`` is True on any (a collective stop decision)."""
    if not _CONTEXT.active:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_flag(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Rank 0's ``flag`` on every rank (e.g. a wall-clock budget decision that must agree)."""
    if not _CONTEXT.active:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0)


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the ``.grad`` of ``params`` over the ranks with one all-reduce of a flat buffer.

    Every rank must pass the same parameters in the same order. A parameter without a gradient on this rank
    contributes zeros; it gets the averaged gradient only if some rank had one (else it keeps ``None``, as a
    single process would).
    """
    if not _CONTEXT.active:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    present = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=params[0].device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    flat = torch.cat([flat, present.to(flat.dtype)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= _CONTEXT.world_size
    offset = 0
    any_grad = flat[-len(params):]
    for i, p in enumerate(params):
        n = p.numel()
        if any_grad[i] > 0:
            g = flat[offset:offset + n].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


class GradientSync:
    """DistributedDataParallel's gradient averaging for parameters used outside a DDP-wrapped forward.

    The fine-tuning loop calls the live denoiser several times per backward (guidance, chains of steps, gradient
    checkpointing, re-noised samples), which DDP's one-forward-one-backward hooks do not fit; instead the loop
    calls this object right before each optimiser step: one all-reduce of the trainable gradients, averaged over
    the ranks. Gradients accumulated over several backward passes before a step (the loop's accumulate mode) are
    thus all-reduced once, as inside ``DistributedDataParallel.no_sync``. ``calls`` counts the all-reduces.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]):
        self.params = list(params)
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        average_gradients(self.params)


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when several processes run, else unchanged.

    Call it after setting which parameters train (DDP registers only those that require grad) and after every
    rank holds the same weights (DDP also broadcasts rank 0's at construction).
    """
    if not _CONTEXT.active:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def no_sync(module: torch.nn.Module, enabled: bool = True):
    """``module.no_sync()`` for a DDP-wrapped module when ``enabled``, else a null context."""
    if enabled and hasattr(module, "no_sync"):
        return module.no_sync()
    return contextlib.nullcontext()
