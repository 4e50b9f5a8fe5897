"""Each default detector family on traces whose answer is known by hand."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from gradguard.detect import (
    FLOAT32_MAX,
    CulpritDetector,
    GrowthTrendDetector,
    LossSpikeDetector,
    NonFiniteDetector,
    ParamNormGrowthDetector,
    SpikeDetector,
    ThresholdDetector,
    fit_log_linear,
    make,
    preset,
)
from gradguard.errors import ConfigError
from tests.detect.trace import kinds, obs


def _noisy(n: int, sigma: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [math.exp(rng.gauss(0.0, sigma)) for _ in range(n)]


def test_nonfinite_gradient_and_loss_are_critical_and_name_the_tensor() -> None:
    detector = NonFiniteDetector()
    alerts = detector.update(obs(3, math.nan, math.inf, top=(("a", math.nan), ("b", 1.0))))
    assert kinds(alerts) == [("nonfinite_grad", "critical"), ("nonfinite_loss", "critical")]
    assert alerts[0].culprits == ("a",) and "step 3" in alerts[0].message
    assert NonFiniteDetector(check_loss=False).update(obs(0, 1.0, math.nan)) == []
    assert detector.update(obs(4, 1e30, 1e30)) == []


def test_threshold_is_nan_safe_and_checks_the_loss_bound() -> None:
    detector = ThresholdDetector(10.0, max_loss=5.0)
    assert detector.update(obs(0, 10.0, 5.0)) == []
    assert kinds(detector.update(obs(0, 10.5, 5.5))) == [
        ("grad_norm_threshold", "warning"),
        ("loss_threshold", "critical"),
    ]
    assert kinds(detector.update(obs(0, 100.5))) == [("grad_norm_threshold", "critical")]
    assert kinds(detector.update(obs(0, math.nan))) == [("grad_norm_threshold", "critical")]
    with pytest.raises(ConfigError, match=r"max_norm must be .* got -1"):
        ThresholdDetector(-1)


def test_spike_needs_warmup_ratio_and_surprise() -> None:
    detector = SpikeDetector()
    norms = [1.0] * 60
    norms[10] = 100.0  # inside the 20-step warm-up: silent
    norms[30] = 4.0  # 4x: below min_ratio, however surprising
    norms[40] = 9.0  # 9x and far outside the spread: warning (one unclipped 9x SGD step is
    # what cost a runaway-loss RNN of the generated family a third of its final loss)
    norms[50] = 2000.0  # 2000x: critical
    alerts = {i: detector.update(obs(i, n)) for i, n in enumerate(norms)}
    raised = {i: kinds(a) for i, a in alerts.items() if a}
    assert raised == {40: [("grad_norm_spike", "warning")], 50: [("grad_norm_spike", "critical")]}
    assert alerts[40][0].threshold == pytest.approx(5.0)


def test_spike_and_loss_spike_warm_up_alert_only_on_huge_jumps() -> None:
    spike, loss = SpikeDetector(), LossSpikeDetector()
    norms = [1.0, 2.0, 999.0, 3000.0]  # vs medians 1, 1.5, 2: only the last is >= 1000x
    assert [bool(spike.update(obs(i, n))) for i, n in enumerate(norms)] == [0, 0, 0, 1]
    losses = [2.0, 3.0, 240.0, 400.0]  # 240 is 96x the median 2.5; 400 is 133x the median 3
    assert [bool(loss.update(obs(i, 1.0, v))) for i, v in enumerate(losses)] == [0, 0, 0, 1]


def test_spike_is_silent_on_noisy_norms_with_natural_five_fold_bumps() -> None:
    detector = SpikeDetector()
    norms = _noisy(2000, sigma=0.6, seed=1)
    assert max(norms) / sorted(norms)[1000] > 5.0
    assert all(detector.update(obs(i, n)) == [] for i, n in enumerate(norms))


def test_spike_keeps_nonfinite_norms_out_of_its_window() -> None:
    detector = SpikeDetector()
    for i, n in enumerate([1.0, math.nan, math.inf, 2.0, 0.0]):
        detector.update(obs(i, n))
    assert detector.baseline.ring.values() == [0.0, math.log(2.0)]


def test_log_linear_fit_is_exact_on_a_line() -> None:
    fit = fit_log_linear([0.0, 1.0, 2.0, 3.0], [1.0, 1.5, 2.0, 2.5])
    assert (fit.slope, fit.level, fit.r2) == (0.5, 2.5, 1.0)
    assert fit.steps_to(math.exp(4.0)) == 3.0
    assert fit_log_linear([0.0, 1.0], [1.0, 0.0]).steps_to(10.0) == math.inf


def test_trend_forecasts_steps_to_float32_overflow() -> None:
    detector = GrowthTrendDetector()
    first = None
    for t in range(40):
        alerts = detector.update(obs(t, 1.25**t))
        if alerts and first is None:
            first = (t, alerts[0])
    assert first is not None
    step, alert = first
    # Window full at step 23 (24 points), then 3 rising steps in a row: first alert at 25.
    assert step == 25 and (alert.kind.value, alert.severity.value) == ("growth_trend", "warning")
    expected = math.log(FLOAT32_MAX) / math.log(1.25) - 25
    assert alert.steps_to_overflow == pytest.approx(expected, rel=1e-9)
    assert alert.value == pytest.approx(math.log(1.25))


def test_trend_is_critical_near_a_user_limit_and_silent_on_slow_or_noisy_growth() -> None:
    near = GrowthTrendDetector(limit=1000.0)
    alerts = [near.update(obs(t, 1.1**t)) for t in range(26)]
    assert kinds(alerts[25]) == [("growth_trend", "critical")]
    assert alerts[25][0].steps_to_overflow == pytest.approx(math.log(1000) / math.log(1.1) - 25)
    slow = GrowthTrendDetector()
    assert all(slow.update(obs(t, 1.01**t)) == [] for t in range(300))
    noisy = GrowthTrendDetector()
    norms = _noisy(2000, sigma=0.6, seed=2)
    assert all(noisy.update(obs(t, n)) == [] for t, n in enumerate(norms))


def test_loss_spike_in_log_space_and_after_a_negative_loss() -> None:
    detector = LossSpikeDetector()
    losses = [2.0] * 40
    losses[25] = 19.0  # 9.5x: below min_ratio
    losses[30] = 25.0  # 12.5x: warning
    raised = {i: kinds(a) for i, v in enumerate(losses) if (a := detector.update(obs(i, 1.0, v)))}
    assert raised == {30: [("loss_spike", "warning")]}
    signed = LossSpikeDetector()
    values = [(-1.0) ** i for i in range(40)] + [40.0]  # median ~0: z-score and |median| floor
    out = [signed.update(obs(i, 1.0, v)) for i, v in enumerate(values)]
    assert not signed.log_space and kinds(out[-1]) == [("loss_spike", "warning")]
    assert all(a == [] for a in out[:-1])


def test_param_growth_compares_with_five_measurements_ago_after_warmup() -> None:
    detector = ParamNormGrowthDetector()
    raised = {}
    for step in range(200):
        # x4 during the warm-up (small-init growth, ignored), flat, then x1.5 per 10 steps.
        early = 2.5 + 7.5 * min(step, 40) / 40
        weights = early * 1.5 ** max(0, step // 10 - 10) if step % 10 == 0 else None
        if alerts := detector.update(obs(step, 1.0, param_norm=weights)):
            raised[step] = alerts
    # Kept from step 50 on; 1.5^4 = 5.06 >= 4 first at step 140 (oldest kept then: step 90).
    assert min(raised) == 140 and raised[140][0].value == pytest.approx(1.5**4)
    assert kinds(detector.update(obs(200, 1.0, param_norm=math.nan))) == [
        ("param_norm_growth", "critical")
    ]


def test_culprit_names_the_small_tensor_that_blew_up_and_since_when() -> None:
    detector = CulpritDetector()
    raised = {}
    for step in range(80):
        rnn = 0.1 * (50.0 if 40 <= step < 60 else 1.0)
        emb = 5.0
        pairs = (("emb", emb), ("rnn", rnn))
        top = tuple(sorted(pairs, key=lambda p: -p[1]))
        full = pairs if step % 10 == 0 else None
        if alerts := detector.update(obs(step, 5.5, top=top, tensor_norms=full)):
            raised[step] = alerts
    assert list(raised) == [40]  # one info alert when the episode starts
    alert = raised[40][0]
    assert (alert.kind.value, alert.severity.value) == ("culprit", "info")
    assert alert.culprits == ("rnn",) and alert.value == pytest.approx(50.0)
    assert detector.ranking() == [("rnn", pytest.approx(50.0))]
    assert detector.active == {}  # released once it calmed down


def test_culprit_baselines_are_each_tensors_moving_average_of_its_log_norm() -> None:
    detector = CulpritDetector(warmup=0, alpha=0.5, max_tensors=3)
    # 0 and inf give no baseline; a, d and e fill the three places, in order.
    full = (("a", 4.0), ("b", 0.0), ("c", math.inf), ("d", 1.0), ("e", 2.0))
    assert detector.update(obs(0, 5.0, tensor_norms=full)) == []
    assert detector.baselines == {"a": math.log(4.0), "d": 0.0, "e": math.log(2.0)}
    # a is 4x its baseline (below 10x): no alert, its average moves half way; f finds no room.
    assert detector.update(obs(1, 16.0, tensor_norms=(("a", 16.0), ("f", 3.0)))) == []
    a = math.log(4.0) + 0.5 * (math.log(16.0) - math.log(4.0))
    assert detector.baselines == {"a": a, "d": 0.0, "e": math.log(2.0)}
    # d at 20x and a NaN in e start episodes (largest first); their baselines stay frozen.
    (alert,) = detector.update(
        obs(2, 20.0, tensor_norms=(("a", 8.0), ("d", 20.0), ("e", math.nan)))
    )
    assert alert.culprits == ("e", "d") and alert.value == math.inf
    assert detector.active == {"d": (2, math.exp(math.log(20.0))), "e": (2, math.inf)}
    assert detector.baselines == {"a": a + 0.5 * (math.log(8.0) - a), "d": 0.0, "e": math.log(2.0)}
    # Back under 3x, d's episode ends and its baseline moves again; e, not measured, ends too.
    assert detector.update(obs(3, 2.5, tensor_norms=(("d", 2.5),))) == []
    assert detector.active == {} and detector.baselines["d"] == 0.5 * math.log(2.5)


class _CulpritTwin(CulpritDetector):
    """The detector as it was: one ``_ratio`` (a log and an exp) and one more log per tensor."""

    def _ratios_that_matter(self, full: Any) -> dict[str, float]:
        pairs = zip(full.names, full.values.tolist(), strict=True)
        return {name: r for name, value in pairs if (r := self._ratio(name, value)) is not None}

    def _refresh(self, full: Any) -> None:
        for name, value in zip(full.names, full.values.tolist(), strict=True):
            if name in self.active or not (math.isfinite(value) and value > 0.0):
                continue
            log_value = math.log(value)
            old = self.baselines.get(name)
            if old is None:
                if len(self.baselines) < self.max_tensors:
                    self.baselines[name] = log_value
            else:
                self.baselines[name] = old + self.alpha * (log_value - old)


def test_culprit_gives_exactly_what_its_per_tensor_twin_gives() -> None:
    rng = random.Random(3)
    scale = {f"t{i}": math.exp(rng.uniform(-6.0, 3.0)) for i in range(60)}
    fast, twin = CulpritDetector(max_tensors=50, warmup=5), _CulpritTwin(max_tensors=50, warmup=5)
    for step in range(400):
        live = list(scale)[: 40 + step // 20]  # tensors keep appearing, past max_tensors
        norms = {name: scale[name] * rng.uniform(0.5, 2.0) for name in live}
        for name in rng.sample(live, 3):  # spikes of every size, and dead or broken tensors
            norms[name] *= rng.choice([5.0, 9.99, 10.0, 10.01, 50.0, 1e6, 0.0, math.inf, math.nan])
        pairs = tuple(norms.items())
        ranked = sorted(pairs, key=lambda p: -math.inf if math.isnan(p[1]) else -p[1])
        top = tuple(ranked[:5])  # NaN first, as torch.topk ranks it
        full = pairs if step % 3 == 0 else None
        observed = obs(step, 1.0, top=top, tensor_norms=full)
        assert fast.update(observed) == twin.update(observed)
        assert fast.state_dict() == twin.state_dict()
    assert fast.ranking() == twin.ranking() and len(fast.worst) > 5


def test_presets_and_registry_reject_unknown_names() -> None:
    assert [d.name for d in preset("textbook")] == ["textbook"]
    assert {d.name for d in preset("default")} <= {d.name for d in preset("strict")}
    with pytest.raises(ConfigError, match=r"preset must be one of .* got 'loud'"):
        preset("loud")
    with pytest.raises(ConfigError, match="got 'nope'"):
        make("nope")
    with pytest.raises(ConfigError, match="min_ratio"):
        SpikeDetector(min_ratio=1.0)


def test_a_trend_alert_dates_the_growth_from_the_low_point_of_the_norm() -> None:
    # Flat (with a dip to 0.5 around step 60) until step 150, then x1.25 per step. The alert
    # dates the growth from the last low point of the smoothed norm: at or before the true
    # onset (here the dip, conservatively), never inside the growth.
    detector = GrowthTrendDetector()
    first = None
    for step in range(400):
        norm = 0.5 if 55 <= step < 65 else 1.0
        if step >= 150:
            norm = 1.25 ** (step - 150)
        alerts = detector.update(obs(step, norm))
        if alerts and first is None:
            first = alerts[0]
    assert first is not None and first.kind.value == "growth_trend"
    assert 150 < first.step < 200
    assert first.since is not None and 55 <= first.since <= 150
    no_dip = GrowthTrendDetector()
    onsets = [
        a.since for step in range(400) for a in no_dip.update(obs(step, 1.25 ** max(0, step - 150)))
    ]
    assert onsets and onsets[0] is not None and 140 <= onsets[0] <= 152
    saved = detector.state_dict()
    copy = GrowthTrendDetector()
    copy.load_state_dict(saved)
    assert copy.state_dict() == saved and copy.low_step == detector.low_step
