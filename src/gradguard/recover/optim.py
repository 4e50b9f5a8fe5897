"""Act on any optimizer: scale every group's learning rate, reset its moments."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from gradguard.errors import check_positive

__all__ = ["RateCeiling", "already_unscaled", "reset_optimizer_state_", "scaled_lr"]


@contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[None]:
    """Multiply the learning rate of every parameter group by ``scale`` inside the block.

    A plain multiplier around ``optimizer.step()`` instead of rewriting the learning rates for
    good, so any scheduler keeps owning the schedule: the effective rate is ``schedule * scale``
    (the guard itself steps under a :class:`RateCeiling`, which a rising schedule cannot
    outrun). Groups keep their
    own rates relative to each other. ``scale == 1`` touches nothing, so a run without trouble
    is bit-identical to one without the guard.

    Args:
        optimizer: any ``torch.optim.Optimizer``; tensor learning rates are scaled too.
        scale: multiplier in ``(0, inf)``.

    Raises:
        ConfigError: ``scale`` is not a finite number > 0.
    """
    ceiling = RateCeiling(optimizer)  # no reference yet: every rate is schedule * scale
    ceiling.scale = check_positive("scale", scale, fix="The guard's backoff uses values in (0, 1].")
    with ceiling.applied():
        yield


def already_unscaled(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` was already called since the last update.

    A script that clips itself (nanoGPT) or a framework (Accelerate) may have unscaled first; a
    second ``unscale_`` raises. Reads the scaler's per-optimizer stage, as ``unscale_`` does.
    """
    states = getattr(scaler, "_per_optimizer_states", None)
    stage = states.get(id(optimizer), {}).get("stage") if isinstance(states, Mapping) else None
    return getattr(stage, "name", None) == "UNSCALED"


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


class RateCeiling:
    """Per-group learning-rate ceilings that a scheduler cannot outrun.

    A backoff scaled the rate at the moment of trouble; a scheduler that ramps the rate up (a
    warm-up to a too-high peak, an LR-range test, a warm restart) would carry a merely scaled
    rate straight back into the cliff. So the first backoff fixes, per parameter group, the
    reference rate in force when it happened; from then on the group's rate is
    ``min(schedule, reference * scale)``, re-applied around every optimizer step whatever the
    scheduler or the user wrote into ``group["lr"]`` in between. Later backoffs lower the
    reference to the rate actually in use; raising ``scale`` back to 1 leaves the reference as
    the ceiling (a rate that failed once). Before any backoff nothing is touched, so a run
    without trouble is bit-identical to one without the guard. Tensor learning rates (capturable
    optimizers) are scaled, not capped: reading them would cost a host sync.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.scale = 1.0
        self.references: list[float | None] = [None] * len(optimizer.param_groups)

    def rate(self, group: int, scheduled: float) -> float:
        """The rate group ``group`` steps with when its schedule says ``scheduled``."""
        reference = self.references[group] if group < len(self.references) else None
        if reference is None:
            return scheduled * self.scale
        return min(scheduled, reference * self.scale)

    def set_scale(self, scale: float) -> None:
        """Take the policy's scale; a lower one fixes the references at the rates in use."""
        scale = check_positive("scale", scale, fix="The guard's backoff uses values in (0, 1].")
        groups = self.optimizer.param_groups
        if len(self.references) < len(groups):  # add_param_group after the guard was built
            self.references += [None] * (len(groups) - len(self.references))
        if scale < self.scale:
            for g, group in enumerate(groups):
                lr = group["lr"]
                if isinstance(lr, (int, float)):
                    self.references[g] = self.rate(g, float(lr)) / self.scale
        self.scale = scale

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block every group steps with its capped rate; outside, the schedule's."""
        if self.scale == 1.0 and all(r is None for r in self.references):
            yield
            return
        groups = self.optimizer.param_groups
        saved = [group["lr"] for group in groups]
        for g, (group, lr) in enumerate(zip(groups, saved, strict=True)):
            group["lr"] = (
                self.rate(g, float(lr)) if isinstance(lr, (int, float)) else lr * self.scale
            )
        try:
            yield
        finally:
            for group, lr in zip(groups, saved, strict=True):
                group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        """The scale and the references, as plain values."""
        return {"scale": self.scale, "references": list(self.references)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.scale = float(state["scale"])
        self.references = [None if r is None else float(r) for r in state["references"]]
