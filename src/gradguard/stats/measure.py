"""Measure gradients on the device: the only hot path of gradguard.

It never synchronises with the host: gradients are grouped by (device, dtype), each group is
reduced by one ``torch._foreach_norm`` kernel, and the global norm comes from the stacked
per-tensor norms. Half-precision and float32 gradients are reduced in float32; float64 gradients
in float64, so a large but finite float64 norm stays finite, as in ``clip_grad_norm_``.
:func:`foreach_norms` and :func:`norms_in_groups` (which :func:`grouped_norms` wraps with an
explicit order) are the one home of that rule; every other module that needs norms of many
tensors (parameter norms, clipped norms) calls them.

A gradient that holds NaN/Inf, or whose finite values are large enough that its norm overflows
its accumulation dtype, gives a non-finite norm. Both count as an explosion, and cost no extra
pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from gradguard.errors import check_norm_type
from gradguard.stats.params import Parameters, check_dense, grads_of

__all__ = [
    "GradGroup",
    "GradStats",
    "accumulation_dtype",
    "check_norm_type",
    "foreach_norms",
    "grouped_norms",
    "measure",
]

_REDUCED_IN_FLOAT32 = (torch.float16, torch.bfloat16, torch.float32)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype | None:
    """The dtype norms of ``dtype`` tensors accumulate in: float32 for half precision and float32,
    ``None`` (the tensor's own precision) for float64 and complex."""
    return torch.float32 if dtype in _REDUCED_IN_FLOAT32 else None


def foreach_norms(tensors: Sequence[Tensor], p: float) -> Tensor:
    """The ``p``-norm of each tensor (all on one device, one dtype) as a 1-d tensor, one kernel.

    Accumulates in :func:`accumulation_dtype`; the result is float32, or float64 for float64 (and
    complex128) tensors. No host sync.
    """
    accumulate = accumulation_dtype(tensors[0].dtype)
    # Inference mode spares the kernel autograd's dispatch for each tensor (a tenth of its CPU
    # time for many small tensors); stacking outside it hands back an ordinary tensor.
    with torch.inference_mode():
        parts = torch._foreach_norm(list(tensors), p, dtype=accumulate)
    return torch.stack(parts)


def grouped_norms(tensors: Sequence[Tensor], p: float) -> tuple[Tensor, list[int], list[GradGroup]]:
    """Norms of tensors on any devices and dtypes: one :func:`foreach_norms` per group.

    Returns:
        ``(norms, order, groups)``: the norms in group order, on the first tensor's device, in
        the widest dtype of the groups (float32, or float64 when any tensor is float64);
        ``order[i]`` is the position in ``tensors`` of the tensor whose norm is ``norms[i]``;
        ``groups`` the (device, dtype) groups with their slice of ``norms``.
    """
    norms, order, groups = norms_in_groups(tensors, p)
    return norms, list(range(len(tensors))) if order is None else order, groups


def norms_in_groups(
    tensors: Sequence[Tensor], p: float
) -> tuple[Tensor, list[int] | None, list[GradGroup]]:
    """:func:`grouped_norms`, with ``order`` ``None`` when the norms follow ``tensors``' order.

    One (device, dtype) group is the common case: it is found without the per-tensor index
    lists, which cost a third of the grouping, and nothing is reordered.
    """
    tensors = list(tensors)
    # The C function behind torch's _group_tensors_by_device_and_dtype, without its no_grad
    # wrapper (grouping records nothing for autograd): a tenth of a small model's measure().
    grouped = torch._C._group_tensors_by_device_and_dtype([tensors], False)  # type: ignore[list-item]
    if len(grouped) == 1:
        return foreach_norms(tensors, p), None, [GradGroup(tensors, slice(0, len(tensors)))]
    first_device = tensors[0].device
    order: list[int] = []
    parts: list[Tensor] = []
    groups: list[GradGroup] = []
    indexed = _group_tensors_by_device_and_dtype([tensors], with_indices=True)  # type: ignore[list-item]
    for [group], indices in indexed.values():
        # Async device-to-device copy when tensors live on several devices; no host sync.
        parts.append(foreach_norms(group, p).to(first_device))  # type: ignore[arg-type]
        groups.append(GradGroup(group, slice(len(order), len(order) + len(group))))  # type: ignore[arg-type]
        order.extend(indices)
    wide = torch.float64 if any(part.dtype == torch.float64 for part in parts) else torch.float32
    return torch.cat([part.to(wide) for part in parts]), order, groups


@dataclasses.dataclass(frozen=True, eq=False)
class GradStats:
    """Gradient statistics of one step, as device tensors (reading them is a host sync).

    Attributes:
        total_norm: 0-d, the global ``norm_type``-norm over all gradients: float32, or float64
            when any gradient is float64 (norms accumulate as :func:`accumulation_dtype` says).
        norms: 1-d, same dtype, one norm per tensor that has a gradient, aligned with ``names``.
        finite: 0-d bool, ``False`` when any gradient is NaN/Inf or a norm overflowed.
        names: names of the measured tensors. They follow the order of the parameters given,
            grouped by (device, dtype) when gradients live on several devices or dtypes.
        norm_type: the ``p`` of the p-norm (``math.inf`` for the max-norm).
        grads: the measured gradient tensors, aligned with ``names``; clipping reuses them.
        params: the parameters owning ``grads``, aligned with ``names``.
        reduced: ``True`` once :func:`gradguard.stats.reduce_across_ranks` made the norms and
            the flag global (identical on every rank); it never reduces twice.
    """

    total_norm: Tensor
    norms: Tensor
    finite: Tensor
    names: tuple[str, ...]
    norm_type: float
    grads: tuple[Tensor, ...]
    params: tuple[Tensor, ...]
    reduced: bool = False
    # Filled by measure() or on the first call to groups(); never copied by dataclasses.replace.
    _groups: tuple[GradGroup, ...] | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def device(self) -> torch.device:
        """Device holding ``total_norm`` and ``norms`` (that of the first gradient)."""
        return self.total_norm.device

    def groups(self) -> list[list[Tensor]]:
        """``grads`` split into lists that share device and dtype, for foreach kernels."""
        return [group.grads for group in self.grad_groups()]

    def grad_groups(self) -> tuple[GradGroup, ...]:
        """``grads`` grouped by (device, dtype), with the positions of each group in ``norms``.

        Computed once per ``GradStats`` (``measure`` hands over the grouping it already did), so
        every clipper applied to the same measurement reuses it.
        """
        if self._groups is None:
            if not self.grads:  # torch's grouping rejects an empty list
                object.__setattr__(self, "_groups", ())
                return ()
            grouped = _group_tensors_by_device_and_dtype([list(self.grads)], with_indices=True)
            groups = tuple(
                GradGroup(tensors[0], _positions(indices))  # type: ignore[arg-type]
                for tensors, indices in grouped.values()
            )
            object.__setattr__(self, "_groups", groups)
            return groups
        return self._groups


@dataclasses.dataclass(frozen=True, eq=False)
class GradGroup:
    """Gradients that share device and dtype, and where their norms sit in ``GradStats.norms``.

    Attributes:
        grads: the gradients of the group, a list as foreach kernels take it.
        positions: their indices in ``GradStats.norms``: a ``slice`` when contiguous (always so
            for a ``GradStats`` made by :func:`measure`), else a list of indices.
    """

    grads: list[Tensor]
    positions: slice | list[int]

    def take(self, values: Tensor) -> Tensor:
        """The entries of the 1-d ``values`` (aligned with ``norms``) that belong to this group."""
        if isinstance(self.positions, slice):
            return values[self.positions]
        return values[torch.tensor(self.positions, device=values.device)]


def _positions(indices: list[int]) -> slice | list[int]:
    start = indices[0] if indices else 0
    if indices == list(range(start, start + len(indices))):
        return slice(start, start + len(indices))
    return list(indices)


def measure(parameters: Parameters, norm_type: float | str = 2.0) -> GradStats:
    """Measure the gradients of ``parameters`` without a host synchronisation.

    Args:
        parameters: an ``nn.Module``, a tensor, or an iterable of tensors or ``(name, tensor)``
            pairs. Tensors without a gradient are skipped.
        norm_type: p of the p-norm; ``inf`` (or ``"inf"``) for the largest absolute value.

    Returns:
        A :class:`GradStats` of device tensors. An empty parameter list gives a zero norm.

    Raises:
        EmptyParametersError: ``parameters`` is an iterator that was already consumed.
        NoGradientsError: tensors were given but none has a gradient (call ``backward`` first).
        ConfigError: ``norm_type`` is not a number > 0.
    """
    p = check_norm_type(norm_type)
    names, params, grads = grads_of(parameters, check_layout=False)
    if not grads:
        zero = torch.zeros((), dtype=torch.float32)
        empty = torch.zeros(0, dtype=torch.float32)
        return GradStats(zero, empty, torch.ones((), dtype=torch.bool), (), p, (), ())
    try:
        stacked, order, groups = norms_in_groups(grads, p)
    except (RuntimeError, NotImplementedError):
        # The norm kernels refuse sparse layouts; name the gradient instead of torch's message.
        check_dense(names, grads)
        raise
    # The global norm keeps the norms' dtype: float64 gradients get a float64 total (a finite
    # float64 norm beyond float32's range stays finite and is clipped, as by clip_grad_norm_).
    total = torch.linalg.vector_norm(stacked, p)
    if order is not None:  # several (device, dtype) groups: names follow the norms
        names = tuple(names[i] for i in order)
        params = tuple(params[i] for i in order)
        grads = [grads[i] for i in order]
    stats = GradStats(
        total_norm=total,
        norms=stacked,
        # ``total < inf`` is False for NaN and +Inf (a norm is never negative); it is one
        # kernel where isfinite is several.
        finite=total < math.inf,
        names=names,
        norm_type=p,
        grads=tuple(grads),
        params=params,
    )
    object.__setattr__(stats, "_groups", tuple(groups))
    return stats
