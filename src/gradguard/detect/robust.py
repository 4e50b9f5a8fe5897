"""A window of recent values scored by median and MAD: the robust baseline of the spike rules."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from gradguard._ring import MAD_TO_STD, Ring, median
from gradguard.records import Severity

__all__ = ["JumpRule", "RobustWindow", "jump_severity"]


class RobustWindow:
    """Recent finite values and a robust z-score of a new value against them.

    The centre is the median of the window and the spread ``1.4826 * MAD``, floored at
    ``min_spread`` so a perfectly flat history does not make every wiggle infinitely surprising.
    Median and MAD ignore up to half the window being outliers, so a spike entering the window
    barely moves the baseline.

    Args:
        capacity: how many recent values form the baseline.
        min_spread: smallest spread used in the z-score, in the units of the values.

    References:
        F. R. Hampel, "The influence curve and its role in robust estimation", JASA 69, 1974
        (the median absolute deviation as a robust scale).
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
        spread = MAD_TO_STD * median(abs(v - center) for v in values)
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
