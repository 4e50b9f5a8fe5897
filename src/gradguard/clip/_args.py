"""Checks the clipping rules share on top of :mod:`gradguard.errors`' validators: the step's
measurement, and gradients that cannot be scaled in place."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradguard.errors import (
    ConfigError,
    ConfigTypeError,
    UnsupportedGradientError,
    check_nonnegative,
)
from gradguard.stats import GradStats, Parameters, measure

__all__ = ["check_eps", "check_stats", "check_writable", "stats_for"]


def check_eps(eps: object) -> float:
    """Return ``eps`` as a float if it is a finite number >= 0, else raise :class:`ConfigError`."""
    return check_nonnegative(
        "eps", eps, fix="It only guards a division by zero; keep the default 1e-6."
    )


def check_stats(where: str, stats: object) -> GradStats:
    """Return ``stats`` if it is a :class:`GradStats`; a model or tensor list is refused early."""
    if not isinstance(stats, GradStats):
        raise ConfigTypeError(
            f"{where} takes this step's measurement, got {type(stats).__name__} "
            f"{stats!r:.60}. Pass gg.measure(model), taken after backward()."
        )
    return stats


def stats_for(
    parameters: Parameters | None, stats: GradStats | None, norm_type: float | str, caller: str
) -> GradStats:
    """``stats`` when given (reused, nothing measured twice), else ``measure(parameters)``."""
    if stats is not None:
        return check_stats(f"{caller}(stats=...)", stats)
    if parameters is None:
        raise ConfigError(
            f"{caller} got parameters=None and no stats; pass the parameters to clip (a model, "
            "or model.parameters()), or stats=gg.measure(model) from this step."
        )
    return measure(parameters, norm_type)


def check_writable(names: Sequence[str], grads: Sequence[Tensor]) -> None:
    """Refuse, before any gradient changes, a gradient that cannot be written in place.

    An expanded view (stride 0, e.g. ``torch.tensor([g]).expand(n)`` assigned to ``.grad``)
    holds one value for many elements; PyTorch refuses to write it in place, and a foreach
    kernel would fail halfway, with some gradients already scaled. The common case costs one
    C-level pass over ``is_contiguous``; only non-contiguous gradients are examined further.
    """
    if all(map(Tensor.is_contiguous, grads)):
        return
    for name, grad in zip(names, grads, strict=True):
        # 1 means "overlaps for sure" (0: does not; 2: too hard to tell, which in-place ops allow).
        if not grad.is_contiguous() and torch._debug_has_internal_overlap(grad) == 1:
            raise UnsupportedGradientError(
                f"the gradient of {name!r} (shape {tuple(grad.shape)}, stride {grad.stride()}) "
                "is an expanded view whose elements share memory, so it cannot be clipped in "
                "place; nothing was changed. Assign a real tensor: p.grad = g.expand(...)"
                ".clone() (or .contiguous())."
            )
