"""Measure gradients on the device: per-tensor norms, the global norm and a finiteness flag.

This is the hot path. It never synchronises with the host: gradients are grouped by
(device, dtype), each group is reduced by one ``torch._foreach_norm`` kernel, and the global norm
comes from the stacked per-tensor norms. Half-precision gradients are reduced in float32.

A gradient that holds NaN/Inf, or whose finite values are large enough that its float32 norm
overflows, gives a non-finite norm. Both count as an explosion, and cost no extra pass.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from gradguard.errors import ConfigError
from gradguard.stats.params import Parameters, named_grads

__all__ = ["GradGroup", "GradStats", "check_norm_type", "measure"]

_REDUCED_IN_FLOAT32 = (torch.float16, torch.bfloat16, torch.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class GradStats:
    """Gradient statistics of one step, as device tensors (reading them is a host sync).

    Attributes:
        total_norm: 0-d float32, the global ``norm_type``-norm over all gradients.
        norms: 1-d float32, one norm per tensor that has a gradient, aligned with ``names``.
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


def check_norm_type(norm_type: float | str) -> float:
    """Return ``norm_type`` as a float p > 0 (``inf`` allowed), or raise :class:`ConfigError`."""
    if isinstance(norm_type, str) and norm_type.lower() in ("inf", "max"):
        return math.inf
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        p = math.nan
    if not p > 0:
        raise ConfigError(
            f"norm_type must be a number > 0 or 'inf', got {norm_type!r}. Use 2.0 for the "
            "Euclidean norm (the usual choice), 1.0, or 'inf' for the largest absolute value."
        )
    return p


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
    with_grad = named_grads(parameters)
    if not with_grad:
        zero = torch.zeros((), dtype=torch.float32)
        empty = torch.zeros(0, dtype=torch.float32)
        return GradStats(zero, empty, torch.ones((), dtype=torch.bool), (), p, (), ())
    names = [name for name, _, _ in with_grad]
    params = [t for _, t, _ in with_grad]
    grads = [g for _, _, g in with_grad]

    grouped = _group_tensors_by_device_and_dtype([grads], with_indices=True)  # type: ignore[list-item]
    first_device = grads[0].device
    order: list[int] = []
    group_norms: list[Tensor] = []
    groups: list[GradGroup] = []
    for (_device, dtype), ([group], indices) in grouped.items():
        accumulate = torch.float32 if dtype in _REDUCED_IN_FLOAT32 else None
        norms = torch._foreach_norm(group, p, dtype=accumulate)  # type: ignore[arg-type]
        # Async device-to-device copy when gradients live on several devices; no host sync.
        group_norms.append(torch.stack(norms).to(first_device))
        span = slice(len(order), len(order) + len(group))
        groups.append(GradGroup(group, span))  # type: ignore[arg-type]
        order.extend(indices)
    stacked = group_norms[0] if len(group_norms) == 1 else torch.cat(group_norms)
    total = torch.linalg.vector_norm(stacked, p).to(torch.float32)
    if order != list(range(len(order))):
        names = [names[i] for i in order]
        params = [params[i] for i in order]
        grads = [grads[i] for i in order]
    stats = GradStats(
        total_norm=total,
        norms=stacked.to(torch.float32),
        # ``total < inf`` is False for NaN and +Inf (a norm is never negative); it is one
        # kernel where isfinite is several.
        finite=total < math.inf,
        names=tuple(names),
        norm_type=p,
        grads=tuple(grads),
        params=tuple(params),
    )
    object.__setattr__(stats, "_groups", tuple(groups))
    return stats
