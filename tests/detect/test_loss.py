"""The loss-spike rule once losses reach exactly zero: rounding is not a jump, a real one is."""

from __future__ import annotations

import pytest

from gradguard.detect import LossSpikeDetector
from gradguard.detect.base import LOSS_FLOOR
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
    assert detector.peak == pytest.approx(1.4)  # the highest median: where the run began
    for value in (1.9e-9, 9.3e-9, 0.0, 1e-6):
        assert detector.update(obs(step, 1.0, value)) == []
        step += 1


def test_a_real_jump_from_zero_is_still_a_spike() -> None:
    detector = LossSpikeDetector()
    step = _converged(detector)
    floor = LOSS_FLOOR * detector.peak
    assert kinds(detector.update(obs(step, 1.0, 50 * floor))) == [("loss_spike", "warning")]
    assert kinds(detector.update(obs(step + 1, 1.0, 5000 * floor))) == [("loss_spike", "critical")]


def test_the_scale_floor_survives_a_state_round_trip() -> None:
    detector = LossSpikeDetector()
    _converged(detector)
    copy = LossSpikeDetector()
    copy.load_state_dict(detector.state_dict())
    assert copy.peak == detector.peak and not copy.log_space
    assert copy.update(obs(500, 1.0, 9.3e-9)) == []


def test_a_loss_converged_to_float_noise_does_not_spike_on_its_wobbles() -> None:
    # repro_false_abort_near_zero_loss: an MLP memorising 56 samples reaches 1e-14, then
    # wobbles to 1e-9..1e-5 were "loss spikes" of 1e9x the median, and the guard aborted a run
    # that had no fault. The median counts as at least a thousandth of the run's highest level.
    detector = LossSpikeDetector()
    values = [1.0 * 0.7**i for i in range(90)] + [1e-14] * 60
    assert all(detector.update(obs(t, 1.0, v)) == [] for t, v in enumerate(values))
    for t, wobble in enumerate((1e-9, 4e-8, 1.6e-5, 2e-4), start=len(values)):
        assert detector.update(obs(t, 1.0, wobble)) == []
    # The wobbles widen the log-space spread (a converged loss's batches vary by orders of
    # magnitude), so a real jump must stand out of that too: 100x the run's start does.
    assert kinds(detector.update(obs(200, 1.0, 100.0))) == [("loss_spike", "critical")]
