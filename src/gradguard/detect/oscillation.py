"""A loss that zig-zags: the period-two signature of a step past the stability limit.

Gradient descent with a learning rate above 2 / (the sharpest curvature) bounces across a valley
instead of descending it: the loss goes up, down, up, down, each step a wide ratio from the one
before. Clipping bounds each step but cannot cure it; a smaller rate does. The alert is
information: the escalation ladder acts on it only while it is clipping the run's steps.

References:
    Cohen et al. (2021), Gradient descent on neural networks typically occurs at the edge of
    stability.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

from gradguard._ring import keep_last
from gradguard.detect.base import check_int, check_ratio, fmt
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["OscillationDetector"]


class OscillationDetector:
    """Info alert when the last ``steps`` losses alternate up and down, each ``ratio`` apart.

    Args:
        steps: losses in a row that must zig-zag (at least 3: two changes of direction).
        ratio: each loss must be at least this many times above or below the one before.
    """

    name = "oscillation"

    def __init__(self, *, steps: int = 8, ratio: float = 1.5) -> None:
        self.steps = check_int("steps", steps, minimum=3)
        self.ratio = check_ratio("ratio", ratio, fix="1.5 means each loss 1.5x from the last.")
        self.losses: list[float] = []  # the last ``steps`` finite losses, with their steps
        self.at: list[int] = []

    def update(self, obs: Observation) -> list[Alert]:
        """Add this step's loss; alert when the window zig-zags by a wide margin."""
        loss = obs.loss
        if loss is None or not math.isfinite(loss):
            return []
        self.losses = keep_last(self.losses, loss, self.steps)
        self.at = keep_last(self.at, obs.step, self.steps)
        recent = self.losses
        if len(recent) < self.steps or min(recent) <= 0.0:
            return []  # ratios of losses that can be zero or negative mean nothing
        diffs = [b - a for a, b in itertools.pairwise(recent)]
        if any(d * e >= 0.0 for d, e in itertools.pairwise(diffs)):
            return []
        if not all(max(a, b) >= self.ratio * min(a, b) for a, b in itertools.pairwise(recent)):
            return []
        shown = ", ".join(fmt(v) for v in recent)
        message = (
            f"Loss zig-zagging ({shown}) over {self.steps} steps: the step is past the "
            "stability limit; a lower learning rate cures it, clipping only bounds it."
        )
        return [
            Alert(
                obs.step,
                Severity.INFO,
                AlertKind.OSCILLATION,
                message,
                self.name,
                value=loss,
                since=self.at[0],
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as plain values."""
        return {"losses": list(self.losses), "at": list(self.at)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.losses = [float(v) for v in state["losses"]]
        self.at = [int(v) for v in state["at"]]
