"""Multiply gradients by a precomputed coefficient, in place, with foreach kernels."""

from __future__ import annotations

import torch
from torch import Tensor

from gradguard.stats import GradStats

__all__ = ["safe_coefficient", "scale_grads_"]


def safe_coefficient(bound: Tensor | float, norm: Tensor, finite: Tensor, eps: float) -> Tensor:
    """``clamp(bound / (norm + eps), max=1)``, or exactly 1 where ``finite`` is False.

    A non-finite norm leaves the gradients untouched (unlike ``clip_grad_norm_``, which turns
    them all into NaN or zeros) so the caller can skip the step and name the culprit. No host
    branch: ``torch.where`` picks the value on the device.
    """
    coef = torch.clamp(bound / (norm + eps), max=1.0)
    return torch.where(finite, coef, torch.ones_like(coef))


def scale_grads_(stats: GradStats, coef: Tensor) -> None:
    """Multiply every gradient measured in ``stats`` by the 0-d tensor ``coef``, in place."""
    for group in stats.groups():
        # Async copy of a 0-d tensor when the group lives on another device; no host sync.
        torch._foreach_mul_(group, coef.to(group[0].device))
