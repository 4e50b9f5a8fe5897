"""explosion_table and critical_radius against the seeds' numbers and hand calculations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradguard.analysis import FLOAT32_MAX, critical_radius, explosion_table
from gradguard.errors import ConfigError

SEED_RADII = [0.99, 1.0, 1.01, 1.05, 1.1, 1.2, 1.5]


def test_rho_1_5_crosses_1e6_at_35_and_1e10_at_57() -> None:
    row = explosion_table([1.5], T_max=100).row(1.5)
    assert row.first_step(1e6) == 35
    assert row.first_step(1e10) == 57
    # 1.5^50 ≈ 6.4e8, and the exact crossings by hand: 1.5^34 < 1e6 < 1.5^35.
    assert f"{row.at_50:.1e}" == "6.4e+08"
    assert 1.5**34 < 1e6 < 1.5**35
    assert 1.5**56 < 1e10 < 1.5**57


def test_thresholds_not_reached_within_t_max_are_none_not_t_max() -> None:
    table = explosion_table(SEED_RADII, T_max=100)
    for radius in (0.99, 1.0):
        row = table.row(radius)
        assert all(c.step is None and c.eventually is None for c in row.crossings)
    r101 = table.row(1.01)
    assert [c.step for c in r101.crossings] == [None, None, None]
    # ln(1e6)/ln(1.01) = 1388.4 -> 1389; ln(1e10)/ln(1.01) = 2314.1 -> 2315.
    assert [c.eventually for c in r101.crossings][:2] == [1389, 2315]
    r12 = table.row(1.2)
    assert r12.first_step(1e6) == 76  # ln(1e6)/ln(1.2) = 75.8
    assert r12.first_step(1e10) is None and r12.crossings[1].eventually == 127
    overflow = table.row(1.5).crossings[-1]
    assert overflow.threshold == FLOAT32_MAX
    assert overflow.step is None and overflow.eventually == 219  # ln(3.40e38)/ln(1.5) = 218.8
    assert "not within T_max (at T=219)" in str(table)
    assert "never" in str(table)


def test_powers_at_50_and_100_and_curve() -> None:
    table = explosion_table(SEED_RADII, T_max=100)
    assert table.row(1.01).at_100 == pytest.approx(2.7048, rel=1e-4)
    assert table.row(0.99).at_100 == pytest.approx(0.3660, rel=1e-3)
    row = table.row(1.1)
    assert len(row.curve) == 101
    assert row.curve[0] == 1.0
    assert row.curve[100] == row.at_100 == 1.1**100


def test_seed_claim_about_rho_1_01_at_t_1000_is_checked_not_copied() -> None:
    # The seed says rho = 1.01 overflows at T = 1000; in fact 1.01^1000 ≈ 2.1e4, below 1e6, and
    # 1.01 lies below the critical radius 1.0139 for T = 1000.
    row = explosion_table([1.01], T_max=1000).row(1.01)
    assert row.curve[1000] == pytest.approx(20959.2, rel=1e-4)
    assert row.first_step(1e6) is None
    assert critical_radius(1000) > 1.01


def test_critical_radius_table() -> None:
    lengths = [10, 25, 50, 100, 200, 500, 1000]
    expected = [3.9811, 1.7378, 1.3183, 1.1482, 1.0715, 1.0280, 1.0139]
    assert [round(r, 4) for r in critical_radius(lengths)] == expected
    assert critical_radius(100, threshold=1e6) == pytest.approx(10 ** (6 / 100))


@given(
    radius=st.floats(min_value=1.001, max_value=50.0),
    threshold=st.floats(min_value=1.5, max_value=1e30),
)
def test_first_crossing_is_exact(radius: float, threshold: float) -> None:
    crossing = explosion_table([radius], T_max=10, thresholds=[threshold]).rows[0].crossings[0]
    step = crossing.eventually
    assert step is not None and step >= 1
    assert radius**step > threshold
    assert not radius ** (step - 1) > threshold
    assert crossing.step == (step if step <= 10 else None)


@given(length=st.integers(min_value=1, max_value=5000))
def test_critical_radius_is_the_boundary(length: int) -> None:
    radius = critical_radius(length, 1e6)
    assert radius**length == pytest.approx(1e6, rel=1e-9)
    assert (radius * 0.999) ** length < 1e6 < (radius * 1.001) ** length


@pytest.mark.parametrize(
    "call",
    [
        lambda: explosion_table([-1.0]),
        lambda: explosion_table([math.nan]),
        lambda: explosion_table([]),
        lambda: explosion_table([1.1], T_max=0),
        lambda: explosion_table([1.1], thresholds=[0.0]),
        lambda: critical_radius(0),
        lambda: critical_radius(10, threshold=-1.0),
        lambda: critical_radius(True),
    ],
)
def test_bad_arguments_raise_config_error(call: object) -> None:
    with pytest.raises(ConfigError):
        call()  # type: ignore[operator]


def test_error_messages_echo_the_value() -> None:
    with pytest.raises(ConfigError, match=r"-2\.0"):
        explosion_table([-2.0])
    with pytest.raises(ConfigError, match="'ten'"):
        critical_radius("ten")  # type: ignore[call-overload]
