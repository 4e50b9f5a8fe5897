"""summarize and advise on the synthetic run and on small hand-made logs."""

from __future__ import annotations

import math

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
    assert list(by_key) == [
        "nonfinite",
        "loss_spikes",
        "deep_rnn",
        "long_sequence",
        "recurrent_weights",
        "clip_rnn",
    ]
    assert advice[0].severity is Severity.CRITICAL
    nonfinite = by_key["nonfinite"]
    assert "Lower the learning rate" in nonfinite.action
    assert "initialisation" in nonfinite.action
    assert nonfinite.evidence[0].startswith("2 step(s) with a NaN/Inf loss or gradient norm")
    assert "first at step 36" in nonfinite.evidence[0]
    last_finite = 0.5 * 1.05**20 * 1.3**16
    assert (
        nonfinite.evidence[1]
        == f"Last finite gradient norm before it: {last_finite:.3g} at step 35."
    )
    assert nonfinite.evidence[2] == "Learning rate at step 36: 0.01."
    assert by_key["loss_spikes"].evidence == (
        "1 loss spike(s) at steps 34.",
        "Largest at step 34: value 40.",
    )
    assert "max_norm=0.5" in by_key["deep_rnn"].action
    assert "LSTM or GRU" in by_key["deep_rnn"].action
    assert by_key["long_sequence"].evidence == ("Sequence length T = 150 (> 100).",)
    assert "truncated BPTT" in by_key["long_sequence"].action
    weights = by_key["recurrent_weights"]
    assert "orthogonal" in weights.action
    assert "spectral norm" in weights.action
    assert weights.evidence[0] == (
        "growth_trend on rnn.weight_hh_l2: 6 alert(s) at steps 28, 29, 30, 31, 32, 33, "
        "value up to 1.3."
    )
    clip = by_key["clip_rnn"]
    assert "max_norm=1.0" in clip.action
    assert clip.severity is Severity.INFO  # clipping was already on
    assert clip.evidence[1].startswith("Clipping acted on 11 of 60 steps")


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
    assert clip.key == "clip_rnn"
    assert clip.severity is Severity.WARNING
    assert clip.evidence[1] == "No step was clipped."


def test_deep_lstm_keeps_its_cells() -> None:
    advice = advise(_healthy(2), {"model": {"cell": "LSTM", "num_layers": 4, "seq_len": 50}})
    deep = next(a for a in advice if a.key == "deep_rnn")
    assert deep.action == "Clip more aggressively (max_norm=0.5); the LSTM cells already help."
    assert not any(a.key == "long_sequence" for a in advice)


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
    assert [a.key for a in advice] == ["nonfinite"]
    assert advice[0].evidence[1] == "Last finite gradient norm before it: 0.5 at step 2."
