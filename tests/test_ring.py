"""_ring: ring buffers, running moments and robust centres against numpy and hand values."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradguard._ring import EMA, Ring, RunningMoments, mad, median, quantile

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def test_ring_keeps_the_newest_values_and_refuses_nonfinite() -> None:
    ring = Ring(3)
    for value in [1.0, 2.0, math.nan, 3.0, math.inf, 4.0]:
        ring.append(value)
    assert ring.values() == [2.0, 3.0, 4.0]
    assert ring.full and len(ring) == ring.capacity == 3
    assert ring.last(2) == [3.0, 4.0] and ring.last(10) == [2.0, 3.0, 4.0] and ring.last(0) == []
    assert ring[-1] == 4.0 and list(ring) == [2.0, 3.0, 4.0]


def test_ring_memory_is_fixed_after_a_million_appends() -> None:
    ring = Ring(64)
    for i in range(1_000_000):
        ring.append(float(i))
    assert len(ring) == 64 and ring[0] == 999_936.0


def test_ring_state_round_trip_through_json() -> None:
    ring = Ring(4)
    for value in [5.0, 6.0, 7.0]:
        ring.append(value)
    copy = Ring(1)
    copy.load_state_dict(json.loads(json.dumps(ring.state_dict(), allow_nan=False)))
    assert copy.values() == [5.0, 6.0, 7.0] and copy.capacity == 4


def test_bad_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Ring(0)


def test_ema_matches_the_recurrence_by_hand() -> None:
    ema = EMA(0.5)
    for value in [2.0, math.nan, 4.0, 8.0]:
        ema.update(value)
    # mean: 2 -> 3 -> 5.5; var: 0 -> 0.5 * (0 + 2 * 1) = 1 -> 0.5 * (1 + 5 * 2.5) = 6.75
    assert ema.count == 3 and ema.mean == 5.5 and ema.var == 6.75
    copy = EMA(0.1)
    copy.load_state_dict(ema.state_dict())
    assert copy.state_dict() == ema.state_dict()


@given(st.lists(finite, min_size=1, max_size=50))
def test_running_moments_match_statistics(values: list[float]) -> None:
    moments = RunningMoments()
    for value in [*values, math.nan, -math.inf]:
        moments.update(value)
    assert moments.count == len(values)
    assert moments.mean == pytest.approx(statistics.fmean(values), rel=1e-9, abs=1e-6)
    assert moments.var == pytest.approx(statistics.pvariance(values), rel=1e-6, abs=1e-3)
    assert (moments.minimum, moments.maximum) == (min(values), max(values))
    copy = RunningMoments()
    copy.load_state_dict(json.loads(json.dumps(moments.state_dict(), allow_nan=False)))
    assert copy.state_dict() == moments.state_dict()


@given(st.lists(finite, min_size=1, max_size=60), st.floats(min_value=0.0, max_value=1.0))
def test_median_mad_quantile_match_numpy(values: list[float], q: float) -> None:
    array = np.asarray(values)
    assert median(values) == pytest.approx(float(np.median(array)), rel=1e-12, abs=1e-9)
    expected_mad = float(np.median(np.abs(array - np.median(array))))
    assert mad(values) == pytest.approx(expected_mad, rel=1e-12, abs=1e-9)
    assert quantile(values, q) == pytest.approx(float(np.quantile(array, q)), rel=1e-9, abs=1e-6)


def test_empty_statistics_are_nan() -> None:
    assert math.isnan(median([])) and math.isnan(mad([])) and math.isnan(quantile([], 0.5))
    with pytest.raises(ValueError, match="q"):
        quantile([1.0], 1.5)
