"""The loss-spike rule once losses reach exactly zero: rounding is not a jump, a real one is."""

from __future__ import annotations

import pytest

from gradguard.detect import LossSpikeDetector
from gradguard.detect.loss import PEAK_FRACTION
from tests.detect.trace import kinds, obs


def _converged(detector: LossSpikeDetector) -> int:
    """Feed a run whose loss falls from 1.4 to exactly 0 (float32 underflow); return the step."""
    step = 0
    for value in [1.4 * 0.8**i for i in range(60)] + [0.0] * 60:
        assert detector.update(obs(step, 1.0, value)) == []
        step += 1
    return step


def test_a_converged_run_wiggling_near_zero_raises_nothing() -> None:
    detector = LossSpikeDetector()
    step = _converged(detector)
    assert not detector.log_space
    assert detector.peak == pytest.approx(1.4 * 0.8**29.5, rel=0.2)  # the median when it left
    for value in (1.9e-9, 9.3e-9, 0.0, 1e-6):
        assert detector.update(obs(step, 1.0, value)) == []
        step += 1


def test_a_real_jump_from_zero_is_still_a_spike() -> None:
    detector = LossSpikeDetector()
    step = _converged(detector)
    floor = PEAK_FRACTION * detector.peak
    assert kinds(detector.update(obs(step, 1.0, 50 * floor))) == [("loss_spike", "warning")]
    assert kinds(detector.update(obs(step + 1, 1.0, 5000 * floor))) == [("loss_spike", "critical")]


def test_the_scale_floor_survives_a_state_round_trip() -> None:
    detector = LossSpikeDetector()
    _converged(detector)
    copy = LossSpikeDetector()
    copy.load_state_dict(detector.state_dict())
    assert copy.peak == detector.peak and not copy.log_space
    assert copy.update(obs(500, 1.0, 9.3e-9)) == []
