"""summarize and advise on the synthetic run and on small hand-made logs."""

from __future__ import annotations

import math

import torch

from gradguard.analysis import recurrent_report
from gradguard.records import ActionKind, Alert, AlertKind, Reason, Severity, StepRecord
from gradguard.report import advise, model_facts, summarize
from tests.report.synthetic import METADATA, synthetic_records


def test_summary_of_the_synthetic_run() -> None:
    summary = summarize(synthetic_records())
    assert summary.steps == 60
    assert (summary.first_step, summary.last_step) == (0, 59)
    # Clipped: steps 25..35 (norm > 1 from step 25 on, until the NaN at 36).
    assert summary.actions == {
        ActionKind.CLIP: 11,
        ActionKind.SKIP: 1,
        ActionKind.ROLLBACK: 1,
        ActionKind.BACKOFF: 1,
    }
    assert summary.interventions == 14
    assert summary.applied_steps == 58
    assert summary.alerts_by_severity == {Severity.WARNING: 7, Severity.CRITICAL: 2}
    assert summary.alerts_by_kind == {
        "growth_trend": 6,
        "loss_spike": 1,
        "nonfinite_grad": 1,
        "nonfinite_loss": 1,
    }
    assert summary.first_warning is not None
    assert (summary.first_warning.step, summary.first_warning.kind) == (28, AlertKind.GROWTH_TREND)
    assert summary.first_nonfinite_step == 36
    assert summary.nonfinite_steps == 2
    assert summary.max_norm is not None
    assert summary.max_norm[0] == 35
    assert summary.max_norm[1] == 0.5 * 1.05**20 * 1.3**16
    assert summary.final_loss == 2.0 * 0.97**59
    assert summary.final_lr == 0.005
    assert summary.steps_lost == 7


def test_empty_summary() -> None:
    summary = summarize([])
    assert (summary.steps, summary.first_step, summary.max_norm, summary.final_loss) == (
        0,
        None,
        None,
        None,
    )


def test_model_facts_from_metadata_and_names() -> None:
    facts = model_facts(synthetic_records(), METADATA)
    assert facts.recurrent
    assert facts.cell == "RNN"
    assert facts.num_layers == 3
    assert facts.seq_len == 150
    assert set(facts.recurrent_names) == {f"rnn.weight_hh_l{i}" for i in range(3)}
    # Without metadata the layer count comes from the names weight_hh_l0..l2.
    assert model_facts(synthetic_records(), {}).num_layers == 3
    assert model_facts(synthetic_records(), {}).seq_len is None


def test_advice_on_the_synthetic_run() -> None:
    records = synthetic_records()
    advice = advise(records, METADATA)
    by_key = {a.key: a for a in advice}
    # The rules are gradguard.remedies.suggest's: one entry per remedy, critical first.
    assert list(by_key) == [
        "lower_learning_rate",
        "stable_init",
        "constrain_recurrent",
        "truncated_bptt",
        "check_data",
        "use_gated_rnn",
        "clip_gradients",
    ]
    assert [a.severity for a in advice[:2]] == [Severity.CRITICAL, Severity.CRITICAL]
    lower = by_key["lower_learning_rate"]
    assert "Lower the learning rate tenfold" in lower.action
    assert "lr=0.001" in lower.action  # a tenth of the learning rate at the first NaN
    assert "init_for_stability" in by_key["stable_init"].action
    assert lower.evidence[0].startswith("2 step(s) with a NaN/Inf loss or gradient norm")
    assert "first at step 36" in lower.evidence[0]
    last_finite = 0.5 * 1.05**20 * 1.3**16
    assert (
        lower.evidence[1] == f"Last finite gradient norm before it: {last_finite:.3g} at step 35."
    )
    assert lower.evidence[2] == "Learning rate at step 36: 0.01."
    assert by_key["stable_init"].evidence == lower.evidence
    assert by_key["check_data"].evidence == (
        "1 loss spike(s) at steps 34.",
        "Largest at step 34: value 40.",
    )
    assert "LSTM or nn.GRU" in by_key["use_gated_rnn"].action
    assert by_key["use_gated_rnn"].evidence == ("3 stacked recurrent layers.",)
    assert by_key["truncated_bptt"].evidence == ("Sequence length T = 150 (> 100).",)
    assert "k1=100" in by_key["truncated_bptt"].action
    weights = by_key["constrain_recurrent"]
    assert "constrain_recurrent_" in weights.action
    assert weights.evidence == (
        "growth_trend on rnn.weight_hh_l2: 6 alert(s) at steps 28, 29, 30, 31, 32, 33, "
        "value up to 1.3.",
    )
    clip = by_key["clip_gradients"]
    # The tightest bound any situation asks for: 0.5 for the loss spike and the deep RNN.
    assert "max_norm=0.5" in clip.action
    assert clip.severity is Severity.INFO  # clipping was already on
    assert "Clipping acted on 11 of 60 steps; smallest coefficient 0.0113 at step 35." in (
        clip.evidence
    )
    assert "3 stacked recurrent layers." in clip.evidence


