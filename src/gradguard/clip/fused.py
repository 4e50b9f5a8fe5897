"""Fold the clip coefficient and the skip into a fused optimizer step: no separate clip pass.

``torch.optim.Adam``, ``AdamW`` and ``SGD`` built with ``fused=True`` divide every gradient by
an optional ``grad_scale`` tensor and skip the whole step when an optional ``found_inf`` tensor
is 1, inside their one fused kernel; ``torch.amp.GradScaler`` drives them through these two
attributes. Setting ``grad_scale = 1 / coef`` applies a clip coefficient on the fly, and
``found_inf = not finite`` skips a non-finite step on the device, without a host branch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradguard.errors import ConfigError, ConfigTypeError

__all__ = ["fused_clipped_step"]

_HOOKS = ("grad_scale", "found_inf")


def fused_clipped_step(
    optimizer: torch.optim.Optimizer, coef: Tensor, *, skip: Tensor | None = None
) -> None:
    """Take one fused optimizer step on gradients scaled by ``coef``, skipped where ``skip``.

    Equivalent to multiplying every gradient by ``coef`` and then calling
    ``optimizer.step()`` unless ``skip`` is True, but the multiplication happens inside the
    optimizer's fused kernel, which saves one read and write of every gradient, and the skip
    needs no host sync. Parameters match the two-pass version to rounding (the kernel divides
    by ``1 / coef`` instead of multiplying). On a skipped step the kernel restores Adam's step
    counters. As a side effect the gradients may be left scaled (the CPU kernels write them
    back), as after clipping.

    Typical use, with a 0-d coefficient from a global rule::

        stats = gg.measure(model)
        coef = gg.clip.safe_coefficient(1.0, stats.total_norm, stats.finite, 1e-6)
        fused_clipped_step(optimizer, coef, skip=~stats.finite)

    A coefficient that is NaN, infinite or not > 0 cannot be a clip factor (it would write NaN
    or zeros into the weights); it skips the step instead, decided on the device: raising would
    need a host sync at every step.

    Args:
        optimizer: a ``torch.optim.Adam``, ``AdamW`` or ``SGD`` built with ``fused=True``.
        coef: the 0-d floating-point clip coefficient, > 0 (per-tensor coefficients cannot be
            folded).
        skip: optional 0-d bool tensor; True skips the step on the device.

    Raises:
        ConfigError: the optimizer is not fused, a ``GradScaler`` already drives it, or ``coef``
            or ``skip`` is not a 0-d tensor of the right kind.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigTypeError(
            f"optimizer must be a torch.optim.Optimizer built with fused=True, got "
            f"{type(optimizer).__name__} {optimizer!r:.60}."
        )
    groups = optimizer.param_groups
    if not groups or not all(group.get("fused") for group in groups):
        fused = [group.get("fused") for group in groups]
        raise ConfigError(
            f"fused_clipped_step needs an optimizer built with fused=True, got "
            f"{type(optimizer).__name__} with fused={fused!r} (per param group). "
            "Build torch.optim.Adam/AdamW/SGD(..., fused=True), or clip with a clipper's "
            "clip_(stats) and call optimizer.step()."
        )
    taken = [name for name in _HOOKS if getattr(optimizer, name, None) is not None]
    if taken:
        raise ConfigError(
            f"the optimizer already has {taken!r} set, probably by torch.amp.GradScaler; "
            "fused_clipped_step cannot share them. Clip with a clipper's clip_(stats) instead."
        )
    if not isinstance(coef, Tensor) or coef.ndim != 0 or not coef.is_floating_point():
        shape = (
            f"a {coef.dtype} tensor of shape {tuple(coef.shape)}"
            if isinstance(coef, Tensor)
            else f"{type(coef).__name__} {coef!r:.40}"
        )
        raise ConfigTypeError(
            f"coef must be a 0-d floating-point tensor (one coefficient for all gradients), got "
            f"{shape}. Per-tensor coefficients cannot be folded into the step; apply them with "
            "clip_(). For a Python number c, pass torch.tensor(c)."
        )
    if skip is not None and (not isinstance(skip, Tensor) or skip.numel() != 1):
        got = tuple(skip.shape) if isinstance(skip, Tensor) else type(skip).__name__
        raise ConfigTypeError(
            f"skip must be a 0-d bool tensor or None, got {got!r}. Pass skip=~stats.finite."
        )
    coef = coef.to(torch.float32)
    # NaN, Inf or <= 0 is no clip factor: skip the step on the device rather than apply it.
    unusable = ~((coef > 0) & (coef < math.inf))
    found_inf = unusable if skip is None else unusable | skip.reshape(()).to(torch.bool)
    scale = torch.reciprocal(torch.where(unusable, 1.0, coef))
    optimizer.grad_scale = scale  # type: ignore[attr-defined]
    optimizer.found_inf = found_inf.to(torch.float32)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        for name in _HOOKS:
            delattr(optimizer, name)
