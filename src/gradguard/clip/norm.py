"""Clipping by the global gradient norm: ``clip_grad_norm_`` made NaN-safe and single-pass."""

from __future__ import annotations

from torch import Tensor

from gradguard.clip.apply import safe_coefficient, scale_grads_
from gradguard.errors import check_positive
from gradguard.stats import GradStats, Parameters, measure

__all__ = ["clip_by_global_norm_"]


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
        ConfigError: ``max_norm`` is not a finite number > 0.

    References:
        Pascanu, Mikolov, Bengio (2013), On the difficulty of training recurrent neural networks.
    """
    bound = check_positive(
        "max_norm", max_norm, fix="Typical values are 0.5 to 5; 1.0 is a safe start for RNNs."
    )
    if stats is None:
        if parameters is None:
            raise TypeError("clip_by_global_norm_ needs parameters, or stats from measure()")
        stats = measure(parameters, norm_type)
    if stats.grads:
        scale_grads_(stats, safe_coefficient(bound, stats.total_norm, stats.finite, eps))
    return stats.total_norm
