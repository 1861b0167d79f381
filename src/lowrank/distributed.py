"""Data-parallel training over ``torch.distributed``: the world, the gradient average, the sharded step.

Every process holds the whole model and takes its share of each global batch (the
contiguous block :func:`shard_bounds` gives it: ``B = 64`` over 2 processes is rows
0-31 and 32-63). After each backward pass the gradients are averaged across processes,
weighted by each process's share of the batch (``g = sum_p (n_p / n) g_p``: the
gradient of the mean loss over the whole batch, so N processes on ``B / N`` rows equal
one process on ``B`` rows), *before* any optimizer or integrator reads them: for DLRT
before the QR / SVD of a step (``G_K``, ``G_L``, ``dS``, the rest; the second pass of
fixed-rank KLS; the rank-adaptive KLS block ``U~^T G V~``), so every process takes the
same bases and rank decisions and the replicas stay identical without ever sending
weights. :func:`check_replicas` verifies that (exactly, every ``check_every`` steps).

Why not ``torch.nn.parallel.DistributedDataParallel``: it averages ``model.parameters()``
in its backward hooks, but the gradients a DLRT step uses are those of ``K`` and ``L``,
which are the optimizer's tensors, not the model's, and a rank change replaces
parameters (DDP's buckets are fixed at construction). One flat ``all_reduce`` per
gradient set does the same averaging for every method.

Processes are started by ``torchrun`` (``lowrank train --nproc N`` runs it); this
module reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` ...). Backend: ``gloo`` on the CPU, ``nccl`` on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, ReplicaMismatchError
from .losses import LossFn

__all__ = ["World", "world", "init_from_env", "leave", "launched_by_torchrun", "shard_bounds", "GradientAverager",
           "DataParallelStepper", "check_replicas", "ReplicaMismatchError", "broadcast_object"]


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run."""

    rank: int = 0
    """This process's index, 0 .. size - 1 (0 writes the results)."""
    size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Index on this machine (selects the CUDA device)."""

    def __post_init__(self) -> None:
        if not (self.size >= 1 and 0 <= self.rank < self.size and self.local_rank >= 0):
            raise ConfigError(f"process {self.rank} of {self.size} (local {self.local_rank}) is not a valid place "
                              f"in a world of processes")

    @property
    def is_main(self) -> bool:
        """The process that writes the database, run folder, checkpoints and progress output."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    """Is this process one of several that torchrun started?"""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "RANK" in os.environ


def world() -> World:
    """The current world: torch.distributed's if initialized, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0") or 0))
    return World()


