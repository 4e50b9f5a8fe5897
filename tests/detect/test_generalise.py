"""The detection rules of issue 11: healthy rises stay quiet, slow explosions warn early, one
incident is reported once."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from gradguard.detect import GrowthTrendDetector, LossSpikeDetector, preset
from gradguard.detect.episode import IncidentLatch, reported
from gradguard.detect.robust import RobustWindow
from gradguard.policy import EscalationPolicy
from gradguard.records import (
    Alert,
    AlertKind,
    Observation,
    Severity,
    from_json_dict,
    to_json_dict,
)
from gradguard.scenarios import generate
from tests.detect.trace import kinds, obs


def _trend_alerts(norms: list[float], losses: list[float | None]) -> list[Alert]:
    detector = GrowthTrendDetector()
    out: list[Alert] = []
    for t, (norm, loss) in enumerate(zip(norms, losses, strict=True)):
        out += detector.update(obs(t, norm, loss))
    return out


def test_a_cnn_like_norm_doubling_every_ten_steps_warns_only_when_the_loss_is_not_falling() -> None:
    # 2x per 10 steps from 3: "overflow in ~1200 steps". Early in training the loss falls
    # several-fold meanwhile (healthy); an AdamW warm-up overshoot shows the same rise with the
    # loss up ~1.5x over the window (a warning, and backing off then is what saves the run).
    norms = [3.0 * 2.0 ** (t / 10) for t in range(60)]
    learning = [1.4 * 0.97**t for t in range(60)]
    assert _trend_alerts(norms, learning) == []  # type: ignore[arg-type]
    overshoot = _trend_alerts(norms, [0.6 * 1.018**t for t in range(60)])  # type: ignore[arg-type]
    assert overshoot and kinds(overshoot[:1]) == [("growth_trend", "warning")]
    forecast = overshoot[0].steps_to_overflow
    assert forecast is not None and 1000 < forecast < 1300
    assert overshoot[0].step == 25  # window full at 23, then three rising steps


def test_a_fast_norm_rise_is_healthy_while_the_loss_falls_and_a_warning_when_it_does_not() -> None:
    # 1.25x per step (forecast ~370 steps). With the loss falling 3% per step the growth buys
    # progress; with the loss flat or rising it is an explosion.
    norms = [1.25**t for t in range(40)]
    falling = [2.0 * 0.97**t for t in range(40)]
    assert _trend_alerts(norms, falling) == []  # type: ignore[arg-type]
    flat = _trend_alerts(norms, [2.0] * 40)  # type: ignore[arg-type]
    rising = _trend_alerts(norms, [2.0 * 1.1**t for t in range(40)])
    assert flat and rising and flat[0].step == rising[0].step == 25
    assert kinds(flat[:1]) == [("growth_trend", "warning")]


def test_geometric_growth_warns_fifteen_steps_before_the_norm_is_1e4_times_healthy() -> None:
    # Healthy noisy norms around 3 for 80 steps, then x1.25 per step with a rising loss: the
    # warning comes at least 15 steps before the norm is 1e4 times its healthy level (and
    # hundreds before float32 overflow).
    rng = random.Random(0)
    norms = [3.0 * math.exp(rng.gauss(0.0, 0.3)) for _ in range(80)]
    losses = [1.0 * math.exp(rng.gauss(0.0, 0.1)) for _ in range(80)]
    for k in range(1, 60):
        norms.append(3.0 * 1.25**k)
        losses.append(1.25 ** (2 * k))
    detectors = preset("default")
    first: int | None = None
    for t, (norm, loss) in enumerate(zip(norms, losses, strict=True)):
        alerts = [a for d in detectors for a in d.update(obs(t, norm, loss))]
        if first is None and any(a.severity is not Severity.INFO for a in alerts):
            first = t
    crossing = next(t for t, n in enumerate(norms) if n >= 3.0e4)
    assert first is not None and first > 80
    assert crossing - first >= 15, (first, crossing)


def test_a_loss_at_exactly_zero_with_unfitted_batches_is_not_spiking() -> None:
    # A classifier that fits most batches to a loss of exactly 0 (float32 underflow) but not
    # all: losses of 0.3-1.5 keep coming. They are the run's recent range, not jumps; a 1000x
    # corrupted batch still is one.
    rng = random.Random(1)
    losses = [1.4 * 0.95**t for t in range(40)]
    losses += [0.0 if rng.random() < 0.75 else rng.uniform(0.3, 1.5) for _ in range(60)]
    detector = LossSpikeDetector()
    alerts = [a for t, v in enumerate(losses) for a in detector.update(obs(t, 1.0, v))]
    assert not detector.log_space and alerts == []
    assert kinds(detector.update(obs(100, 1.0, 1000.0))) == [("loss_spike", "critical")]


def test_mad_falls_back_to_the_mean_absolute_deviation_when_most_values_tie() -> None:
    window = RobustWindow(8, 0.0)
    for v in (0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 4.0, 2.0):
        window.add(v)
    center, spread = window.center_spread()
    assert center == 0.0 and spread == pytest.approx(1.2533 * 8.0 / 8)


def _alert(step: int, severity: Severity, kind: AlertKind = AlertKind.GROWTH_TREND) -> Alert:
    return Alert(step=step, severity=severity, kind=kind, message=f"{kind.value} at {step}")


def test_one_incident_is_reported_once_and_the_policy_still_sees_every_alert() -> None:
    latch = IncidentLatch(quiet=20)
    shown: list[Alert] = []
    seen: list[Alert] = []
    for step in range(30, 60):  # a trend warning every step, a spike warning too at 40
        alerts = [_alert(step, Severity.WARNING)]
        if step == 40:
            alerts.append(_alert(step, Severity.WARNING, AlertKind.GRAD_NORM_SPIKE))
        marked = latch.mark(step, alerts)
        assert [(a.kind, a.severity) for a in marked] == [(a.kind, a.severity) for a in alerts]
        seen += marked
        shown += reported(marked)
    assert len(seen) == 31 and [a.step for a in shown] == [30]
    # Escalation to critical is news once; a new incident after 20 quiet steps is news again.
    critical = latch.mark(61, [_alert(61, Severity.CRITICAL, AlertKind.NONFINITE_GRAD)] * 2)
    assert [a.repeat for a in critical] == [False, True]
    assert reported(latch.mark(70, [_alert(70, Severity.CRITICAL)])) == []
    assert [a.step for a in reported(latch.mark(91, [_alert(91, Severity.WARNING)]))] == [91]
    info = Alert(step=92, severity=Severity.INFO, kind=AlertKind.CULPRIT, message="x")
    assert latch.mark(92, [info]) == [info]


def test_latch_state_round_trips_and_a_repeat_survives_json() -> None:
    latch = IncidentLatch()
    latch.mark(5, [_alert(5, Severity.WARNING)])
    copy = IncidentLatch()
    copy.load_state_dict(latch.state_dict())
    assert copy.state_dict() == latch.state_dict() == {"last_alarm": 5, "reported": "warning"}
    (repeat,) = copy.mark(6, [_alert(6, Severity.WARNING)])
    assert repeat.repeat and from_json_dict(Alert, to_json_dict(repeat)) == repeat


def test_runaway_runs_are_appended_to_each_half_without_touching_the_sampled_runs() -> None:
    specs = generate.generate()
    sampled = [s for s in specs if s.fault != "runaway"]
    runaway = [s for s in specs if s.fault == "runaway"]
    assert len(sampled) == 64 and len(runaway) == len(generate.GRADUAL) == 8
    assert generate.generate(gradual=False) == sampled  # the family as it was
    # Sampled ids keep their seeds 0-63 and halves; runaway runs take seeds 64-71, half each.
    assert [s.seed for s in sampled] == list(range(64))
    assert [s.split for s in sampled] == ["tune"] * 32 + ["validate"] * 32
    assert sorted(s.seed for s in runaway) == list(range(64, 72))
    assert [s.split for s in runaway].count("tune") == 4
    assert all(s.steps // 5 <= s.fault_step <= s.steps // 4 for s in runaway)
    spec = next(s for s in runaway if s.optimizer == "sgd")
    run = spec.build()
    clean = dataclasses.replace(spec, fault="none").build()
    k = 3
    with torch.no_grad():
        weighted = run.compute_loss(spec.fault_step + k)
        plain = clean.compute_loss(spec.fault_step + k)
        before = run.compute_loss(spec.fault_step - 1)
        before_clean = clean.compute_loss(spec.fault_step - 1)
    assert float(weighted) == pytest.approx(generate.RUNAWAY_RATE ** (k + 1) * float(plain))
    assert float(before) == pytest.approx(float(before_clean))


def test_a_policy_bound_from_healthy_norms_of_exactly_zero_falls_back_to_a_positive_one() -> None:
    # A classifier whose loss underflows to 0 has gradient norms of exactly 0; once the trend
    # warns, the policy clips to the healthy scale, which must not be 0 (the clipper rejects it).
    policy = EscalationPolicy()
    for t in range(40):
        policy.decide(_zero(t))
    decisions = [
        policy.decide(_zero(t, norm=3.0, loss=0.5), [_alert(t, Severity.WARNING)])
        for t in range(40, 44)
    ]
    assert [d.clip_bound for d in decisions] == [policy.config.fallback_bound] * 4
    assert all(d.apply for d in decisions)


def _zero(step: int, norm: float = 0.0, loss: float = 0.0) -> Observation:
    return Observation(
        step=step, loss=loss, total_norm=norm, finite=True, top=(("w", norm),), num_tensors=1
    )
