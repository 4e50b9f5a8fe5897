"""Absolute bounds: a gradient norm or a loss above a limit the user chose."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradguard.detect.base import check_ratio, culprit_names, fmt
from gradguard.errors import check_positive
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["ThresholdDetector"]


class ThresholdDetector:
    """Alert when the gradient norm (or the loss) exceeds a fixed bound.

    Comparisons are written ``not (value <= bound)`` so a NaN trips the alarm instead of slipping
    through. The norm rule gives a warning above ``max_norm`` and a critical alert above
    ``critical_factor * max_norm``.

    Args:
        max_norm: largest acceptable global gradient norm (> 0).
        critical_factor: how far above ``max_norm`` an alert becomes critical (> 1).
        max_loss: largest acceptable loss, or ``None`` to not check the loss.

    Raises:
        ConfigError: a bound is not a positive number.
    """

    name = "threshold"

    def __init__(
        self,
        max_norm: float = 100.0,
        *,
        critical_factor: float = 10.0,
        max_loss: float | None = None,
    ) -> None:
        fix = "Pick a bound a few times above the norms of a healthy run."
        self.max_norm = check_positive("max_norm", max_norm, fix=fix)
        self.critical_factor = check_ratio("critical_factor", critical_factor)
        self.max_loss = None if max_loss is None else check_positive("max_loss", max_loss)

    def update(self, obs: Observation) -> list[Alert]:
        """Compare this step's norm and loss with the bounds."""
        alerts: list[Alert] = []
        norm = obs.total_norm
        if not norm <= self.max_norm:
            critical = not norm <= self.critical_factor * self.max_norm
            alerts.append(
                Alert(
                    step=obs.step,
                    severity=Severity.CRITICAL if critical else Severity.WARNING,
                    kind=AlertKind.GRAD_NORM_THRESHOLD,
                    message=(
                        f"Gradient norm {fmt(norm)} exceeds the bound {fmt(self.max_norm)} at "
                        f"step {obs.step}."
                    ),
                    detector=self.name,
                    culprits=culprit_names(obs),
                    value=norm,
                    threshold=self.max_norm,
                )
            )
        if self.max_loss is not None and obs.loss is not None and not obs.loss <= self.max_loss:
            alerts.append(
                Alert(
                    step=obs.step,
                    severity=Severity.CRITICAL,
                    kind=AlertKind.LOSS_THRESHOLD,
                    message=(
                        f"Loss {fmt(obs.loss)} exceeds the bound {fmt(self.max_loss)} at step "
                        f"{obs.step}: the run is diverging."
                    ),
                    detector=self.name,
                    culprits=culprit_names(obs),
                    value=obs.loss,
                    threshold=self.max_loss,
                )
            )
        return alerts

    def state_dict(self) -> dict[str, Any]:
        """Stateless: an empty dict."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""
