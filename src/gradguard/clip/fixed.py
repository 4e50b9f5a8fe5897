"""Clippers with a fixed bound: the functional rules wrapped in the :class:`Clipper` interface."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard.clip._args import check_eps, check_stats
from gradguard.clip._state import check_empty_state
from gradguard.clip.apply import _apply_global_bound_, _apply_per_tensor_bound_
from gradguard.clip.value import clip_by_value_
from gradguard.errors import check_positive
from gradguard.stats import GradStats
from gradguard.stats.measure import foreach_norms

__all__ = ["GlobalNormClipper", "PerTensorNormClipper", "ValueClipper"]

_MAX_NORM_FIX = "Typical values are 0.5 to 5; 1.0 is a safe start for RNNs."


class _Stateless:
    """Save and load for clippers without mutable state."""

    def state_dict(self) -> dict[str, Any]:
        """The empty dict: nothing to save."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accept only ``{}``, what ``state_dict()`` gives."""
        check_empty_state(type(self).__name__, state)


class GlobalNormClipper(_Stateless):
    """Scale all gradients so their global norm is at most ``max_norm`` (NaN-safe).

    The object form of :func:`gradguard.clip_by_global_norm_`: ``clip_(stats)`` returns the 0-d
    coefficient ``clamp(max_norm / (norm + eps), max=1)``, exactly 1 for a non-finite step.

    Args:
        max_norm: bound on the global norm; must be > 0.
        eps: added to the norm before dividing, as PyTorch does.

    Raises:
        ConfigError: ``max_norm`` is not a finite number > 0, or ``eps`` is negative.

    References:
        Pascanu, Mikolov, Bengio (2013), On the difficulty of training recurrent neural networks.
    """

    def __init__(self, max_norm: float, *, eps: float = 1e-6) -> None:
        self.max_norm = check_positive("max_norm", max_norm, fix=_MAX_NORM_FIX)
        self.eps = check_eps(eps)

    def __repr__(self) -> str:
        return f"GlobalNormClipper(max_norm={self.max_norm!r})"

    @torch.no_grad()
    def clip_(self, stats: GradStats) -> Tensor:
        """Clip in place; return the 0-d coefficient applied to every gradient."""
        return _apply_global_bound_(
            check_stats("GlobalNormClipper.clip_", stats), self.max_norm, self.eps
        )


class PerTensorNormClipper(_Stateless):
    """Scale each gradient tensor on its own so its norm is at most ``max_norm``.

    The object form of :func:`gradguard.clip_per_tensor_norm_`: ``clip_(stats)`` returns the
    1-d coefficients (aligned with ``stats.norms``); a non-finite tensor gets 1 (untouched).

    Args:
        max_norm: bound on every tensor's norm; must be > 0.
        eps: added to each norm before dividing.

    Raises:
        ConfigError: ``max_norm`` is not a finite number > 0, or ``eps`` is negative.
    """

    def __init__(self, max_norm: float, *, eps: float = 1e-6) -> None:
        self.max_norm = check_positive("max_norm", max_norm, fix=_MAX_NORM_FIX)
        self.eps = check_eps(eps)

    def __repr__(self) -> str:
        return f"PerTensorNormClipper(max_norm={self.max_norm!r})"

    @torch.no_grad()
    def clip_(self, stats: GradStats) -> Tensor:
        """Clip in place; return one coefficient per tensor."""
        stats = check_stats("PerTensorNormClipper.clip_", stats)
        return _apply_per_tensor_bound_(stats, self.max_norm, self.eps)


class ValueClipper(_Stateless):
    """Clamp every gradient element into ``[-clip_value, clip_value]``.

    The object form of :func:`gradguard.clip_by_value_` (NaN stays NaN, ±Inf become
    ±clip_value). Clamping is not a scaling, so ``clip_(stats)`` measures the clamped norms
    (one extra foreach norm per group) and returns ``norm_after / norm_before`` per tensor;
    tensors whose norm was non-finite or zero report 1.

    Args:
        clip_value: bound on the absolute value of every element; must be > 0.

    Raises:
        ConfigError: ``clip_value`` is not a finite number > 0.
    """

    def __init__(self, clip_value: float) -> None:
        self.clip_value = check_positive(
            "clip_value", clip_value, fix="Pick a bound on single gradient elements, e.g. 1.0."
        )

    def __repr__(self) -> str:
        return f"ValueClipper(clip_value={self.clip_value!r})"

    @torch.no_grad()
    def clip_(self, stats: GradStats) -> Tensor:
        """Clamp in place; return per tensor the factor by which its norm shrank."""
        stats = check_stats("ValueClipper.clip_", stats)
        clip_by_value_(None, self.clip_value, stats=stats)
        before = stats.norms
        if not stats.grads:
            return torch.ones_like(before)
        after = torch.empty_like(before)
        for group in stats.grad_groups():
            after[group.positions] = foreach_norms(group.grads, stats.norm_type).to(after)
        usable = torch.isfinite(before) & (before > 0)
        return torch.where(usable, after / before, torch.ones_like(before))
