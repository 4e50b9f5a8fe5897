"""A window of recent values scored by median and MAD: the robust baseline of the spike rules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from gradguard._ring import MAD_TO_STD, Ring, median
from gradguard.records import Severity

__all__ = ["MEANAD_TO_STD", "JumpRule", "RobustWindow", "jump_severity"]

MEANAD_TO_STD = 1.2533
"""Mean absolute deviation to standard deviation for normal data (``sqrt(pi / 2)``)."""


class RobustWindow:
    """Recent finite values and a robust z-score of a new value against them.

    The centre is the median of the window and the spread ``1.4826 * MAD``, floored at
    ``min_spread`` so a perfectly flat history does not make every wiggle infinitely surprising.
    Median and MAD ignore up to half the window being outliers, so a spike entering the window
    barely moves the baseline. When more than half the window holds one value (a loss that
    underflowed to exactly 0 on most batches) the MAD is 0 although the other values vary; the
    spread then falls back to ``1.2533 * mean absolute deviation`` from the median, so the
    batches that are not yet fitted set the scale instead of a zero.

    Args:
        capacity: how many recent values form the baseline.
        min_spread: smallest spread used in the z-score, in the units of the values.

    References:
        F. R. Hampel, "The influence curve and its role in robust estimation", JASA 69, 1974
        (the median absolute deviation as a robust scale); B. Iglewicz, D. C. Hoaglin, "How to
        Detect and Handle Outliers", ASQC 1993 (the mean absolute deviation when the MAD is 0).
    """

    __slots__ = ("min_spread", "ring")

    def __init__(self, capacity: int, min_spread: float) -> None:
        self.ring = Ring(capacity)
        self.min_spread = min_spread

    def __len__(self) -> int:
        return len(self.ring)

    def center_spread(self) -> tuple[float, float]:
        """Median and floored robust spread of the window (``nan`` centre when empty)."""
        values = self.ring.values()
        center = median(values)
        if math.isnan(center):
            return center, self.min_spread
        deviations = [abs(v - center) for v in values]
        spread = MAD_TO_STD * median(deviations)
        if spread == 0.0:
            spread = MEANAD_TO_STD * sum(deviations) / len(deviations)
        return center, max(spread, self.min_spread)

    def add(self, value: float) -> bool:
        """Add ``value`` if it is finite; return whether it was stored."""
        return self.ring.append(value)

    def state_dict(self) -> dict[str, Any]:
        """The window's values."""
        return self.ring.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the window's values."""
        self.ring.load_state_dict(state)


class JumpRule(Protocol):
    """The settings shared by the robust jump detectors (gradient-norm and loss spikes)."""

    seen: int
    warmup: int
    z_threshold: float
    min_ratio: float
    critical_ratio: float
    warmup_ratio: float


def jump_severity(rule: JumpRule, *, z: float, ratio: float, history: int) -> Severity | None:
    """How severe a jump of robust z-score ``z`` and ``ratio`` to the median is, or ``None``.

    After the warm-up (and with at least 3 values of ``history``) a jump must pass both the
    z-score and the ratio bound; during the warm-up only a jump of ``warmup_ratio`` counts.
    From ``critical_ratio`` on it is critical.
    """
    if rule.seen > rule.warmup and history >= 3:
        hit = z >= rule.z_threshold and ratio >= rule.min_ratio
    else:
        hit = ratio >= rule.warmup_ratio
    if not hit:
        return None
    return Severity.CRITICAL if ratio >= rule.critical_ratio else Severity.WARNING