def init_from_env(device: str = "cpu") -> World:
    """Join the process group torchrun's environment describes (once); a single process otherwise.

    ``device``: ``cpu`` uses gloo; ``cuda`` uses NCCL and binds this process to
    ``cuda:LOCAL_RANK``.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: data-parallel training needs it")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda with several processes, but CUDA is not available here")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return world()


def leave() -> None:
    """After a run that ended normally: every process meets the others, then the process group
    is torn down (a process that closes its connections while another still reads them makes
    gloo abort that one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of an ``n``-row batch that process ``rank`` of ``size`` takes: contiguous
    blocks, the first ``n % size`` of them one row longer (``torch.tensor_split``'s split)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


class GradientAverager:
    """Averages gradient sets across processes, each weighted by its process's share of the batch.

    :meth:`begin_batch` sets the weight ``n_local / n_global`` of the current step; a call
    ``averager(tensors)`` replaces every tensor (skipping None) by ``sum_p w_p t_p``. The
    None pattern of ``tensors`` must be the same on every process (it is: the replicas
    are identical). A process with no rows in the batch contributes zeros (its empty-batch
    mean loss is NaN, and so may be its gradients).
    """

    def __init__(self, world: World):
        self.world = world
        self.weight = 1.0 / world.size
        self.calls = 0

    def begin_batch(self, n_local: int, n_global: int) -> None:
        self.weight = n_local / n_global if n_global else 0.0

    def __call__(self, tensors: Sequence[torch.Tensor | None]) -> None:
        ts = [t for t in tensors if t is not None]
        if not ts or not self.world.distributed:
            return
        flat = torch.cat([t.reshape(-1) for t in ts])
        if self.weight == 0.0:
            flat.zero_()
        else:
            flat.mul_(self.weight)
        dist.all_reduce(flat)
        offset = 0
        for t in ts:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        self.calls += 1

    def mean_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss over all processes (from each process's mean over its rows)."""
        if not self.world.distributed:
            return loss
        t = loss.detach().reshape(1).to(torch.float64) * self.weight
        if self.weight == 0.0:          # no rows here: the local mean is NaN
            t.zero_()
        dist.all_reduce(t)
        return t[0].to(loss.dtype)


def _fingerprint(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes (int64) and values (float64) of every parameter and buffer of ``model``."""
    tensors = list(model.state_dict().values())
    shapes = torch.tensor([d for t in tensors for d in (t.dim(), *t.shape)] or [0], dtype=torch.int64)
    floats = [t.detach().reshape(-1).to(torch.float64) for t in tensors if t.is_floating_point()]
    return shapes, (torch.cat(floats) if floats else torch.zeros(1, dtype=torch.float64))


def check_replicas(model: nn.Module, what: str = "") -> None:
    """Raise :class:`ReplicaMismatchError` unless every process holds exactly the same ``model``
    (every shape, hence every rank, and every value bit for bit). A no-op for one process."""
    w = world()
    if not w.distributed:
        return
    shapes, values = _fingerprint(model)
    device = values.device
    n = torch.tensor([shapes.numel(), values.numel()], dtype=torch.int64, device=device)
    lo, hi = n.clone(), n.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    where = f" {what}" if what else ""
    if not torch.equal(lo, hi):
        raise ReplicaMismatchError(f"the processes' models have different sizes{where} (ranks differ)")
    for name, t in (("shapes", shapes.to(device)), ("values", values)):
        lo, hi = t.clone(), t.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        if not torch.equal(lo, hi):
            bad = int((lo != hi).sum())
            raise ReplicaMismatchError(f"the processes' models differ{where}: {bad} {name} not identical")


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``obj`` of process ``src``, on every process (pickled; tensors included)."""
    if not world().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class DataParallelStepper:
    """A method's stepper, run data-parallel: each call takes this process's rows of the global batch.

    Wraps ``stepper`` (any :class:`~lowrank.stepper.Stepper`: its own gradient hook is set to
    the averager, see :meth:`~lowrank.stepper.Stepper.set_gradient_averager`) and otherwise
    passes everything through, so the loop, callbacks and checkpoints see the method's
    stepper. :meth:`step` returns the global batch's mean loss (the same on every process,
    so the loop's divergence check agrees). ``check_every``: every this many steps verify
    with :func:`check_replicas` that the models are identical (0: never).
    """

    def __init__(self, stepper: Any, world: World, check_every: int = 0):
        if not isinstance(check_every, int) or check_every < 0:
            raise ConfigError(f"check_every must be an integer >= 0, got {check_every!r}")
        object.__setattr__(self, "inner", stepper)
        object.__setattr__(self, "world", world)
        object.__setattr__(self, "check_every", check_every)
        object.__setattr__(self, "averager", GradientAverager(world))
        object.__setattr__(self, "replica_checks", 0)
        stepper.set_gradient_averager(self.averager)

    def step(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        lo, hi = shard_bounds(len(x), self.world.rank, self.world.size)
        self.averager.begin_batch(hi - lo, len(x))
        loss = self.averager.mean_loss(self.inner.step(x[lo:hi], y[lo:hi], loss_fn))
        if self.check_every and self.inner.steps % self.check_every == 0:
            check_replicas(self.inner.model, f"after step {self.inner.steps}")
            object.__setattr__(self, "replica_checks", self.replica_checks + 1)
        return loss

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)
