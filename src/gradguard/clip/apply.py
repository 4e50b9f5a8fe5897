"""Multiply gradients by precomputed coefficients, in place, with foreach kernels.

Every clipping rule ends here: it computes a bound on the device, turns it into a coefficient
``clamp(bound / (norm + eps), max=1)`` and multiplies. Nothing branches on the host.

The public functions check a float bound at each call, since users pass it per call. The
underscored twins skip that check: the clippers and the guard call them at every step with a
bound they checked once, at construction or in the policy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradguard.clip._args import check_writable
from gradguard.errors import check_positive
from gradguard.stats import GradStats

__all__ = [
    "apply_global_bound_",
    "apply_per_tensor_bound_",
    "safe_coefficient",
    "scale_each_grad_",
    "scale_grads_",
]


def safe_coefficient(bound: Tensor | float, norm: Tensor, finite: Tensor, eps: float) -> Tensor:
    """``clamp(bound / (norm + eps), max=1)``, or exactly 1 where ``finite`` is False.

    A non-finite norm leaves the gradients untouched (unlike ``clip_grad_norm_``, which turns
    them all into NaN or zeros) so the caller can skip the step and name the culprit. No host
    branch: ``torch.where`` picks the value on the device. For a float ``bound`` the quotient is
    computed as ``clip_grad_norm_`` does (reciprocal, then multiply), so results match it bit
    for bit.

    Raises:
        ConfigError: a float ``bound`` is not a finite number > 0.
    """
    return _coefficient(_check_bound(bound), norm, finite, eps)


def _check_bound(bound: Tensor | float) -> Tensor | float:
    """A float ``bound`` as a float if it is finite and > 0; a tensor as it is (on the device)."""
    if isinstance(bound, Tensor):
        return bound
    return check_positive("bound", bound, fix="It is the max_norm of the clipping rule.")


def _coefficient(bound: Tensor | float, norm: Tensor, finite: Tensor, eps: float) -> Tensor:
    """:func:`safe_coefficient` for a bound already checked: nothing on the host per call."""
    if isinstance(bound, Tensor):
        coef = torch.div(bound, norm + eps)
    else:
        coef = torch.reciprocal(norm + eps).mul_(bound)
    return torch.where(finite, coef.clamp_(max=1.0), 1.0)


def scale_grads_(stats: GradStats, coef: Tensor) -> None:
    """Multiply every gradient measured in ``stats`` by the 0-d tensor ``coef``, in place.

    Raises:
        UnsupportedGradientError: a gradient is an expanded view (checked before any change).
    """
    check_writable(stats.names, stats.grads)
    for group in stats.grad_groups():
        # Async copy of a 0-d tensor when the group lives on another device; no host sync.
        torch._foreach_mul_(group.grads, coef.to(group.grads[0].device))


def scale_each_grad_(stats: GradStats, coefs: Tensor) -> None:
    """Multiply gradient ``i`` of ``stats`` by ``coefs[i]`` (1-d, aligned with ``norms``).

    Raises:
        UnsupportedGradientError: a gradient is an expanded view (checked before any change).
    """
    check_writable(stats.names, stats.grads)
    for group in stats.grad_groups():
        mine = group.take(coefs).to(group.grads[0].device)
        torch._foreach_mul_(group.grads, list(mine.unbind(0)))


def apply_global_bound_(stats: GradStats, bound: Tensor | float, eps: float) -> Tensor:
    """Scale all gradients so their global norm is at most ``bound``; return the coefficient.

    The coefficient is a 0-d tensor in the norm's dtype (float32, float64 for float64
    gradients, as ``clip_grad_norm_`` computes it), exactly 1 when ``stats.finite`` is False.

    Raises:
        ConfigError: a float ``bound`` is not a finite number > 0.
        UnsupportedGradientError: a gradient is an expanded view (checked before any change).
    """
    return _apply_global_bound_(stats, _check_bound(bound), eps)


def _apply_global_bound_(stats: GradStats, bound: Tensor | float, eps: float) -> Tensor:
    """:func:`apply_global_bound_` for a bound already checked (clippers, the guard)."""
    coef = _coefficient(bound, stats.total_norm, stats.finite, eps)
    if stats.grads:
        scale_grads_(stats, coef)
    return coef


def apply_per_tensor_bound_(stats: GradStats, bound: Tensor | float, eps: float) -> Tensor:
    """Scale each gradient so its own norm is at most ``bound``; return the coefficients.

    The coefficients are a 1-d tensor aligned with ``stats.norms`` (in their dtype); a tensor
    whose norm is non-finite gets exactly 1 (it is left untouched).

    Raises:
        ConfigError: a float ``bound`` is not a finite number > 0.
        UnsupportedGradientError: a gradient is an expanded view (checked before any change).
    """
    return _apply_per_tensor_bound_(stats, _check_bound(bound), eps)


def _apply_per_tensor_bound_(stats: GradStats, bound: Tensor | float, eps: float) -> Tensor:
    """:func:`apply_per_tensor_bound_` for a bound already checked (clippers)."""
    # ``norm < inf`` is False for NaN and +Inf (norms are never negative): one cheap kernel.
    coefs = _coefficient(bound, stats.norms, stats.norms < math.inf, eps)
    if stats.grads:
        scale_each_grad_(stats, coefs)
    return coefs
