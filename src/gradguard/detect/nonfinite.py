"""Non-finite gradients and losses: the explosion has already happened, say so at once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradguard.detect.base import culprit_names, fmt, nonfinite_names
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["NonFiniteDetector"]


class NonFiniteDetector:
    """Raise a critical alert when the gradient norm or the loss is NaN or infinite.

    A gradient norm is non-finite when a gradient holds NaN/Inf or when its finite values
    overflow the float32 norm; both are explosions. This is the check PyTorch offers as
    ``clip_grad_norm_(..., error_if_nonfinite=True)``, without raising.

    Args:
        check_loss: also alert on a non-finite loss (``False`` gives a gradients-only check).
    """

    name = "nonfinite"

    def __init__(self, *, check_loss: bool = True) -> None:
        self.check_loss = check_loss
        self.grad_steps = 0
        self.loss_steps = 0

    def update(self, obs: Observation) -> list[Alert]:
        """Alert on a non-finite gradient norm and, if enabled, a non-finite loss."""
        alerts: list[Alert] = []
        if not (obs.finite and math.isfinite(obs.total_norm)):
            self.grad_steps += 1
            culprits = nonfinite_names(obs) or culprit_names(obs)
            where = f" in {', '.join(culprits)}" if culprits else ""
            alerts.append(
                Alert(
                    step=obs.step,
                    severity=Severity.CRITICAL,
                    kind=AlertKind.NONFINITE_GRAD,
                    message=(
                        f"Gradient norm is {fmt(obs.total_norm)} at step {obs.step}{where}: "
                        "applied, this step would write NaN/Inf into the weights."
                    ),
                    detector=self.name,
                    culprits=culprits,
                    value=obs.total_norm,
                )
            )
        if self.check_loss and obs.loss is not None and not math.isfinite(obs.loss):
            self.loss_steps += 1
            alerts.append(
                Alert(
                    step=obs.step,
                    severity=Severity.CRITICAL,
                    kind=AlertKind.NONFINITE_LOSS,
                    message=(
                        f"Loss is {fmt(obs.loss)} at step {obs.step}: the forward pass "
                        "overflowed on this batch."
                    ),
                    detector=self.name,
                    culprits=culprit_names(obs),
                    value=obs.loss,
                )
            )
        return alerts

    def state_dict(self) -> dict[str, Any]:
        """Counts of non-finite steps seen."""
        return {"grad_steps": self.grad_steps, "loss_steps": self.loss_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counts."""
        self.grad_steps = int(state["grad_steps"])
        self.loss_steps = int(state["loss_steps"])
