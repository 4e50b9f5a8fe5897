"""Clipping by value: clamp every gradient element into ``[-clip_value, clip_value]``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from gradguard.errors import ConfigError, check_positive
from gradguard.stats import GradStats, Parameters, named_grads

__all__ = ["clip_by_value_"]


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
    """
    bound = check_positive(
        "clip_value", clip_value, fix="Pick a bound on single gradient elements, e.g. 1.0."
    )
    for group in _groups(parameters, stats):
        torch._foreach_clamp_min_(group, -bound)
        torch._foreach_clamp_max_(group, bound)


def _groups(parameters: Parameters | None, stats: GradStats | None) -> list[list[Tensor]]:
    if stats is not None:
        return stats.groups()
    if parameters is None:
        raise ConfigError(
            "clip_by_value_ got parameters=None and no stats; pass the parameters to clip, "
            "or stats=gg.measure(model) from this step."
        )
    grads = [grad for _, _, grad in named_grads(parameters)]
    grouped = _group_tensors_by_device_and_dtype([grads])  # type: ignore[list-item]
    return [tensors[0] for tensors, _ in grouped.values()]  # type: ignore[misc]
