"""Loss spikes against a robust baseline of recent losses."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from gradguard._ring import quantile
from gradguard.detect.base import LOSS_FLOOR, check_int, check_ratio, culprit_names, fmt
from gradguard.detect.robust import RobustWindow, jump_severity
from gradguard.errors import check_positive
from gradguard.records import Alert, AlertKind, Observation

__all__ = ["TAIL_QUANTILE", "LossSpikeDetector"]


TAIL_QUANTILE = 0.9
"""Outside log space, a loss jump is measured in units of at least the distance from the median
to this quantile of the window: the batches the model has not fitted yet."""


class LossSpikeDetector:
    """Alert when the loss jumps far above its recent typical value.

    While every loss is positive the rule works on ``log(loss)`` like
    :class:`~gradguard.detect.SpikeDetector`: the robust z-score against recent losses must reach
    ``z_threshold`` *and* the loss must be at least ``min_ratio`` times the recent median, the
    median taken as at least :data:`~gradguard.detect.base.LOSS_FLOOR` of the highest median
    seen (a loss converged to 1e-14 that wobbles to 1e-6 has not jumped: the run began near 1).
    Once a loss <= 0 is seen (log-likelihoods of densities, regularised objectives), the rule
    switches for good to the same test on the loss itself, the jump measured in units of
    ``|median|``, of the robust spread, or of the window's upper tail (:data:`TAIL_QUANTILE`
    minus the median), whichever is largest, but at least ``LOSS_FLOOR`` of the largest
    ``|median|`` seen. The tail matters once a loss underflows to exactly 0 on most batches:
    median and spread are then 0 while the batches not fitted yet still give losses near 1; a
    loss within that recent range is not a jump.
    During the first ``warmup`` optimizer steps only a jump of ``warmup_ratio`` times the median
    so far alerts. A missing or non-finite loss never enters the window (non-finite losses are
    :class:`NonFiniteDetector` 's job).

    Args:
        window: recent steps forming the baseline.
        warmup: optimizer steps before the z-score rule applies.
        z_threshold: robust z-score needed for an alert.
        min_ratio: loss / median ratio needed for an alert (> 1).
        critical_ratio: ratio from which the alert is critical.
        warmup_ratio: ratio to the median so far that alerts during the warm-up.
        min_spread: floor of the log-space spread.
    """

    name = "loss_spike"

    def __init__(
        self,
        *,
        window: int = 64,
        warmup: int = 20,
        z_threshold: float = 6.0,
        min_ratio: float = 10.0,
        critical_ratio: float = 1000.0,
        warmup_ratio: float = 100.0,
        min_spread: float = 0.1,
    ) -> None:
        size = check_int("window", window, minimum=3, fix="Use 32-128 steps.")
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.z_threshold = check_positive("z_threshold", z_threshold)
        self.min_ratio = check_ratio("min_ratio", min_ratio)
        self.critical_ratio = check_ratio("critical_ratio", critical_ratio)
        self.warmup_ratio = check_ratio("warmup_ratio", warmup_ratio)
        self.min_spread = check_positive("min_spread", min_spread)
        self.baseline = RobustWindow(size, self.min_spread)
        self.log_space = True
        self.seen = 0
        self.peak = 0.0  # largest |median| seen: LOSS_FLOOR of it floors the scale

    def update(self, obs: Observation) -> list[Alert]:
        """Score this step's loss against the baseline, then add it to the baseline."""
        self.seen += 1
        loss = obs.loss
        if loss is None or not math.isfinite(loss):
            return []
        if self.log_space and loss <= 0.0:
            self._leave_log_space()
        value = math.log(loss) if self.log_space else loss
        alerts: list[Alert] = []
        if len(self.baseline):
            center, spread = self.baseline.center_spread()
            if self.log_space:
                self.peak = max(self.peak, math.exp(center))
                center = max(center, math.log(LOSS_FLOOR * self.peak))
                typical = math.exp(center)
                ratio = math.exp(min(value - center, 700.0))
                z = (value - center) / spread
            else:
                # Around a median near 0 a ratio means little: measure the jump in units of
                # |median| or of the spread, whichever is larger, and never of less than a
                # thousandth of the largest |median| seen: a run whose loss went from 1 to
                # exactly 0 (a float32 cross-entropy underflows) then wiggling by 1e-8 is not
                # jumping.
                typical = center
                self.peak = max(self.peak, abs(center))
                tail = quantile(self.baseline.ring.values(), TAIL_QUANTILE) - center
                scale = max(abs(center), spread, tail, LOSS_FLOOR * self.peak, 1e-12)
                ratio = 1.0 + (value - center) / scale
                z = (value - center) / max(spread, self.min_spread * scale)
            severity = jump_severity(self, z=z, ratio=ratio, history=len(self.baseline))
            if severity is not None:
                alerts.append(
                    Alert(
                        step=obs.step,
                        severity=severity,
                        kind=AlertKind.LOSS_SPIKE,
                        message=(
                            f"Loss {fmt(loss)} is {fmt(ratio)}x its recent median {fmt(typical)} "
                            f"at step {obs.step}: this batch or the last update stands out."
                        ),
                        detector=self.name,
                        culprits=culprit_names(obs),
                        value=loss,
                        threshold=self.min_ratio * typical,
                    )
                )
        self.baseline.add(value)
        return alerts

    def _leave_log_space(self) -> None:
        values = [math.exp(v) for v in self.baseline.ring.values()]
        self.peak = max(self.peak, abs(statistics.median(values))) if values else self.peak
        self.baseline.ring.clear()
        for v in values:
            self.baseline.add(v)
        self.log_space = False
        self.baseline.min_spread = 0.0  # floored relative to |median| in update()

    def state_dict(self) -> dict[str, Any]:
        """Steps seen, the space the rule works in, and the baseline window."""
        return {
            "seen": self.seen,
            "log_space": self.log_space,
            "peak": self.peak,
            "baseline": self.baseline.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.seen = int(state["seen"])
        self.log_space = bool(state["log_space"])
        self.peak = float(state.get("peak", 0.0))
        self.baseline.min_spread = self.min_spread if self.log_space else 0.0
        self.baseline.load_state_dict(state["baseline"])
