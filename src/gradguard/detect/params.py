"""Parameter-norm growth: weights running away, the slow symptom of an unstable run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradguard._ring import Ring
from gradguard.detect.base import check_int, check_ratio, culprit_names, fmt
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["ParamNormGrowthDetector"]


class ParamNormGrowthDetector:
    """Alert when the global parameter norm grows by a large factor within a short span.

    Healthy training changes the weights' norm slowly; a run heading for divergence inflates it
    quickly (the seeds' symptom "weights grow to very large magnitudes"). Measuring the parameter
    norm costs a pass over the weights, so it is asked for every ``every`` optimizer steps (a cost
    tier), and the rule compares the newest measurement with the one ``span`` measurements ago.
    Early training from a small initialisation legitimately multiplies the norm, so measurements
    enter the comparison only after ``warmup`` optimizer steps. A non-finite parameter norm is
    always critical: the weights are already corrupt.

    Args:
        every: measure the parameter norm every this many optimizer steps.
        span: measurements between the two compared values.
        max_growth: growth factor over ``span`` measurements that raises a warning (> 1).
        critical_growth: growth factor from which the alert is critical.
        warmup: optimizer steps before measurements enter the comparison.
    """

    name = "param_growth"

    def __init__(
        self,
        *,
        every: int = 10,
        span: int = 5,
        max_growth: float = 4.0,
        critical_growth: float = 100.0,
        warmup: int = 50,
    ) -> None:
        self.param_norm_every = check_int("every", every, minimum=1)
        self.history = Ring(check_int("span", span, minimum=1) + 1)
        self.max_growth = check_ratio("max_growth", max_growth)
        self.critical_growth = check_ratio("critical_growth", critical_growth)
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.seen = 0

    def update(self, obs: Observation) -> list[Alert]:
        """Compare this step's parameter norm, when measured, with the one ``span`` ago."""
        self.seen += 1
        norm = obs.param_norm
        if norm is None:
            return []
        if not math.isfinite(norm):
            return [
                Alert(
                    step=obs.step,
                    severity=Severity.CRITICAL,
                    kind=AlertKind.PARAM_NORM_GROWTH,
                    message=(
                        f"Parameter norm is {fmt(norm)} at step {obs.step}: the weights are "
                        "corrupt; roll back to the last good checkpoint."
                    ),
                    detector=self.name,
                    culprits=culprit_names(obs),
                    value=norm,
                )
            ]
        if norm <= 0.0 or self.seen <= self.warmup:
            return []
        self.history.append(math.log(norm))
        if not self.history.full:
            return []
        growth = math.exp(min(self.history[-1] - self.history[0], 700.0))
        if growth < self.max_growth:
            return []
        steps = (self.history.capacity - 1) * self.param_norm_every
        return [
            Alert(
                step=obs.step,
                severity=(
                    Severity.CRITICAL if growth >= self.critical_growth else Severity.WARNING
                ),
                kind=AlertKind.PARAM_NORM_GROWTH,
                message=(
                    f"Parameter norm grew {fmt(growth)}x in about {steps} steps (now {fmt(norm)}): "
                    "the weights are running away; lower the learning rate or add weight decay."
                ),
                detector=self.name,
                culprits=culprit_names(obs),
                value=growth,
                threshold=self.max_growth,
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        """Steps seen and the recent log parameter norms."""
        return {"seen": self.seen, "history": self.history.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.seen = int(state["seen"])
        self.history.load_state_dict(state["history"])
