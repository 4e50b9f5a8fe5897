"""Bounded-memory statistics for per-step streams: ring buffers, running moments, robust centres.

No torch here: these operate on host floats after the one transfer per step. Every class keeps a
fixed amount of memory however many values it sees, exposes ``state_dict()`` /
``load_state_dict()`` of plain JSON-safe values, and refuses non-finite values, so a NaN can never
poison a running statistic.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "EMA",
    "MAD_TO_STD",
    "Ring",
    "RunningMoments",
    "keep_last",
    "mad",
    "median",
    "quantile",
]

_T = TypeVar("_T")

MAD_TO_STD = 1.4826
"""Factor turning a median absolute deviation into a standard deviation for normal data."""


class Ring:
    """A first-in first-out buffer of at most ``capacity`` finite floats.

    Appending to a full ring drops the oldest value, so memory is fixed by construction.
    Non-finite values are refused (``append`` returns ``False``) and never stored.

    Args:
        capacity: the most values kept (>= 1).

    Raises:
        ValueError: ``capacity`` is not an integer >= 1 (callers validate user settings first).
    """

    __slots__ = ("_values",)

    def __init__(self, capacity: int) -> None:
        _require(isinstance(capacity, int) and capacity >= 1, "capacity", capacity)
        self._values: deque[float] = deque(maxlen=capacity)

    @property
    def capacity(self) -> int:
        """The most values the ring keeps."""
        maxlen = self._values.maxlen
        return 0 if maxlen is None else maxlen

    @property
    def full(self) -> bool:
        """Whether the ring holds ``capacity`` values."""
        return len(self._values) == self.capacity

    def append(self, value: float) -> bool:
        """Add ``value`` if it is finite; return whether it was stored."""
        if not math.isfinite(value):
            return False
        self._values.append(float(value))
        return True

    def values(self) -> list[float]:
        """The stored values, oldest first (a copy)."""
        return list(self._values)

    def last(self, n: int) -> list[float]:
        """The ``n`` most recent values, oldest first (fewer if the ring holds fewer)."""
        if n <= 0:
            return []
        size = len(self._values)
        return [self._values[i] for i in range(max(0, size - n), size)]

    def clear(self) -> None:
        """Forget every value."""
        self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[float]:
        return iter(self._values)

    def __getitem__(self, index: int) -> float:
        return self._values[index]

    def state_dict(self) -> dict[str, Any]:
        """Capacity and values, JSON-safe."""
        return {"capacity": self.capacity, "values": list(self._values)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` output; keeps the newest values that fit."""
        capacity = int(state["capacity"])
        _require(capacity >= 1, "capacity", capacity)
        self._values = deque(
            (float(v) for v in state["values"] if math.isfinite(float(v))), maxlen=capacity
        )


class EMA:
    """Exponentially weighted running mean and variance of a stream of finite floats.

    The first value initialises the mean (no zero bias); each later value ``x`` updates
    ``mean += alpha * (x - mean)`` and the variance with the incremental rule of Finch. Non-finite
    values are ignored.

    Args:
        alpha: weight of the newest value, in ``(0, 1]``; the memory is about ``1 / alpha`` values.

    References:
        T. Finch, "Incremental calculation of weighted mean and variance", University of
        Cambridge Computing Service, 2009.
    """

    __slots__ = ("alpha", "count", "mean", "var")

    def __init__(self, alpha: float) -> None:
        _require(0.0 < alpha <= 1.0, "alpha", alpha)
        self.alpha = float(alpha)
        self.count = 0
        self.mean = 0.0
        self.var = 0.0

    @property
    def std(self) -> float:
        """Square root of the running variance."""
        return math.sqrt(self.var)

    def update(self, value: float) -> bool:
        """Fold ``value`` into the statistics if it is finite; return whether it was used."""
        if not math.isfinite(value):
            return False
        if self.count == 0:
            self.mean, self.var = float(value), 0.0
        else:
            diff = value - self.mean
            increment = self.alpha * diff
            self.mean += increment
            self.var = (1.0 - self.alpha) * (self.var + diff * increment)
        self.count += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        """All fields, JSON-safe."""
        return {"alpha": self.alpha, "count": self.count, "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` output."""
        self.alpha = float(state["alpha"])
        _require(0.0 < self.alpha <= 1.0, "alpha", self.alpha)
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.var = float(state["var"])


class RunningMoments:
    """Exact running count, mean and variance of every finite value seen (Welford's method).

    References:
        B. P. Welford, "Note on a method for calculating corrected sums of squares and
        products", Technometrics 4(3), 1962.
    """

    __slots__ = ("_m2", "count", "maximum", "mean", "minimum")

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    @property
    def var(self) -> float:
        """Population variance (0 with fewer than two values)."""
        return self._m2 / self.count if self.count > 1 else 0.0

    def update(self, value: float) -> bool:
        """Fold ``value`` in if it is finite; return whether it was used."""
        if not math.isfinite(value):
            return False
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        return True

    def state_dict(self) -> dict[str, Any]:
        """All fields; an empty min/max is stored as ``None`` (JSON has no infinity)."""
        return {
            "count": self.count,
            "mean": self.mean,
            "m2": self._m2,
            "minimum": self.minimum if self.count else None,
            "maximum": self.maximum if self.count else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict` output."""
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self._m2 = float(state["m2"])
        self.minimum = math.inf if state["minimum"] is None else float(state["minimum"])
        self.maximum = -math.inf if state["maximum"] is None else float(state["maximum"])


def median(values: Iterable[float]) -> float:
    """Median of ``values`` (mean of the two middle ones for an even count); ``nan`` if empty."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return math.nan
    mid = n // 2
    return ordered[mid] if n % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def mad(values: Sequence[float], center: float | None = None) -> float:
    """Median absolute deviation of ``values`` from ``center`` (their median by default).

    Multiply by :data:`MAD_TO_STD` for a robust estimate of the standard deviation.
    """
    if not values:
        return math.nan
    c = median(values) if center is None else center
    return median(abs(v - c) for v in values)


def quantile(values: Iterable[float], q: float) -> float:
    """The ``q``-quantile of ``values`` by linear interpolation (numpy's default); ``nan`` if empty.

    Raises:
        ValueError: ``q`` is outside ``[0, 1]``.
    """
    _require(0.0 <= q <= 1.0, "q", q)
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _require(ok: bool, name: str, value: object) -> None:
    # _ring sits below errors.py's users; settings are validated (with ConfigError) by callers.
    if not ok:
        raise ValueError(f"invalid {name}: {value!r}")


def keep_last(values: list[_T], value: _T, n: int) -> list[_T]:
    """A new list of the last ``n`` of ``values`` followed by ``value`` (``n`` >= 1).

    For the small windows kept as plain lists in state dicts (``xs[-(n - 1):]`` would keep every
    value when ``n`` is 1).
    """
    return [*values[max(len(values) - n + 1, 0) :], value]
