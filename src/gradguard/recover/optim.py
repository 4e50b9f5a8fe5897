"""Act on any optimizer: scale every group's learning rate, reset its moments."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gradguard.errors import check_positive

__all__ = ["reset_optimizer_state_", "scaled_lr"]


@contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[None]:
    """Multiply the learning rate of every parameter group by ``scale`` inside the block.

    The guard backs off by wrapping ``optimizer.step()`` in this block instead of rewriting the
    learning rates for good, so any scheduler (chainable or not) keeps owning the schedule and
    the backoff composes with it: the effective rate is ``schedule * scale``. Groups keep their
    own rates relative to each other. ``scale == 1`` touches nothing, so a run without trouble
    is bit-identical to one without the guard.

    Args:
        optimizer: any ``torch.optim.Optimizer``; tensor learning rates are scaled too.
        scale: multiplier in ``(0, inf)``.

    Raises:
        ConfigError: ``scale`` is not a finite number > 0.
    """
    scale = check_positive("scale", scale, fix="The guard's backoff uses values in (0, 1].")
    if scale == 1.0:
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, saved, strict=True):
        group["lr"] = lr * scale
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved, strict=True):
            group["lr"] = lr


def reset_optimizer_state_(optimizer: torch.optim.Optimizer) -> int:
    """Forget the optimizer's per-parameter state (Adam's moments, momentum buffers, step counts).

    Every ``torch.optim`` optimizer rebuilds that state lazily at its next step, exactly as on its
    first step; the parameter groups (learning rates, betas, weight decay) are kept.

    Returns:
        The number of parameters whose state was dropped.
    """
    count = len(optimizer.state)
    optimizer.state.clear()
    return count
