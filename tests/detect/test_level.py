"""The loss-level rules: warm-up jumps, a loss far above healthy, a level stuck above it."""

from __future__ import annotations

import math

import pytest

from gradguard.detect import LossLevelDetector, OscillationDetector
from gradguard.errors import ConfigError
from gradguard.records import AlertKind, Observation, Severity


def _obs(step: int, loss: float | None) -> Observation:
    return Observation(step=step, loss=loss, total_norm=1.0, finite=True)


def _kinds(detector: LossLevelDetector | OscillationDetector, step: int, loss: float) -> list:
    return [(a.kind, a.severity) for a in detector.update(_obs(step, loss))]


def test_a_hundredfold_jump_in_the_warm_up_is_critical_and_later_it_is_not() -> None:
    level = LossLevelDetector(warmup=8)
    assert _kinds(level, 0, 0.5) == []
    assert _kinds(level, 1, 49.0) == [(AlertKind.LOSS_HIGH, Severity.INFO)]  # 98x 0.5
    (jump, high) = level.update(_obs(2, 2480.0))  # 100.2x the median 0.5 of healthy losses
    assert (jump.kind, jump.severity) == (AlertKind.LOSS_JUMP, Severity.CRITICAL)
    assert jump.value == 2480.0 and jump.threshold == pytest.approx(5.0)
    assert high.kind is AlertKind.LOSS_HIGH
    for t in range(3, 8):
        level.update(_obs(t, 1.0))
    # After the warm-up the calibrated loss-spike detector judges single losses.
    assert _kinds(level, 8, 500.0) == [(AlertKind.LOSS_HIGH, Severity.INFO)]


def test_a_level_stuck_tenfold_above_healthy_warns_after_the_patience() -> None:
    level = LossLevelDetector(ratio=10.0, after=4, level=3)
    for t in range(20):
        assert level.update(_obs(t, 1.0)) == []
    # 12x for a while: the level (median of three) crosses at the second high loss.
    kinds = [[a.kind for a in level.update(_obs(t, 12.0))] for t in range(20, 26)]
    stuck = [AlertKind.LOSS_STUCK in k for k in kinds]
    assert stuck == [False, False, False, False, True, True]
    assert all(AlertKind.LOSS_HIGH in k for k in kinds)
    # The high losses never entered the healthy baseline.
    assert level.typical() == 1.0


def test_single_heavy_tailed_losses_never_make_the_level_stuck() -> None:
    level = LossLevelDetector(after=1)
    alerts = [a for t in range(200) for a in level.update(_obs(t, 30.0 if t % 7 == 0 else 1.0))]
    assert AlertKind.LOSS_STUCK not in {a.kind for a in alerts}


def test_ratios_to_a_loss_near_zero_use_the_floor_of_the_run_peak() -> None:
    # A loss that converged from 2.0 to 1e-14: a wobble to 1e-9 is not "1e5 times healthy".
    level = LossLevelDetector()
    for t in range(40):
        level.update(_obs(t, 2.0 * 0.5**t if t < 20 else 1e-14))
    assert level.peak == pytest.approx(2.0 * 0.5**2)  # median of the first five losses
    assert level.update(_obs(40, 1e-9)) == []
    assert level.typical() == pytest.approx(1e-3 * level.peak)


def test_missing_and_non_finite_losses_are_not_levels() -> None:
    level = LossLevelDetector()
    for loss in (None, math.nan, math.inf):
        assert level.update(_obs(0, loss)) == []
    assert level.state_dict()["healthy"] == [] and level.seen == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"ratio": 1.0}, "ratio"), ({"after": 0}, "after"), ({"jump": 1.0}, "jump")],
)
def test_bad_settings_are_refused_with_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LossLevelDetector(**kwargs)


def test_a_zigzag_alerts_with_its_first_step_and_a_narrow_one_does_not() -> None:
    zigzag = OscillationDetector(steps=4, ratio=2.0)
    out = [zigzag.update(_obs(t, 3.0 if t % 2 else 1.0)) for t in range(10, 14)]
    assert out[:3] == [[], [], []]
    (alert,) = out[3]
    assert (alert.kind, alert.severity, alert.since) == (
        AlertKind.OSCILLATION,
        Severity.INFO,
        10,
    )
    assert "1, 3, 1, 3" in alert.message
    narrow = OscillationDetector(steps=4, ratio=2.0)
    assert all(narrow.update(_obs(t, 1.5 if t % 2 else 1.0)) == [] for t in range(12))
    # A monotone descent, however steep, is no oscillation.
    steep = OscillationDetector(steps=4, ratio=2.0)
    assert all(steep.update(_obs(t, 10.0 * 0.1**t)) == [] for t in range(12))


def test_the_run_peak_survives_a_rollback_and_a_reset_but_not_a_resume() -> None:
    from torch import nn

    from gradguard import Monitor

    monitor = Monitor(nn.Linear(2, 1), detectors=[LossLevelDetector()])
    (level,) = monitor.detectors
    assert isinstance(level, LossLevelDetector)
    for t in range(10):
        level.update(_obs(t, 1.0))
    saved = monitor.detector_state()
    for t in range(10, 20):
        level.update(_obs(t, 50.0))  # the level climbed to 50 on the abandoned trajectory
    monitor.load_detector_state(saved, rollback=True)
    assert level.peak == 50.0 and level.seen == 10  # run-level memory kept, the rest restored
    monitor.reset_detectors()
    assert level.peak == 50.0 and level.seen == 0
    monitor.load_detector_state(saved)  # a resume restores everything
    assert level.peak == 1.0


def test_a_trend_whose_loss_grew_tenfold_since_its_onset_brings_a_drift_alert() -> None:
    from gradguard.detect import GrowthTrendDetector

    trend = GrowthTrendDetector()
    first_drift = None
    for t in range(101):
        norm = 1.0 if t < 12 else 1.05 ** (t - 12)  # growth from step 12, forecast < 2000 steps
        loss = 1.0 if t < 12 else 20 ** ((t - 12) / 88)  # creeping from 1 to 20
        out = trend.update(Observation(step=t, loss=loss, total_norm=norm, finite=True))
        drift = [a for a in out if a.kind is AlertKind.LOSS_DRIFT]
        if drift and first_drift is None:
            first_drift = drift[0]
        if t < 82:
            assert not drift  # the level is not yet ten times the onset's
    assert first_drift is not None and first_drift.step == 82
    assert (first_drift.since, first_drift.threshold) == (12, 1.0)
    assert first_drift.severity is Severity.INFO and first_drift.value == pytest.approx(10.12, 1e-3)
    assert "what it was at step 12" in first_drift.message
