"""The one interface every clipping rule offers, so a Guard can take any of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from gradguard.stats import GradStats

__all__ = ["Clipper"]


@runtime_checkable
class Clipper(Protocol):
    """A clipping rule: measures nothing itself, acts on a step's :class:`GradStats`.

    ``clip_(stats)`` scales the gradients in ``stats.grads`` in place, on the device, without a
    host synchronisation, and returns the coefficient it applied as a float32 tensor that
    broadcasts against ``stats.norms``:

    * 0-d for rules that scale every gradient alike (global norm, percentile, z-score);
    * 1-d, aligned with ``stats.norms``, for rules that act per tensor (per-tensor norm) or
      finer (value clamping, unit-wise AGC), where entry ``i`` is the factor by which tensor
      ``i``'s norm shrank.

    So ``coef * stats.norms`` are the per-tensor norms after clipping (up to rounding), and 1
    means "left as it was". When a norm is non-finite the gradients it covers are left exactly
    as they were (coefficient 1), and stateful rules do not let the value into their
    statistics. All mutable state sits behind ``state_dict()`` / ``load_state_dict()``.
    """

    def clip_(self, stats: GradStats) -> Tensor:
        """Clip the gradients measured in ``stats`` in place; return the coefficient applied."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the mutable state (tensors are copies), for checkpoints."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot made by ``state_dict()`` of the same kind of clipper."""
        ...
