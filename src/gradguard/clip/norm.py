"""Clipping by gradient norms: global (``clip_grad_norm_`` made NaN-safe) and per tensor.

:func:`clip_grad_norm_` is the drop-in for ``torch.nn.utils.clip_grad_norm_`` (same arguments,
same results on finite gradients); :func:`clip_by_global_norm_` is the same rule with
gradguard's extras (a precomputed measurement, a custom ``eps``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradguard.clip._args import check_eps, stats_for
from gradguard.clip.apply import _apply_global_bound_, _apply_per_tensor_bound_
from gradguard.errors import (
    NoGradientsError,
    NonFiniteError,
    check_bool,
    check_norm_type,
    check_positive,
)
from gradguard.stats import GradStats, Parameters, measure

__all__ = ["clip_by_global_norm_", "clip_grad_norm_", "clip_per_tensor_norm_"]

_MAX_NORM_FIX = "Typical values are 0.5 to 5; 1.0 is a safe start for RNNs."
_TORCH_EPS = 1e-6  # what torch.nn.utils.clip_grad_norm_ adds to the norm before dividing


@torch.no_grad()
def clip_grad_norm_(
    parameters: Parameters,
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Drop-in for ``torch.nn.utils.clip_grad_norm_``: same arguments, same results, NaN-safe.

    On finite gradients the gradients and the returned norm equal PyTorch's (same kernels, same
    ``max_norm / (norm + 1e-6)`` coefficient, float64 kept for float64 gradients). Deliberate
    differences, all on input PyTorch mishandles or accepts silently:

    * a non-finite total norm leaves the gradients exactly as they were (PyTorch multiplies
      them by NaN or 0), so the step can be skipped and the culprit found;
    * half-precision norms are accumulated and returned in float32 (PyTorch rounds to half);
    * a tensor listed twice counts once;
    * ``max_norm <= 0``, ``norm_type <= 0``, strings and bools raise
      :class:`~gradguard.errors.ConfigError` instead of flipping, zeroing or miscounting.

    Args:
        parameters: a tensor, an iterable of tensors (or ``(name, tensor)`` pairs), or a module.
        max_norm: bound on the global norm; a finite number > 0.
        norm_type: p of the p-norm; ``inf`` or ``"inf"`` for the largest absolute value.
        error_if_nonfinite: raise :class:`~gradguard.errors.NonFiniteError` (also a
            ``RuntimeError``, as PyTorch raises) before changing anything when the norm is
            NaN or infinite. Checking it reads the norm on the host (one sync), as in PyTorch.
        foreach: accepted for compatibility; gradguard always uses the foreach kernels (PyTorch
            falls back per tensor by itself where they are unsupported).

    Returns:
        The global norm before clipping, a 0-d tensor (``0.`` when no tensor has a gradient).

    Raises:
        ConfigError: an argument is of the wrong type or out of range.
        NonFiniteError: ``error_if_nonfinite=True`` and the norm is NaN or infinite.
        UnsupportedGradientError: a gradient is sparse, or an expanded view.
    """
    bound = check_positive("max_norm", max_norm, fix=_MAX_NORM_FIX)
    p = check_norm_type(norm_type)
    check_bool(
        "error_if_nonfinite",
        error_if_nonfinite,
        fix="True raises on a NaN/Inf norm; False leaves such gradients untouched.",
    )
    if foreach is not None:
        check_bool("foreach", foreach, fix="Or None (the default).")
    try:
        stats = measure(parameters, p)
    except NoGradientsError:  # PyTorch returns 0 when no tensor has a gradient
        return torch.zeros((), dtype=torch.float32)
    if error_if_nonfinite and not bool(stats.finite):  # HOST SYNC: only when asked to raise.
        total = stats.total_norm.item()  # HOST SYNC: the error path only, after the one above.
        raise NonFiniteError(
            f"clip_grad_norm_: the total norm of order {p} of the gradients is "
            f"{total} (a NaN/Inf gradient, or finite values whose norm "
            "overflows); no gradient was changed. Skip this optimizer step, find the culprit "
            "with gg.measure(model).norms, or pass error_if_nonfinite=False to leave such "
            "gradients untouched without raising."
        )
    _apply_global_bound_(stats, bound, _TORCH_EPS)
    return stats.total_norm


@torch.no_grad()
def clip_by_global_norm_(
    parameters: Parameters | None,
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
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
        The global norm before clipping (0-d tensor: float32, or float64 for float64
        gradients), as ``clip_grad_norm_`` returns.

    Raises:
        ConfigError: ``max_norm`` is not a finite number > 0, ``eps`` is negative, or neither
            ``parameters`` nor ``stats`` is given.

    References:
        Pascanu, Mikolov, Bengio (2013), On the difficulty of training recurrent neural networks.
    """
    bound = check_positive("max_norm", max_norm, fix=_MAX_NORM_FIX)
    eps = check_eps(eps)
    stats = stats_for(parameters, stats, norm_type, "clip_by_global_norm_")
    _apply_global_bound_(stats, bound, eps)
    return stats.total_norm


@torch.no_grad()
def clip_per_tensor_norm_(
    parameters: Parameters | None,
    max_norm: float,
    norm_type: float | str = 2.0,
    *,
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
        The per-tensor norms before clipping (1-d, aligned with ``stats.names``).

    Raises:
        ConfigError: ``max_norm`` is not a finite number > 0, ``eps`` is negative, or neither
            ``parameters`` nor ``stats`` is given.
    """
    bound = check_positive("max_norm", max_norm, fix=_MAX_NORM_FIX)
    eps = check_eps(eps)
    stats = stats_for(parameters, stats, norm_type, "clip_per_tensor_norm_")
    _apply_per_tensor_bound_(stats, bound, eps)
    return stats.norms
