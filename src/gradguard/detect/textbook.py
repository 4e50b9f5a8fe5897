"""The rules textbooks teach, reproduced exactly: a baseline to compare with, and a preset.

Two rule sets from the reference texts (``shared/seeds``), rewritten on Observations:

* :class:`TextbookDetector`: the five-strategy monitor (gradient norm bound, loss checks,
  parameter-norm tracking, NaN/Inf detection, rate of change).
* :class:`ThresholdGrowthDetector`: a norm bound plus "the norm grew 100x over the last 10
  measurements".

Their thresholds and windows are the textbooks'. Deliberate differences, all NaN-safety: a
non-finite gradient norm raises one critical alert naming the non-finite tensors (the textbook
raises one per tensor), and non-finite values never enter a history.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradguard._ring import Ring
from gradguard.detect.base import check_int, check_ratio, culprit_names, fmt, nonfinite_names
from gradguard.errors import check_positive
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["TextbookDetector", "ThresholdGrowthDetector"]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


class TextbookDetector:
    """The textbook five-strategy explosion monitor, one rule per strategy.

    Rules, checked in this order every optimizer step:

    1. NaN/Inf in the gradients: critical.
    2. Gradient norm above ``max_grad_norm``: warning, critical above ten times it.
    3. Rate of change: once 10 finite norms are known, the mean of the last 5 more than
       ``acceleration_factor`` times the mean of the 5 before it (and that mean > 0): warning.
    4. Loss NaN or Inf: critical. Otherwise loss above ``max_loss``: critical; loss above
       ``loss_spike_factor`` times the mean of the previous 5 losses: warning.
    5. Parameter norm: recorded every step for the summary, never alerted on.

    Args:
        max_grad_norm: bound on the global gradient norm.
        max_loss: bound on the loss.
        loss_spike_factor: loss / mean-of-previous-5 ratio that is a spike.
        acceleration_factor: ratio of the last 5 norms' mean to the 5 before that is alarming.
        history_size: length of the loss, norm and parameter-norm histories.
    """

    name = "textbook"
    param_norm_every = 1

    def __init__(
        self,
        *,
        max_grad_norm: float = 100.0,
        max_loss: float = 1e6,
        loss_spike_factor: float = 10.0,
        acceleration_factor: float = 5.0,
        history_size: int = 100,
    ) -> None:
        self.max_grad_norm = check_positive("max_grad_norm", max_grad_norm)
        self.max_loss = check_positive("max_loss", max_loss)
        self.loss_spike_factor = check_ratio("loss_spike_factor", loss_spike_factor)
        self.acceleration_factor = check_ratio("acceleration_factor", acceleration_factor)
        size = check_int("history_size", history_size, minimum=10)
        self.losses = Ring(size)
        self.norms = Ring(size)
        self.param_norms = Ring(size)

    def update(self, obs: Observation) -> list[Alert]:
        """Apply the five rules to this step."""
        alerts = self._gradient_rules(obs)
        if obs.loss is not None:
            alerts += self._loss_rules(obs, obs.loss)
        if obs.param_norm is not None:
            self.param_norms.append(obs.param_norm)
        return alerts

    def _gradient_rules(self, obs: Observation) -> list[Alert]:
        alerts: list[Alert] = []
        norm = obs.total_norm
        finite = obs.finite and math.isfinite(norm)
        culprits = culprit_names(obs)
        if not finite:
            bad = nonfinite_names(obs) or culprits
            alerts.append(
                self._alert(
                    obs,
                    Severity.CRITICAL,
                    AlertKind.NONFINITE_GRAD,
                    f"Gradient norm is {fmt(norm)} at step {obs.step} ({', '.join(bad) or '?'}): "
                    "applied, this step would write NaN/Inf into the weights.",
                    bad,
                    norm,
                    None,
                )
            )
        if norm > self.max_grad_norm:  # NaN compares False here, as in the textbook.
            critical = norm > 10.0 * self.max_grad_norm
            alerts.append(
                self._alert(
                    obs,
                    Severity.CRITICAL if critical else Severity.WARNING,
                    AlertKind.GRAD_NORM_THRESHOLD,
                    f"Gradient norm {fmt(norm)} exceeds {fmt(self.max_grad_norm)} at step "
                    f"{obs.step}.",
                    culprits,
                    norm,
                    self.max_grad_norm,
                )
            )
        if finite:
            self.norms.append(norm)
            if len(self.norms) >= 10:
                last10 = self.norms.last(10)
                older, recent = _mean(last10[:5]), _mean(last10[5:])
                if older > 0 and recent / older > self.acceleration_factor:
                    alerts.append(
                        self._alert(
                            obs,
                            Severity.WARNING,
                            AlertKind.GROWTH_TREND,
                            f"Gradient norms are rising fast: mean {fmt(older)} -> {fmt(recent)} "
                            f"over the last 10 steps at step {obs.step}.",
                            culprits,
                            recent / older,
                            self.acceleration_factor,
                        )
                    )
        return alerts

    def _loss_rules(self, obs: Observation, loss: float) -> list[Alert]:
        if not math.isfinite(loss):
            return [
                self._alert(
                    obs,
                    Severity.CRITICAL,
                    AlertKind.NONFINITE_LOSS,
                    f"Loss is {fmt(loss)} at step {obs.step}: training has diverged.",
                    culprit_names(obs),
                    loss,
                    None,
                )
            ]
        alerts: list[Alert] = []
        if loss > self.max_loss:
            alerts.append(
                self._alert(
                    obs,
                    Severity.CRITICAL,
                    AlertKind.LOSS_THRESHOLD,
                    f"Loss {fmt(loss)} exceeds {fmt(self.max_loss)} at step {obs.step}.",
                    culprit_names(obs),
                    loss,
                    self.max_loss,
                )
            )
        if len(self.losses) >= 5:
            average = _mean(self.losses.last(5))
            if loss > self.loss_spike_factor * average:
                alerts.append(
                    self._alert(
                        obs,
                        Severity.WARNING,
                        AlertKind.LOSS_SPIKE,
                        f"Loss jumped to {fmt(loss)} from a recent mean of {fmt(average)} at "
                        f"step {obs.step}: check this batch.",
                        culprit_names(obs),
                        loss / average if average else math.inf,
                        self.loss_spike_factor,
                    )
                )
        self.losses.append(loss)
        return alerts

    def _alert(
        self,
        obs: Observation,
        severity: Severity,
        kind: AlertKind,
        message: str,
        culprits: tuple[str, ...],
        value: float | None,
        threshold: float | None,
    ) -> Alert:
        return Alert(
            step=obs.step,
            severity=severity,
            kind=kind,
            message=message,
            detector=self.name,
            culprits=culprits,
            value=value,
            threshold=threshold,
        )

    def state_dict(self) -> dict[str, Any]:
        """The loss, norm and parameter-norm histories."""
        return {
            "losses": self.losses.state_dict(),
            "norms": self.norms.state_dict(),
            "param_norms": self.param_norms.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the histories."""
        self.losses.load_state_dict(state["losses"])
        self.norms.load_state_dict(state["norms"])
        self.param_norms.load_state_dict(state["param_norms"])


