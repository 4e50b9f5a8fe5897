"""Clipping by value: clamp every gradient element into ``[-clip_value, clip_value]``.

:func:`clip_grad_value_` is the drop-in for ``torch.nn.utils.clip_grad_value_``;
:func:`clip_by_value_` also reuses a step's measurement.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from gradguard.clip._args import check_stats, check_writable
from gradguard.errors import (
    ConfigError,
    NoGradientsError,
    UnsupportedGradientError,
    check_bool,
    check_positive,
)
from gradguard.stats import GradStats, Parameters, named_grads

__all__ = ["clip_by_value_", "clip_grad_value_"]

_CLIP_VALUE_FIX = "Pick a bound on single gradient elements, e.g. 1.0."


@torch.no_grad()
def clip_by_value_(
    parameters: Parameters | None, clip_value: float, *, stats: GradStats | None = None
) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]``, in place.

    Two foreach clamps per (device, dtype) group, no host sync; when ``stats`` is given its
    grouping is reused and nothing is measured. NaN elements stay NaN (``clamp`` propagates
    NaN), so a later measurement still flags the step. ``+Inf`` and ``-Inf`` become
    ``+clip_value`` and ``-clip_value``: value clipping cannot tell an overflow from a large
    value, so measure *before* clipping (as ``Guard`` does) if an Inf must be reported.

    Args:
        parameters: what to clip (ignored when ``stats`` is given).
        clip_value: bound on the absolute value of every element; must be > 0.
        stats: the result of ``measure(parameters)`` for this step; only its grouping is used.

    Raises:
        ConfigError: ``clip_value`` is not a finite number > 0, or neither ``parameters`` nor
            ``stats`` is given.
        UnsupportedGradientError: a gradient is complex (it has no order to clamp by) or an
            expanded view; checked before any gradient changes.
    """
    bound = check_positive("clip_value", clip_value, fix=_CLIP_VALUE_FIX)
    for group in _groups(parameters, stats):
        torch._foreach_clamp_min_(group, -bound)
        torch._foreach_clamp_max_(group, bound)


@torch.no_grad()
def clip_grad_value_(
    parameters: Parameters, clip_value: float, foreach: bool | None = None
) -> None:
    """Drop-in for ``torch.nn.utils.clip_grad_value_``: clamp every gradient element in place.

    Same arguments and results as PyTorch (NaN stays NaN, ``±Inf`` become ``±clip_value``,
    tensors without a gradient are skipped). Deliberate differences: ``clip_value`` must be a
    finite number > 0 (PyTorch turns a negative bound into an inverted clamp), and a complex
    or expanded gradient raises :class:`~gradguard.errors.UnsupportedGradientError` before
    anything changes.

    Args:
        parameters: a tensor, an iterable of tensors (or ``(name, tensor)`` pairs), or a module.
        clip_value: bound on the absolute value of every element; a finite number > 0.
        foreach: accepted for compatibility; the foreach kernels are always used.

    Raises:
        ConfigError: an argument is of the wrong type or out of range.
        UnsupportedGradientError: a gradient is sparse, complex or an expanded view.
    """
    check_positive("clip_value", clip_value, fix=_CLIP_VALUE_FIX)
    if foreach is not None:
        check_bool("foreach", foreach, fix="Or None (the default).")
    try:
        clip_by_value_(parameters, clip_value)
    except NoGradientsError:  # PyTorch clips nothing, silently, when no tensor has a gradient
        return


def _groups(parameters: Parameters | None, stats: GradStats | None) -> list[list[Tensor]]:
    """The gradients to clamp, grouped by (device, dtype), after checking all of them."""
    if stats is not None:
        stats = check_stats("clip_by_value_(stats=...)", stats)
        names, grads = stats.names, stats.grads
        groups = stats.groups()
    elif parameters is None:
        raise ConfigError(
            "clip_by_value_ got parameters=None and no stats; pass the parameters to clip, "
            "or stats=gg.measure(model) from this step."
        )
    else:
        named = named_grads(parameters)
        names = tuple(name for name, _, _ in named)
        grads = tuple(grad for _, _, grad in named)
        if not grads:
            return []
        grouped = _group_tensors_by_device_and_dtype([list(grads)])
        groups = [tensors[0] for tensors, _ in grouped.values()]  # type: ignore[misc]
    for group in groups:
        if group[0].is_complex():
            name = next(name for name, grad in zip(names, grads, strict=True) if grad.is_complex())
            raise UnsupportedGradientError(
                f"the gradient of {name!r} is complex ({group[0].dtype}); complex numbers "
                "have no order to clamp by, so nothing was changed. Clip complex gradients "
                "by norm (gg.clip_grad_norm_), or clamp real and imaginary parts yourself: "
                "torch.view_as_real(p.grad).clamp_(-v, v)."
            )
    check_writable(names, grads)
    return groups
