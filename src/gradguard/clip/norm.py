"""Clipping by gradient norms: global (``clip_grad_norm_`` made NaN-safe) and per tensor."""

from __future__ import annotations

import torch
from torch import Tensor

from gradguard.clip._args import check_eps, stats_for
from gradguard.clip.apply import apply_global_bound_, apply_per_tensor_bound_
from gradguard.errors import check_positive
from gradguard.stats import GradStats, Parameters

__all__ = ["clip_by_global_norm_", "clip_per_tensor_norm_"]

_MAX_NORM_FIX = "Typical values are 0.5 to 5; 1.0 is a safe start for RNNs."


@torch.no_grad()
def clip_by_global_norm_(
    parameters: Parameters | None,
    max_norm: float,
    *,
    norm_type: float | str = 2.0,
    eps: float = 1e-6,
    stats: GradStats | None = None,
) -> Tensor:
    """Scale all gradients so that their global norm is at most ``max_norm``, in place.

    The coefficient is ``clamp(max_norm / (norm + eps), max=1)``, applied with one foreach
    multiply per (device, dtype) group; no host sync. When the norm is non-finite the gradients
    are left exactly as they were, so the step can be skipped and the culprit reported.

    Args:
        parameters: what to clip (ignored when ``stats`` is given).
        max_norm: bound on the global norm; must be > 0.
        norm_type: p of the p-norm, as in :func:`gradguard.measure`.
        eps: added to the norm before dividing, as PyTorch does.
        stats: the result of ``measure(parameters)`` for this step; reused so nothing is measured
            twice. It must come from the gradients as they are now.

    Returns:
        The global norm before clipping (0-d float32 tensor), as ``clip_grad_norm_`` returns.

    Raises:
        ConfigError: ``max_norm`` is not a finite number > 0, ``eps`` is negative, or neither
            ``parameters`` nor ``stats`` is given.

    References:
        Pascanu, Mikolov, Bengio (2013), On the difficulty of training recurrent neural networks.
    """
    bound = check_positive("max_norm", max_norm, fix=_MAX_NORM_FIX)
    eps = check_eps(eps)
    stats = stats_for(parameters, stats, norm_type, "clip_by_global_norm_")
    apply_global_bound_(stats, bound, eps)
    return stats.total_norm


@torch.no_grad()
def clip_per_tensor_norm_(
    parameters: Parameters | None,
    max_norm: float,
    *,
    norm_type: float | str = 2.0,
    eps: float = 1e-6,
    stats: GradStats | None = None,
) -> Tensor:
    """Scale each gradient tensor on its own so that its norm is at most ``max_norm``, in place.

    Unlike global clipping, a huge gradient in one tensor does not shrink the others: for
    gradients ``[100, 0]`` and ``[0, 0.1]`` and ``max_norm=1`` the first becomes ``[1, 0]`` and
    the second stays ``[0, 0.1]`` (global clipping would make it ``[0, 0.001]``). The price is
    that the overall direction changes. Each tensor gets ``clamp(max_norm / (norm_i + eps),
    max=1)`` on the device; a tensor whose norm is non-finite is left exactly as it was.

    Args:
        parameters: what to clip (ignored when ``stats`` is given).
        max_norm: bound on every tensor's norm; must be > 0.
        norm_type: p of the p-norm, as in :func:`gradguard.measure`.
        eps: added to each norm before dividing.
        stats: the result of ``measure(parameters)`` for this step, reused.

    Returns:
        The per-tensor norms before clipping (1-d float32, aligned with ``stats.names``).

    Raises:
        ConfigError: ``max_norm`` is not a finite number > 0, ``eps`` is negative, or neither
            ``parameters`` nor ``stats`` is given.
    """
    bound = check_positive("max_norm", max_norm, fix=_MAX_NORM_FIX)
    eps = check_eps(eps)
    stats = stats_for(parameters, stats, norm_type, "clip_per_tensor_norm_")
    apply_per_tensor_bound_(stats, bound, eps)
    return stats.norms
