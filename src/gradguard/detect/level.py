"""Where the loss stands against its healthy level: warm-up jumps, a loss far above, a stuck level.

The spike detectors judge one step against a calibrated spread. These rules judge the loss
*level* against what was healthy for the run, in plain ratios, for the escalation ladder:

* ``loss_jump`` (critical): while the other detectors warm up, one loss a hundred times the
  healthy median is a bad batch or a broken step, not training;
* ``loss_high`` (info): this step's loss is ``ratio`` times the healthy median (the ladder reads
  it right after a rollback: restored weights that fail as high on new batches mean the data
  changed, not the weights);
* ``loss_stuck`` (warning): the level (median of the last few losses) has stayed ``ratio`` times
  above healthy for ``after`` steps: clipping kept the run finite but not on track.

The healthy median is over recent losses below that ``ratio``, so an incident never teaches the
baseline its own losses. Ratios are taken against at least
:data:`~gradguard.detect.base.LOSS_FLOOR` of the highest level of the run: a loss converging to
1e-14 that wobbles to 1e-9 has not grown 1e5-fold in any sense that matters. That peak is
run-level memory, kept across rollbacks (``keep_on_rollback``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from gradguard._ring import keep_last
from gradguard.detect.base import LOSS_FLOOR, check_int, check_ratio, fmt
from gradguard.errors import ConfigError, check_real
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["LossLevelDetector"]


class LossLevelDetector:
    """Judge the loss against its healthy level: a jump in the warm-up, far above, stuck above.

    Args:
        ratio: loss (or level) over the healthy median that counts as far above it.
        after: steps in a row the level must stay that high to be stuck.
        jump: during the first ``warmup`` steps, a loss this many times the healthy median is a
            critical ``loss_jump`` (``math.inf`` disables the rule).
        warmup: steps during which the jump rule applies (the loss-spike detector's calibrated
            rule takes over later: heavy-tailed healthy runs reach 10-1000x now and then).
        baseline: recent healthy losses forming the median.
        level: recent losses whose median is the level (a median, not one loss: single losses
            10x the median come and go in heavy-tailed healthy runs).
    """

    name = "loss_level"
    keep_on_rollback = ("peak",)
    """State a rollback keeps live: the run's highest loss level, the scale of the floor."""

    def __init__(
        self,
        *,
        ratio: float = 10.0,
        after: int = 10,
        jump: float = 100.0,
        warmup: int = 32,
        baseline: int = 32,
        level: int = 5,
    ) -> None:
        self.ratio = check_ratio("ratio", ratio, fix="10 means ten times the healthy median.")
        self.after = check_int("after", after, minimum=1)
        self.jump = check_real("jump", jump, fix="100, or math.inf to disable the rule.")
        if not self.jump > 1.0:
            raise ConfigError(f"jump must be a number > 1 (or inf to disable), got {jump!r}.")
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.baseline = check_int("baseline", baseline, minimum=1)
        self.level = check_int("level", level, minimum=1)
        self.seen = 0  # steps observed (the run's clock, for people reading the state)
        self.healthy: list[float] = []  # recent losses below ``ratio`` times their median
        self.recent: list[float] = []  # the last ``level`` finite losses
        self.peak = 0.0  # highest level of the run
        self.high_for = 0  # steps in a row the level has been far above healthy

    def typical(self) -> float | None:
        """The healthy median raised to the floor, or ``None`` before any healthy loss."""
        if not self.healthy:
            return None
        return max(statistics.median(self.healthy), LOSS_FLOOR * self.peak)

    def update(self, obs: Observation) -> list[Alert]:
        """Compare this step's loss and the recent level with the healthy median."""
        step, loss = obs.step, obs.loss
        self.seen += 1
        if loss is None or not math.isfinite(loss):
            return []
        self.recent = keep_last(self.recent, loss, self.level)
        level = statistics.median(self.recent) if len(self.recent) >= self.level else None
        if level is not None and level > self.peak:
            self.peak = level
        typical = self.typical()
        alerts: list[Alert] = []
        if typical is None or typical <= 0.0:
            self.healthy = keep_last(self.healthy, loss, self.baseline)
            return alerts
        high = self.ratio * typical

        def alert(severity: Severity, kind: AlertKind, message: str, value: float) -> None:
            alerts.append(
                Alert(step, severity, kind, message, self.name, (), value, high, since=None)
            )

        if step < self.warmup and loss > 0.0 and loss >= self.jump * typical:
            alert(
                Severity.CRITICAL,
                AlertKind.LOSS_JUMP,
                f"Loss jump to {fmt(loss)}, {fmt(loss / typical)}x the healthy median "
                f"{fmt(typical)}, {step} steps in: a bad batch or a broken step.",
                loss,
            )
        if loss >= high:
            alert(
                Severity.INFO,
                AlertKind.LOSS_HIGH,
                f"Loss {fmt(loss)} is {fmt(loss / typical)}x its healthy median {fmt(typical)}.",
                loss,
            )
        else:
            self.healthy = keep_last(self.healthy, loss, self.baseline)
        self.high_for = self.high_for + 1 if level is not None and level >= high else 0
        if self.high_for >= self.after and level is not None:
            alert(
                Severity.WARNING,
                AlertKind.LOSS_STUCK,
                f"Loss level {fmt(level)} has stayed at least {fmt(self.ratio)}x its healthy "
                f"median {fmt(typical)} for {self.high_for} steps: the run is not on track.",
                level,
            )
        return alerts

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as plain values."""
        return {
            "seen": self.seen,
            "healthy": list(self.healthy),
            "recent": list(self.recent),
            "peak": self.peak,
            "high_for": self.high_for,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.seen = int(state["seen"])
        self.healthy = [float(v) for v in state["healthy"]]
        self.recent = [float(v) for v in state["recent"]]
        self.peak = float(state["peak"])
        self.high_for = int(state["high_for"])
