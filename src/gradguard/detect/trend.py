"""Sustained exponential growth of the gradient norm, with a forecast of the steps left."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from gradguard._ring import Ring, keep_last
from gradguard.detect.base import LOSS_FLOOR, check_int, check_ratio, culprit_names, fmt
from gradguard.errors import check_positive
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["FLOAT32_MAX", "GrowthTrendDetector", "LogLinearFit", "fit_log_linear"]

FLOAT32_MAX = 3.4028234663852886e38
"""Largest finite float32: a gradient norm beyond it is ``inf``."""

ONSET_ALPHA = 0.1
"""Weight of a new step in the slow average of ``log(norm)`` whose low point dates a trend."""

ONSET_WINDOW = 8
"""Steps either side of a trend's onset whose losses give the loss level it began from."""

LEVEL = 5
"""Recent losses whose median is the loss level now."""

ONSET_HORIZON = 500
"""A trend's onset is looked for within this many steps back."""


class LogLinearFit:
    """Least-squares line through ``(step, log norm)`` points.

    Attributes:
        slope: growth of ``log(norm)`` per step (``exp(slope)`` is the growth factor per step).
        level: fitted ``log(norm)`` at the last step.
        r2: coefficient of determination of the fit, in ``[0, 1]``.
    """

    __slots__ = ("level", "r2", "slope")

    def __init__(self, slope: float, level: float, r2: float) -> None:
        self.slope = slope
        self.level = level
        self.r2 = r2

    def steps_to(self, limit: float) -> float:
        """Steps until the fitted line reaches ``log(limit)``; ``inf`` when it is not rising."""
        if not self.slope > 0.0:
            return math.inf
        return max(0.0, (math.log(limit) - self.level) / self.slope)


def fit_log_linear(steps: list[float], logs: list[float]) -> LogLinearFit:
    """Fit ``logs ≈ a + b * steps`` by ordinary least squares (needs two distinct steps)."""
    n = len(steps)
    mean_x = sum(steps) / n
    mean_y = sum(logs) / n
    sxx = sxy = syy = 0.0
    for x, y in zip(steps, logs, strict=True):
        dx, dy = x - mean_x, y - mean_y
        sxx += dx * dx
        sxy += dx * dy
        syy += dy * dy
    slope = sxy / sxx if sxx > 0.0 else 0.0
    r2 = (sxy * sxy) / (sxx * syy) if sxx > 0.0 and syy > 0.0 else 0.0
    return LogLinearFit(slope, mean_y + slope * (steps[-1] - mean_x), min(1.0, r2))