class ThresholdGrowthDetector:
    """The textbook explosion check: norm above a bound, or 100x growth over 10 measurements.

    Each finite norm is appended to a history. If the norm exceeds ``alert_threshold`` it is a
    warning. Otherwise, once more than ``window`` norms are known, the ratio of the newest norm
    to the oldest of the last ``window`` (plus ``1e-8``) above ``growth_factor`` is a warning.
    A non-finite norm is critical (the textbook's ``>`` would let NaN through).

    Args:
        alert_threshold: bound on the global gradient norm.
        growth_factor: growth ratio across the window that is alarming.
        window: number of recent norms the growth ratio spans.
    """

    name = "threshold_growth"

    def __init__(
        self,
        *,
        alert_threshold: float = 100.0,
        growth_factor: float = 100.0,
        window: int = 10,
    ) -> None:
        self.alert_threshold = check_positive("alert_threshold", alert_threshold)
        self.growth_factor = check_ratio("growth_factor", growth_factor)
        self.window = check_int("window", window, minimum=2)
        self.norms = Ring(self.window + 1)

    def update(self, obs: Observation) -> list[Alert]:
        """Apply the bound, then the growth rule, to this step's norm."""
        norm = obs.total_norm
        culprits = culprit_names(obs)
        if not (obs.finite and math.isfinite(norm)):
            bad = nonfinite_names(obs) or culprits
            return [
                Alert(
                    step=obs.step,
                    severity=Severity.CRITICAL,
                    kind=AlertKind.NONFINITE_GRAD,
                    message=(
                        f"Gradient norm is {fmt(norm)} at step {obs.step}: applied, this step "
                        "would write NaN/Inf into the weights."
                    ),
                    detector=self.name,
                    culprits=bad,
                    value=norm,
                )
            ]
        self.norms.append(norm)
        if norm > self.alert_threshold:
            return [
                Alert(
                    step=obs.step,
                    severity=Severity.WARNING,
                    kind=AlertKind.GRAD_NORM_THRESHOLD,
                    message=(
                        f"Gradient norm {fmt(norm)} exceeds {fmt(self.alert_threshold)} at step "
                        f"{obs.step}."
                    ),
                    detector=self.name,
                    culprits=culprits,
                    value=norm,
                    threshold=self.alert_threshold,
                )
            ]
        if len(self.norms) > self.window:
            recent = self.norms.last(self.window)
            growth = recent[-1] / (recent[0] + 1e-8)
            if growth > self.growth_factor:
                return [
                    Alert(
                        step=obs.step,
                        severity=Severity.WARNING,
                        kind=AlertKind.GROWTH_TREND,
                        message=(
                            f"Gradient norm grew {fmt(growth)}x over the last {self.window} "
                            f"steps (now {fmt(norm)}) at step {obs.step}."
                        ),
                        detector=self.name,
                        culprits=culprits,
                        value=growth,
                        threshold=self.growth_factor,
                    )
                ]
        return []

    def state_dict(self) -> dict[str, Any]:
        """The recent norms."""
        return {"norms": self.norms.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the recent norms."""
        self.norms.load_state_dict(state["norms"])
