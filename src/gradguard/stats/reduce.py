"""Make one step's gradient statistics global across a process group, so every rank decides alike.

Under FSDP2, DTensor or ZeRO-style sharding each rank holds a disjoint shard of every gradient, so
its norms are local. The global p-norm of a tensor split into shards is
``(sum over ranks of local_norm ** p) ** (1 / p)`` (the maximum for ``p = inf``): one
``all_reduce`` of a small packed vector (the p-th powers of the per-tensor norms and a 0/1
non-finite flag) makes every norm global and tells every rank about a NaN on any rank. Under DDP
the gradients are already all-reduced (replicated), and a cheap ``MAX`` of the norm and the flag
only guarantees that every rank sees bit-identical values.

``all_reduce`` is queued on the device's stream (NCCL) and never synchronises with the host; on
gloo it blocks until every rank arrives, which is harmless on CPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from gradguard.stats.measure import GradStats

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = [
    "holds_dtensor",
    "is_distributed",
    "mean_across_ranks",
    "reduce_across_ranks",
    "reduce_norm_across_ranks",
]


def is_distributed(group: ProcessGroup | None = None) -> bool:
    """``True`` when ``torch.distributed`` is initialised and ``group`` has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def holds_dtensor(tensors: Iterable[Tensor]) -> bool:
    """``True`` when any of ``tensors`` is a ``DTensor`` (FSDP2 and tensor-parallel parameters)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor  # lazy: keeps ``import gradguard`` light

    return any(isinstance(t, DTensor) for t in tensors)


def reduce_across_ranks(
    stats: GradStats, group: ProcessGroup | None = None, *, sharded: bool = True
) -> GradStats:
    """Make the norms and the finite flag of ``stats`` global and identical on every rank.

    One ``all_reduce`` of ``len(stats.norms) + 1`` numbers, no host synchronisation. Every rank
    of ``group`` must call it at the same step with the same tensor list (same names, same order),
    as FSDP2 and DDP guarantee; a rank may hold an empty shard.

    Args:
        stats: this rank's measurement, from :func:`gradguard.measure` (``DTensor`` gradients are
            measured on their local shards).
        group: the process group; ``None`` for the default (world) group.
        sharded: ``True`` when each rank holds a disjoint shard of every gradient (FSDP2,
            DTensor ``Shard`` placements, ZeRO): norms are combined as
            ``(sum of local_norm ** p) ** (1 / p)``, or the maximum for ``p = inf``. ``False``
            for replicated gradients (DDP): the norms are kept and only made identical.

    Returns:
        A new :class:`GradStats` with ``reduced=True`` whose ``total_norm``, ``norms`` and
        ``finite`` are global; ``stats`` itself when not distributed (no process group, or one
        rank) or already reduced. ``grads`` and ``params`` stay the local ones, so clipping with
        the global norm scales every shard by the same coefficient.

    References:
        Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel",
        VLDB 2023 (sharded gradient clipping: local p-th powers summed across ranks).
    """
    if stats.reduced or not is_distributed(group):
        return stats
    p = stats.norm_type
    device = stats.total_norm.device
    # float64 keeps norm ** p from overflowing float32 for large but finite norms; MPS lacks it.
    dtype = torch.float32 if device.type == "mps" else torch.float64
    nonfinite = (~stats.finite).reshape(1).to(dtype)
    if not sharded:
        packed = torch.cat([stats.total_norm.reshape(1).to(dtype), nonfinite])
        dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=group)
        total, norms = packed[0], stats.norms
    elif math.isinf(p):
        packed = torch.cat([stats.norms.to(dtype), nonfinite])
        dist.all_reduce(packed, op=dist.ReduceOp.MAX, group=group)
        norms = packed[:-1]
        total = norms.max() if norms.numel() else torch.zeros((), dtype=dtype, device=device)
    else:
        packed = torch.cat([stats.norms.to(dtype).pow(p), nonfinite])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        norms = packed[:-1].pow(1.0 / p)
        total = packed[:-1].sum().pow(1.0 / p)
    anywhere = packed[-1] > 0
    # A MAX may drop a NaN (fmax); NaN wherever any rank saw a non-finite value keeps all equal.
    # Back to the measurement's dtype: float32, or float64 for float64 gradients.
    total = torch.where(anywhere, torch.full_like(total, math.nan), total).to(stats.total_norm)
    reduced = dataclasses.replace(
        stats,
        total_norm=total,
        norms=norms.to(stats.norms.dtype),
        finite=~anywhere & (total < math.inf),
        reduced=True,
    )
    object.__setattr__(reduced, "_groups", stats._groups)  # same grads: reuse the grouping
    return reduced


def reduce_norm_across_ranks(
    norm: Tensor, norm_type: float, group: ProcessGroup | None = None, *, sharded: bool = True
) -> Tensor:
    """Combine one 0-d local norm (e.g. of the parameters) across ranks, as for gradients.

    Args:
        norm: this rank's ``norm_type``-norm, a 0-d tensor.
        norm_type: its ``p``; ``math.inf`` for the max-norm.
        group: the process group; ``None`` for the default group.
        sharded: ``True`` to combine disjoint shards, ``False`` to make a replicated value
            identical (``MAX``).

    Returns:
        A 0-d float32 tensor, identical on every rank; ``norm`` unchanged when not distributed.
    """
    if not is_distributed(group):
        return norm
    dtype = torch.float32 if norm.device.type == "mps" else torch.float64
    value = norm.detach().reshape(1).to(dtype)
    if sharded and not math.isinf(norm_type):
        value = value.pow(norm_type)
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
        value = value.pow(1.0 / norm_type)
    else:
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return value.reshape(()).to(torch.float32)


def mean_across_ranks(
    value: Tensor | float, group: ProcessGroup | None = None, *, device: torch.device
) -> Tensor | float:
    """Average a per-rank scalar (the loss) over the ranks, so every rank sees the same value.

    A NaN/Inf on any rank makes the mean non-finite on every rank.

    Args:
        value: this rank's number, a one-element tensor or a Python number.
        group: the process group; ``None`` for the default group.
        device: where to put a Python number before the ``all_reduce`` (the gradients' device).

    Returns:
        A 1-element float64 tensor (float32 on MPS) on the device of ``value`` (or ``device``);
        ``value`` unchanged when not distributed.
    """
    if not is_distributed(group):
        return value
    where = value.device if isinstance(value, Tensor) else device
    dtype = torch.float32 if where.type == "mps" else torch.float64
    if isinstance(value, Tensor):
        total = value.detach().reshape(-1).to(dtype, copy=True)  # never into the caller's loss
    else:
        total = torch.tensor([value], dtype=dtype, device=where)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total / dist.get_world_size(group)
