"""The one interface every clipping rule offers, so a Guard can take any of them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from gradguard.clip._args import check_stats
from gradguard.errors import ConfigError
from gradguard.stats import GradStats

__all__ = ["Clipper", "step_coefficient"]


@runtime_checkable
class Clipper(Protocol):
    """A clipping rule: measures nothing itself, acts on a step's :class:`GradStats`.

    ``clip_(stats)`` scales the gradients in ``stats.grads`` in place, on the device, without a
    host synchronisation, and returns the coefficient it applied as a tensor that broadcasts
    against ``stats.norms`` (float32, or float64 when the gradients are float64):

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


def step_coefficient(stats: GradStats, coef: object) -> Tensor | float:
    """Summarise what ``clip_(stats)`` returned as one number for the step, without a host sync.

    The number is the factor by which the global norm shrank, so ``total_norm * coefficient`` is
    the global norm after clipping whatever the rule:

    * a 0-d (or one-element) coefficient is that factor already; it is returned as a 0-d
      float32 tensor;
    * a 1-d coefficient per tensor (aligned with ``stats.norms``) gives
      ``norm(coef * norms) / norm(norms)`` in the step's p-norm, computed on the device; it is
      exactly 1 when every entry is 1, and 1 when the global norm is 0 or non-finite (those
      gradients are left as they were);
    * a Python number is returned as a float; anything else (a duck-typed clipper that returns
      ``None``) as ``nan``: the step's coefficient is unknown.

    Raises:
        ConfigError: a tensor coefficient has neither one element nor the shape of
            ``stats.norms``.
    """
    check_stats("step_coefficient", stats)
    if not isinstance(coef, Tensor):
        if isinstance(coef, numbers.Real) and not isinstance(coef, bool):
            return float(coef)
        return math.nan
    coef = coef.detach()
    if coef.numel() == 1:
        return coef.reshape(()).to(torch.float32)
    norms = stats.norms
    if coef.shape != norms.shape:
        raise ConfigError(
            f"the clipper returned a coefficient of shape {tuple(coef.shape)}; a Clipper's "
            f"clip_(stats) returns a 0-d tensor or one coefficient per tensor, shape "
            f"{tuple(norms.shape)} (aligned with stats.norms). Fix what its clip_ returns."
        )
    with torch.no_grad():
        before = torch.linalg.vector_norm(norms, stats.norm_type)
        after = torch.linalg.vector_norm(coef.to(norms) * norms, stats.norm_type)
        usable = (before > 0) & (before < math.inf)
        return torch.where(usable, after / before, 1.0).to(torch.float32)
