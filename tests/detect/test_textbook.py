"""The textbook rules at, below and above every bound, on hand-built traces."""

from __future__ import annotations

import math

import pytest

from gradguard.detect import TextbookDetector, ThresholdGrowthDetector
from tests.detect.trace import kinds, obs


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        (99.99, []),
        (100.0, []),
        (100.01, [("grad_norm_threshold", "warning")]),
        (1000.0, [("grad_norm_threshold", "warning")]),
        (1000.01, [("grad_norm_threshold", "critical")]),
    ],
)
def test_gradient_norm_bound(norm: float, expected: list[tuple[str, str]]) -> None:
    assert kinds(TextbookDetector().update(obs(0, norm))) == expected


def test_nan_norm_is_critical_without_a_bound_alert_and_inf_is_both() -> None:
    assert kinds(TextbookDetector().update(obs(0, math.nan))) == [("nonfinite_grad", "critical")]
    assert kinds(TextbookDetector().update(obs(0, math.inf))) == [
        ("nonfinite_grad", "critical"),
        ("grad_norm_threshold", "critical"),
    ]


@pytest.mark.parametrize(("last", "alerts"), [(4.9999, False), (5.0, False), (5.0001, True)])
def test_rate_of_change_mean_of_last_five_against_five_before(last: float, alerts: bool) -> None:
    detector = TextbookDetector()
    # Older mean 1.0; the recent five average to `last` (four at 5.0 and one chosen to hit it).
    norms = [1.0] * 5 + [5.0] * 4 + [5.0 * 5 - 4 * 5.0 + (last - 5.0) * 5]
    out = [detector.update(obs(i, n)) for i, n in enumerate(norms)]
    assert all(a == [] for a in out[:9])
    assert kinds(out[9]) == ([("growth_trend", "warning")] if alerts else [])
    if alerts:
        assert out[9][0].value == pytest.approx(last)


def test_rate_of_change_needs_ten_finite_norms_and_a_positive_older_mean() -> None:
    detector = TextbookDetector()
    norms = [1.0] * 4 + [math.nan, 1.0] + [50.0] * 4
    out = [detector.update(obs(i, n)) for i, n in enumerate(norms)]
    assert all(("growth_trend", "warning") not in kinds(a) for a in out)  # only 9 finite
    assert kinds(detector.update(obs(10, 50.0))) == [("growth_trend", "warning")]
    zeros = TextbookDetector()
    for i, n in enumerate([0.0] * 5 + [9.0] * 5):
        assert zeros.update(obs(i, n)) == []


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (math.nan, [("nonfinite_loss", "critical")]),
        (math.inf, [("nonfinite_loss", "critical")]),
        (-math.inf, [("nonfinite_loss", "critical")]),
        (1e6, []),
        (1e6 * (1 + 1e-9), [("loss_threshold", "critical")]),
    ],
)
def test_loss_nonfinite_and_bound(loss: float, expected: list[tuple[str, str]]) -> None:
    assert kinds(TextbookDetector().update(obs(0, 1.0, loss))) == expected


@pytest.mark.parametrize(("loss", "spike"), [(9.99, False), (10.0, False), (10.01, True)])
def test_loss_spike_against_mean_of_previous_five(loss: float, spike: bool) -> None:
    detector = TextbookDetector()
    for i, previous in enumerate([0.5, 1.5, 1.0, 0.75, 1.25]):  # mean exactly 1.0
        assert detector.update(obs(i, 1.0, previous)) == []
    assert kinds(detector.update(obs(5, 1.0, loss))) == (
        [("loss_spike", "warning")] if spike else []
    )


def test_loss_spike_needs_five_previous_finite_losses() -> None:
    detector = TextbookDetector()
    for i, loss in enumerate([1.0, 1.0, math.nan, 1.0, 1.0]):
        detector.update(obs(i, 1.0, loss))
    assert detector.update(obs(5, 1.0, 100.0)) == []  # only 4 finite before
    assert kinds(detector.update(obs(6, 1.0, 1e7))) == [
        ("loss_threshold", "critical"),
        ("loss_spike", "warning"),
    ]


def test_parameter_norms_are_tracked_every_step_and_never_alert() -> None:
    detector = TextbookDetector()
    assert detector.param_norm_every == 1
    for i, p in enumerate([1.0, 1e3, 1e9, math.nan]):
        assert detector.update(obs(i, 1.0, param_norm=p)) == []
    assert detector.param_norms.values() == [1.0, 1e3, 1e9]


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        (100.0, []),
        (100.0001, [("grad_norm_threshold", "warning")]),
        (math.nan, [("nonfinite_grad", "critical")]),
    ],
)
def test_threshold_growth_bound(norm: float, expected: list[tuple[str, str]]) -> None:
    assert kinds(ThresholdGrowthDetector().update(obs(0, norm))) == expected


@pytest.mark.parametrize(("last", "alerts"), [(49.99, False), (50.0, False), (50.0001, True)])
def test_threshold_growth_ratio_over_the_last_ten(last: float, alerts: bool) -> None:
    detector = ThresholdGrowthDetector()
    # 11 norms: the ratio compares the newest with norms[1] (the oldest of the last ten).
    norms = [0.001, 0.5, *([1.0] * 8), last]
    out = [detector.update(obs(i, n)) for i, n in enumerate(norms)]
    assert all(a == [] for a in out[:10])
    assert kinds(out[10]) == ([("growth_trend", "warning")] if alerts else [])


def test_threshold_growth_waits_for_more_than_ten_norms() -> None:
    detector = ThresholdGrowthDetector()
    norms = [0.001] * 9 + [99.0]  # 99000x growth, but only ten norms so far
    assert all(detector.update(obs(i, n)) == [] for i, n in enumerate(norms))
    assert kinds(detector.update(obs(10, 99.0))) == [("growth_trend", "warning")]
