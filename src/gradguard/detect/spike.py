"""Sudden gradient-norm spikes against a robust baseline of recent log norms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradguard.detect.base import check_int, check_ratio, culprit_names, fmt
from gradguard.detect.robust import RobustWindow, jump_severity
from gradguard.errors import check_positive
from gradguard.records import Alert, AlertKind, Observation

__all__ = ["SpikeDetector"]


class SpikeDetector:
    """Alert when the gradient norm jumps far above its recent typical value.

    Works on ``log(norm)``: norms are positive and their noise is multiplicative, so a ratio is
    the natural unit. A step is a spike when both hold:

    * its robust z-score against the window (median and MAD of recent log norms) is at least
      ``z_threshold``: the jump is unusual *for this run*, and
    * the norm is at least ``min_ratio`` times the window's median: the jump is large in absolute
      terms, so runs with very quiet norms do not alert on modest bumps.

    During the first ``warmup`` optimizer steps the baseline is too short to judge noise, so only
    a jump of ``warmup_ratio`` times the median so far raises an alert (runs that explode from
    their first steps). Non-finite norms are left to
    :class:`~gradguard.detect.NonFiniteDetector` and never enter the window.

    Args:
        window: recent steps forming the baseline.
        warmup: optimizer steps before the z-score rule applies.
        z_threshold: robust z-score (in log space) needed for an alert.
        min_ratio: norm / median ratio needed for an alert (> 1).
        critical_ratio: ratio from which the alert is critical.
        warmup_ratio: ratio to the median so far that alerts during the warm-up.
        min_spread: floor of the log-space spread (0.1 is about a 10 % wiggle).

    References:
        F. R. Hampel, "The influence curve and its role in robust estimation", JASA 69, 1974.
    """

    name = "spike"

    def __init__(
        self,
        *,
        window: int = 64,
        warmup: int = 20,
        z_threshold: float = 6.0,
        min_ratio: float = 5.0,
        critical_ratio: float = 1000.0,
        warmup_ratio: float = 1000.0,
        min_spread: float = 0.1,
    ) -> None:
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.z_threshold = check_positive("z_threshold", z_threshold)
        self.min_ratio = check_ratio("min_ratio", min_ratio)
        self.critical_ratio = check_ratio("critical_ratio", critical_ratio)
        self.warmup_ratio = check_ratio("warmup_ratio", warmup_ratio)
        self.baseline = RobustWindow(
            check_int("window", window, minimum=3, fix="Use 32-128 steps."),
            check_positive("min_spread", min_spread),
        )
        self.seen = 0

    def update(self, obs: Observation) -> list[Alert]:
        """Score this step's norm against the baseline, then add it to the baseline."""
        self.seen += 1
        norm = obs.total_norm
        if not (obs.finite and math.isfinite(norm) and norm > 0.0):
            return []
        value = math.log(norm)
        alerts: list[Alert] = []
        if len(self.baseline):
            center, spread = self.baseline.center_spread()
            ratio = math.exp(min(value - center, 700.0))
            z = (value - center) / spread
            severity = jump_severity(self, z=z, ratio=ratio, history=len(self.baseline))
            if severity is not None:
                typical = math.exp(center)
                alerts.append(
                    Alert(
                        step=obs.step,
                        severity=severity,
                        kind=AlertKind.GRAD_NORM_SPIKE,
                        message=(
                            f"Gradient norm {fmt(norm)} is {fmt(ratio)}x its recent median "
                            f"{fmt(typical)} at step {obs.step}: this batch or this step stands "
                            "out."
                        ),
                        detector=self.name,
                        culprits=culprit_names(obs),
                        value=norm,
                        threshold=self.min_ratio * typical,
                    )
                )
        self.baseline.add(value)
        return alerts

    def state_dict(self) -> dict[str, Any]:
        """Steps seen and the baseline window."""
        return {"seen": self.seen, "baseline": self.baseline.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore steps seen and the baseline window."""
        self.seen = int(state["seen"])
        self.baseline.load_state_dict(state["baseline"])