class GrowthTrendDetector:
    """Alert when the gradient norm grows exponentially and would reach its limit soon.

    Fits a line to ``log(norm)`` over the last ``window`` finite steps. The slope is the growth
    rate; extrapolating it gives ``steps_to_overflow``, the steps left before the norm reaches
    ``limit`` (float32 overflow by default). A step is *rising* when the slope is positive, the
    fit explains at least ``min_r2`` of the variance (a trend, not noise), the forecast is at
    most ``horizon`` steps, and the loss is not falling. The alert needs ``persistence`` rising
    steps in a row and comes after ``warmup`` optimizer steps; it is critical when the forecast
    is within ``critical_horizon``. With it comes a ``loss_drift`` information alert when the
    loss level (median of the last 5 losses) is ``drift_ratio`` times the level around the
    growth's onset (taken as at least :data:`~gradguard.detect.base.LOSS_FLOOR` of the run's
    highest level): a slow drift has already poisoned the recent baselines, the onset has not.

    A rising norm is healthy while the loss falls: a line fitted to ``log(loss)`` over the same
    steps that goes down says the growth buys progress (early training sharpens features, and a
    CNN's norm may double every ten steps, "overflow in 1000 steps", while its loss drops
    several-fold). An explosion makes the loss rise with the norm: an AdamW warm-up to a rate
    far too high shows the same 2x per 10 steps with the loss up 1.5x over the window, and
    backing off then is what saves it. Without losses (none given, or not positive) the norm
    alone decides.

    Args:
        window: finite steps in the fit.
        warmup: optimizer steps observed before the first alert can be raised.
        horizon: forecast (steps) at or below which the growth is alarming.
        critical_horizon: forecast at or below which the alert is critical.
        limit: the norm that counts as catastrophic; ``None`` for float32 overflow.
        min_r2: smallest coefficient of determination of the fit.
        persistence: consecutive rising steps needed.
        drift_ratio: loss level now over the level at the onset that is a ``loss_drift``.

    References:
        R. Pascanu, T. Mikolov, Y. Bengio, "On the difficulty of training recurrent neural
        networks", ICML 2013 (exponential growth of gradient norms).
    """

    name = "trend"

    def __init__(
        self,
        *,
        window: int = 24,
        warmup: int = 20,
        horizon: float = 2000.0,
        critical_horizon: float = 100.0,
        limit: float | None = None,
        min_r2: float = 0.6,
        persistence: int = 3,
        drift_ratio: float = 10.0,
    ) -> None:
        size = check_int("window", window, minimum=3, fix="Use 16-64 steps.")
        self.steps = Ring(size)
        self.logs = Ring(size)
        self.loss_steps = Ring(size)  # the same steps' log losses, where finite and positive
        self.loss_logs = Ring(size)
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.horizon = check_positive("horizon", horizon)
        self.critical_horizon = check_positive("critical_horizon", critical_horizon)
        self.limit = FLOAT32_MAX if limit is None else check_positive("limit", limit)
        self.min_r2 = float(min_r2)
        self.persistence = check_int("persistence", persistence, minimum=1)
        self.drift_ratio = check_ratio("drift_ratio", drift_ratio)
        self.onset_losses: list[float] = []  # losses within ONSET_WINDOW steps of ``low_step``
        self.recent: list[float] = []  # the last LEVEL positive finite losses
        self.peak = 0.0  # the highest level (median of ``recent``) of the run
        self.seen = 0
        self.streak = 0
        # Low-water mark of a slow average of log(norm): where the growth began (``since``).
        self.smooth: float | None = None
        self.low: float | None = None
        self.low_step = 0

    def update(self, obs: Observation) -> list[Alert]:
        """Add this step's norm to the fit and alert when the growth is sustained and fast."""
        self.seen += 1
        norm = obs.total_norm
        if not (obs.finite and math.isfinite(norm) and norm > 0.0):
            return []
        log_norm = math.log(norm)
        self.steps.append(float(obs.step))
        self.logs.append(log_norm)
        loss = obs.loss
        positive = loss is not None and math.isfinite(loss) and loss > 0.0
        if positive and loss is not None:
            self.loss_steps.append(float(obs.step))
            self.loss_logs.append(math.log(loss))
            self.recent = keep_last(self.recent, loss, LEVEL)
            if len(self.recent) == LEVEL:
                self.peak = max(self.peak, statistics.median(self.recent))
        self._track_onset(obs.step, log_norm)
        if positive and loss is not None and obs.step <= self.low_step + ONSET_WINDOW:
            self.onset_losses.append(loss)
        if self.seen <= self.warmup or not self.logs.full:
            return []
        fit = fit_log_linear(self.steps.values(), self.logs.values())
        forecast = fit.steps_to(self.limit)
        rising = (
            fit.slope > 0.0
            and fit.r2 >= self.min_r2
            and forecast <= self.horizon
            and not self._loss_falling(self.steps[0])
        )
        self.streak = self.streak + 1 if rising else 0
        if self.streak < self.persistence:
            return []
        per_10 = math.exp(min(10.0 * fit.slope, 700.0))
        limit = "float32 overflow" if self.limit == FLOAT32_MAX else f"the limit {fmt(self.limit)}"
        return [
            *self._drift(obs),
            Alert(
                step=obs.step,
                severity=(
                    Severity.CRITICAL if forecast <= self.critical_horizon else Severity.WARNING
                ),
                kind=AlertKind.GROWTH_TREND,
                message=(
                    f"Gradient norm has grown {fmt(per_10)}x per 10 steps for {self.streak} steps "
                    f"(now {fmt(norm)}); at this rate it reaches {limit} in about "
                    f"{forecast:.0f} steps."
                ),
                detector=self.name,
                culprits=culprit_names(obs),
                value=fit.slope,
                threshold=(math.log(self.limit) - fit.level) / self.horizon,
                steps_to_overflow=forecast,
                since=self.low_step,
            ),
        ]

    def _drift(self, obs: Observation) -> list[Alert]:
        """The ``loss_drift`` alert, when the loss level is ``drift_ratio`` times the onset's."""
        if not self.onset_losses or len(self.recent) < LEVEL:
            return []
        now = statistics.median(self.recent)
        then = max(statistics.median(self.onset_losses), LOSS_FLOOR * self.peak)
        if now < self.drift_ratio * then:
            return []
        message = (
            f"Loss level {fmt(now)}, {fmt(now / then)}x what it was at step {self.low_step} "
            "when the gradient norm began to grow."
        )
        return [
            Alert(
                obs.step,
                Severity.INFO,
                AlertKind.LOSS_DRIFT,
                message,
                self.name,
                value=now,
                threshold=then,
                since=self.low_step,
            )
        ]

    def _loss_falling(self, since: float) -> bool:
        """Whether a line fitted to the log losses since step ``since`` goes down."""
        pairs = [
            (x, y)
            for x, y in zip(self.loss_steps.values(), self.loss_logs.values(), strict=True)
            if x >= since
        ]
        if len(pairs) < 3:
            return False
        steps, logs = [x for x, _ in pairs], [y for _, y in pairs]
        return fit_log_linear(steps, logs).slope < 0.0

    def _track_onset(self, step: int, log_norm: float) -> None:
        """Follow the lowest point of a slow average of ``log(norm)``: the growth's onset.

        Bounded to the last ``ONSET_HORIZON`` steps, so a dip long ago is not taken as the start
        of a trend that began recently.
        """
        smooth = (
            log_norm
            if self.smooth is None
            else self.smooth + ONSET_ALPHA * (log_norm - self.smooth)
        )
        self.smooth = smooth
        if self.low is None or smooth <= self.low or step - self.low_step > ONSET_HORIZON:
            self.low, self.low_step = smooth, step
            # The onset's level: the losses from ONSET_WINDOW steps before it (still in the
            # fit's window) and, as they come, those up to ONSET_WINDOW steps after it.
            self.onset_losses = [
                math.exp(y)
                for x, y in zip(self.loss_steps.values(), self.loss_logs.values(), strict=True)
                if step - ONSET_WINDOW <= x < step
            ]

    def state_dict(self) -> dict[str, Any]:
        """Steps seen, the rising streak and the fitted window."""
        return {
            "seen": self.seen,
            "streak": self.streak,
            "steps": self.steps.state_dict(),
            "logs": self.logs.state_dict(),
            "loss_steps": self.loss_steps.state_dict(),
            "loss_logs": self.loss_logs.state_dict(),
            "smooth": self.smooth,
            "low": self.low,
            "low_step": self.low_step,
            "onset_losses": list(self.onset_losses),
            "recent": list(self.recent),
            "peak": self.peak,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.seen = int(state["seen"])
        self.streak = int(state["streak"])
        self.steps.load_state_dict(state["steps"])
        self.logs.load_state_dict(state["logs"])
        if "loss_logs" in state:
            self.loss_steps.load_state_dict(state["loss_steps"])
            self.loss_logs.load_state_dict(state["loss_logs"])
        else:  # saved before losses were kept: the loss check starts afresh
            self.loss_steps.clear()
            self.loss_logs.clear()
        smooth, low = state.get("smooth"), state.get("low")
        self.smooth = None if smooth is None else float(smooth)
        self.low = None if low is None else float(low)
        self.low_step = int(state.get("low_step", 0))
        self.onset_losses = [float(v) for v in state.get("onset_losses", [])]
        self.recent = [float(v) for v in state.get("recent", [])]
        self.peak = float(state.get("peak", 0.0))
