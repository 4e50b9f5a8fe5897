"""suggest: the seeds' guidelines table, alerts, observations and analysis results."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gradguard.analysis import (
    bptt_profile,
    depth_profile,
    gradient_vs_cliff,
    recurrent_report,
)
from gradguard.errors import ConfigError
from gradguard.records import Alert, AlertKind, Observation, Severity
from gradguard.remedies import Advice, Remedy, Trigger, round_setting, suggest


def actions(advice: list[Advice]) -> list[Remedy]:
    return [a.action for a in advice]


def test_any_rnn_is_clipped_at_one() -> None:
    advice = suggest(nn.Sequential(nn.GRU(3, 4), nn.Linear(4, 1)))
    assert actions(advice) == [Remedy.CLIP_GRADIENTS]
    assert advice[0].param("max_norm") == 1.0 and advice[0].trigger == Trigger.RNN
    assert suggest(nn.Linear(3, 4)) == []


def test_deep_rnn_clips_at_half_and_wants_gates() -> None:
    advice = suggest(nn.RNN(3, 4, num_layers=3))
    clip = advice[0]
    assert clip.action == Remedy.CLIP_GRADIENTS and clip.param("max_norm") == 0.5
    assert "3 stacked recurrent layers" in clip.evidence and "recurrent (RNN_TANH)" in clip.evidence
    assert Remedy.USE_GATED_RNN in actions(advice)
    stacked = nn.ModuleList([nn.LSTM(3, 4, num_layers=2), nn.LSTMCell(4, 4)])
    assert actions(suggest(stacked)) == [Remedy.CLIP_GRADIENTS]  # deep but already gated


def test_long_sequences_get_truncated_bptt() -> None:
    advice = suggest(nn.LSTM(3, 4), seq_len=500)
    tbptt = next(a for a in advice if a.action == Remedy.TRUNCATED_BPTT)
    assert tbptt.param("k1") == 100 and "500 > 100" in tbptt.evidence
    assert Remedy.TRUNCATED_BPTT not in actions(suggest(nn.LSTM(3, 4), seq_len=100))


def test_nonfinite_loss_lowers_lr_checks_init_and_clips() -> None:
    obs = Observation(step=7, loss=math.nan, total_norm=math.inf, finite=False, top=(("w", 1.0),))
    advice = suggest(None, obs, lr=0.1)
    assert actions(advice)[:2] == [Remedy.LOWER_LEARNING_RATE, Remedy.STABLE_INIT]
    assert Remedy.CLIP_GRADIENTS in actions(advice)
    assert advice[0].priority == 0 and advice[0].param("lr") == pytest.approx(0.01)
    assert "loss nan at step 7" in advice[0].evidence
    healthy = Observation(step=1, loss=0.5, total_norm=1.0, finite=True)
    assert suggest(None, healthy) == []


def test_alerts_loss_spike_and_culprits() -> None:
    spike = Alert(7, Severity.WARNING, AlertKind.LOSS_SPIKE, "loss jumped 30x.", "spike")
    advice = suggest(nn.RNN(2, 3), [spike])
    clip = next(a for a in advice if a.action == Remedy.CLIP_GRADIENTS)
    assert clip.param("max_norm") == 0.5  # lowered from the RNN default 1.0
    assert Remedy.CHECK_DATA in actions(advice)
    norm = Alert(
        3,
        Severity.CRITICAL,
        AlertKind.GRAD_NORM_THRESHOLD,
        "norm 1e4 above 10.",
        culprits=("rnn.weight_hh_l0",),
        value=1e4,
        threshold=10.0,
    )
    advice = suggest(None, norm)
    assert Remedy.CONSTRAIN_RECURRENT in actions(advice)


def _explosive_rnn() -> nn.RNN:
    rnn = nn.RNN(2, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(1.5 * q)
    return rnn


def test_analysis_results_live_and_from_json() -> None:
    report = recurrent_report(_explosive_rnn(), seq_len=100)
    live = suggest(None, report)
    assert {Remedy.CONSTRAIN_RECURRENT, Remedy.STABLE_INIT, Remedy.CLIP_GRADIENTS} <= set(
        actions(live)
    )
    assert "rho=1.5 > critical 1.148" in live[0].evidence or any(
        "rho=1.5" in a.evidence for a in live
    )
    from_json = suggest(None, json.loads(json.dumps(report.to_dict())))
    assert [a.to_dict() for a in from_json] == [a.to_dict() for a in live]


def test_bptt_profile_growth_gives_a_window() -> None:
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    w = 1.3 * q

    def linear_rnn(x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = torch.zeros(8, dtype=torch.float64)
        states = []
        for x_t in x:
            h = w @ h + x_t
            states.append(h)
        return h, states

    x = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    profile = bptt_profile(linear_rnn, x, None, lambda o, _y: o.sum(), hidden="returned")
    assert profile.growth_factor == pytest.approx(1.3)
    advice = suggest(None, profile)
    tbptt = next(a for a in advice if a.action == Remedy.TRUNCATED_BPTT)
    assert tbptt.param("k1") == 17  # the gradient may grow 100x: 1.3^17 < 100 < 1.3^18
    assert Remedy.CLIP_GRADIENTS in actions(advice)


def test_cliff_check_and_depth_profile() -> None:
    class Theta(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.theta = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, _x: object) -> torch.Tensor:
            return self.theta

    def loss(theta: torch.Tensor, _y: object) -> torch.Tensor:
        return (theta - 2) ** 2 + 1000 * torch.sigmoid(200 * (theta - 1))

    check = gradient_vs_cliff(Theta(), loss, (None, None), lr=0.5)
    advice = suggest(None, check)
    clip = next(a for a in advice if a.action == Remedy.CLIP_GRADIENTS)
    assert clip.param("max_norm") == 1.9  # 1.92 measured, rounded down to two digits
    lower = next(a for a in advice if a.action == Remedy.LOWER_LEARNING_RATE)
    assert lower.param("lr") == 0.24
    chain = nn.Sequential(*[nn.Linear(1, 1, bias=False) for _ in range(5)])
    with torch.no_grad():
        for layer in chain:
            assert isinstance(layer, nn.Linear)
            layer.weight.fill_(2.0)
    depth = depth_profile(chain, torch.ones(1, 1), None, lambda o, _y: o.sum())
    assert {Remedy.STABLE_INIT, Remedy.ADD_NORMALIZATION} <= set(actions(suggest(None, depth)))


def test_merging_keeps_the_tightest_bound_and_all_evidence() -> None:
    spike = Alert(2, Severity.WARNING, AlertKind.LOSS_SPIKE, "loss spiked", "spike")
    advice = suggest(nn.RNN(2, 3, num_layers=4), [spike], seq_len=300)
    clips = [a for a in advice if a.action == Remedy.CLIP_GRADIENTS]
    assert len(clips) == 1 and clips[0].param("max_norm") == 0.5
    assert clips[0].evidence.count(";") >= 2
    assert advice == sorted(advice, key=lambda a: (a.priority, a.action.value))
    text = str(clips[0])
    assert text.startswith("[clip_gradients]") and "max_norm=0.5" in text
    assert json.loads(json.dumps([a.to_dict() for a in advice]))


def test_errors() -> None:
    with pytest.raises(ConfigError, match="needs a model"):
        suggest()
    with pytest.raises(ConfigError, match="'mystery'"):
        suggest(None, {"kind": "mystery"})
    with pytest.raises(ConfigError):
        suggest("model")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        suggest(None, 42)


def test_a_model_description_gives_the_structure_rules_without_the_model() -> None:
    described = suggest(None, {"kind": "model", "cell": "rnn", "num_layers": 3, "seq_len": 150})
    live = suggest(nn.RNN(3, 4, num_layers=3), seq_len=150)
    assert [(a.action, a.params) for a in described] == [(a.action, a.params) for a in live]
    assert described[0].evidence == "the model is recurrent (RNN_TANH); 3 stacked recurrent layers"
    assert described[1].evidence == "sequence length 150 > 100"
    assert described[2].evidence == "3 stacked recurrent layers, 1 of them plain RNNs"
    gated = suggest(None, {"kind": "model", "cell": "LSTM", "num_layers": 4})
    assert actions(gated) == [Remedy.CLIP_GRADIENTS]
    assert gated[0].param("max_norm") == 0.5
    unknown = suggest(None, {"kind": "model", "recurrent": True})
    assert actions(unknown) == [Remedy.CLIP_GRADIENTS]
    assert unknown[0].evidence == "the model is recurrent (cell type unknown)"
    assert suggest(None, {"kind": "model", "recurrent": False}) == []


@pytest.mark.parametrize(
    ("measured", "advised"),
    [(0.03742668283845565, 0.037), (1.92, 1.9), (0.1 * 0.01, 0.001), (250.0, 250.0), (7.0, 7.0)],
)
def test_settings_are_rounded_down_to_two_digits(measured: float, advised: float) -> None:
    assert round_setting(measured) == advised
    assert round_setting(measured) <= measured


def test_a_spike_bound_is_advised_rounded() -> None:
    spike = Alert(
        9, Severity.WARNING, AlertKind.GRAD_NORM_SPIKE, "spike", threshold=0.03742668283845565
    )
    (clip,) = suggest(None, [spike])
    assert clip.param("max_norm") == 0.037
    assert "at 0.037 " in clip.message


def test_initialisation_advice_follows_the_model_type() -> None:
    obs = Observation(step=3, loss=math.inf, total_norm=math.inf, finite=False)
    mlp = next(a for a in suggest(nn.Linear(2, 2), obs) if a.action == Remedy.STABLE_INIT)
    rnn = next(a for a in suggest(nn.GRU(2, 2), obs) if a.action == Remedy.STABLE_INIT)
    assert "recurrent" not in mlp.message and "Xavier" in mlp.message
    assert "recurrent weights orthogonal" in rnn.message
    named = next(a for a in suggest(None, obs, recurrent=False) if a.action == Remedy.STABLE_INIT)
    assert named.message == mlp.message


@given(st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_a_rounded_setting_is_close_below_and_short(value: float) -> None:
    rounded = round_setting(value)
    assert 0.9 * value <= rounded <= value * (1.0 + 1e-9)  # down, up to float noise
    assert float(f"{rounded:.2g}") == rounded  # two significant digits at most