def _healthy(n: int, name: str = "fc.weight") -> list[StepRecord]:
    return [
        StepRecord(
            i, ActionKind.PROCEED, Reason.HEALTHY, loss=1.0, total_norm=0.5, top=((name, 0.4),)
        )
        for i in range(n)
    ]


def test_healthy_feedforward_run() -> None:
    (advice,) = advise(_healthy(5))
    assert advice.key == "healthy"
    assert advice.evidence == ("5 steps logged without alerts or interventions.",)


def test_unclipped_rnn_is_told_to_clip() -> None:
    advice = advise(_healthy(5, "lstm.weight_hh_l0"), {"model": {"cell": "lstm"}})
    (clip,) = advice
    assert clip.key == "clip_gradients"
    assert "max_norm=1.0" in clip.action
    assert clip.severity is Severity.WARNING
    assert clip.evidence == (
        "Recurrent weights in the culprits: lstm.weight_hh_l0.",
        "No step was clipped.",
        "Largest finite gradient norm: 0.5 at step 0.",
    )


def test_deep_lstm_keeps_its_cells() -> None:
    advice = advise(_healthy(2), {"model": {"cell": "LSTM", "num_layers": 4, "seq_len": 50}})
    assert [a.key for a in advice] == ["clip_gradients"]  # gated already, T <= 100
    assert "max_norm=0.5" in advice[0].action
    assert "4 stacked recurrent layers." in advice[0].evidence


def test_nan_loss_in_a_feedforward_run() -> None:
    records = _healthy(3)
    records.append(
        StepRecord(
            3,
            ActionKind.SKIP,
            Reason.NONFINITE_LOSS,
            loss=math.nan,
            total_norm=1.0,
            alerts=(Alert(3, Severity.CRITICAL, AlertKind.NONFINITE_LOSS, "loss is NaN"),),
        )
    )
    advice = advise(records)
    assert [a.key for a in advice] == ["lower_learning_rate", "stable_init", "clip_gradients"]
    assert advice[0].evidence[1] == "Last finite gradient norm before it: 0.5 at step 2."
    assert "max_norm=1.0" in advice[2].action


def test_gradient_alert_without_culprits_blames_the_largest_tensor() -> None:
    records = _healthy(2, "rnn.weight_hh_l0")
    records.append(
        StepRecord(
            2,
            ActionKind.CLIP,
            Reason.SPIKE,
            loss=1.0,
            total_norm=40.0,
            clip_coef=0.025,
            top=(("rnn.weight_hh_l0", 39.0),),
            alerts=(Alert(2, Severity.WARNING, AlertKind.GRAD_NORM_SPIKE, "spike", value=40.0),),
        )
    )
    by_key = {a.key: a for a in advise(records)}
    assert by_key["constrain_recurrent"].evidence == (
        "grad_norm_spike on rnn.weight_hh_l0: 1 alert(s) at steps 2, value up to 40.",
    )


def test_analysis_results_add_their_remedies() -> None:
    rnn = torch.nn.RNN(2, 4)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(2.0 * torch.eye(4))
    spectra = recurrent_report(rnn, seq_len=100).to_dict()
    advice = advise(_healthy(3), analysis={"spectra": spectra, "other": {"kind": "unknown"}})
    by_key = {a.key: a for a in advice}
    assert set(by_key) == {"clip_gradients", "constrain_recurrent", "stable_init"}
    assert by_key["constrain_recurrent"].evidence == (
        "1 recurrent block(s) explosive for T=100, worst weight_hh_l0 gate h: rho=2 > "
        "critical 1.148.",
    )
