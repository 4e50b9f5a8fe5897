"""summarize and advise on the synthetic run and on small hand-made logs."""

from __future__ import annotations

import dataclasses
import math
import statistics

import torch

from gradguard.analysis import recurrent_report
from gradguard.records import ActionKind, Alert, AlertKind, Reason, Severity, StepRecord
from gradguard.report import advise, model_facts, progress, summarize
from gradguard.report.page import outcome
from tests.report.synthetic import METADATA, ruined_mlp_records, synthetic_records


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
    # Most pressing first; no "check the data" (the loss spike at 34 follows six growth
    # warnings: the weights, not a batch) and no "check the initialisation" (36 steps in).
    assert list(by_key) == [
        "lower_learning_rate",
        "constrain_recurrent",
        "truncated_bptt",
        "use_gated_rnn",
        "clip_gradients",
    ]
    lower = by_key["lower_learning_rate"]
    assert lower.severity is Severity.WARNING  # the run trained: 1.88 -> 0.352
    # The back-off at step 38 set 0.005 and the run then applied 21 steps without a fault.
    assert "Restart with the learning rate at about 0.005 (it started at 0.01)" in lower.action
    assert lower.action.endswith("Settings: lr=0.005.")
    assert lower.confidence == "medium"  # 21 steps held: 10 <= 21 < 50
    assert lower.evidence == (
        "gradguard backed the learning rate off 1 time(s), at steps 38, down to 0.005.",
        "2 step(s) with a NaN/Inf loss or gradient norm, first at step 36; steps 36, 37.",
        "1 rollback(s) undid 7 of 60 steps.",
        "At 0.005 the run applied 21 steps without NaN/Inf or rollback.",
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
    assert "max_norm=0.5" in clip.action  # the deep RNN's bound
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
    assert clip.action.endswith("Settings: max_norm=1.")
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


def _falling(n: int, name: str = "net.0.weight", lr: float = 0.1) -> list[StepRecord]:
    """A feed-forward run whose loss falls 3% a step, without incident."""
    return [
        StepRecord(
            i,
            ActionKind.PROCEED,
            Reason.HEALTHY,
            loss=2.0 * 0.97**i,
            total_norm=0.5,
            lr=lr,
            top=((name, 0.4),),
        )
        for i in range(n)
    ]


def _fault(step: int, name: str = "net.0.weight", lr: float = 0.1) -> StepRecord:
    return StepRecord(
        step,
        ActionKind.SKIP,
        Reason.NONFINITE_GRAD,
        loss=1.0,
        total_norm=math.inf,
        applied=False,
        lr=lr,
        top=((name, math.inf),),
        alerts=(Alert(step, Severity.CRITICAL, AlertKind.NONFINITE_GRAD, "inf", (name,)),),
    )


def test_one_isolated_skipped_inf_is_info_not_two_critical_items() -> None:
    records = _falling(60)
    records[30] = _fault(30)
    (advice,) = advise(records)
    assert advice.key == "isolated_fault"
    assert advice.severity is Severity.INFO
    assert advice.confidence == "high"
    assert "gradguard skipped step 30 and training went on healthy" in advice.action
    assert advice.evidence[1] == "No warning in the 10 steps after it; no rollback, no back-off."


def test_repeated_faults_without_back_off_give_a_guessed_rate() -> None:
    records = _falling(60)
    records[30], records[40] = _fault(30), _fault(40)
    advice = advise(records)
    assert [a.key for a in advice] == ["lower_learning_rate"]  # no init advice 30 steps in
    (lower,) = advice
    assert lower.confidence == "low"
    assert "about 0.01 (it started at 0.1), a tenth" in lower.action
    assert "No back-off measured a stable rate: a tenth of it is a guess." in lower.evidence


def test_early_faults_in_an_mlp_point_at_its_initialisation_not_at_recurrent_weights() -> None:
    records = _falling(60)
    records[1], records[2] = _fault(1), _fault(2)
    by_key = {a.key: a for a in advise(records)}
    assert set(by_key) == {"lower_learning_rate", "stable_init"}
    init = by_key["stable_init"]
    assert "Xavier (tanh) or He (ReLU)" in init.action
    assert "recurrent" not in init.action
    assert init.confidence == "low"
    assert init.evidence == (
        "The first NaN/Inf came at step 1, 1 step(s) into the run: before training could have "
        "drifted, so the starting weights are suspect.",
    )


def test_the_model_type_comes_from_the_tensor_names() -> None:
    def facts(name: str) -> bool:
        return model_facts(_falling(2, name), {}).recurrent

    assert facts("encoder.lstm.weight_ih_l0")
    assert facts("gru1.bias_hh")
    assert facts("rnn.weight_hh_l0")
    assert facts("cell.weight_hh")
    assert not facts("net.0.weight")
    assert not facts("program.weight")  # "gr"+"u" inside a word is not a GRU
    records = _falling(40, "encoder.lstm.weight_ih_l0")
    assert [a.key for a in advise(records)] == ["clip_gradients"]  # recurrent: clip at 1
    assert [a.key for a in advise(_falling(40))] == ["healthy"]


def _loss_spike(step: int, loss: float) -> Alert:
    return Alert(step, Severity.WARNING, AlertKind.LOSS_SPIKE, "loss spike", value=loss)


def test_check_the_data_only_for_spikes_that_look_like_a_bad_batch() -> None:
    records = _falling(60)
    for step in (20, 45):  # ordinary loss before and after, no warning around: a batch
        records[step] = dataclasses.replace(
            records[step], loss=50.0, alerts=(_loss_spike(step, 50.0),)
        )
    data = {a.key: a for a in advise(records)}["check_data"]
    assert data.confidence == "medium"
    assert data.evidence[0].startswith("2 loss spike(s) at steps 20, 45 with an ordinary loss")
    # The same spike after a gradient blow-up (a warning the step before, the loss staying
    # high) comes from the weights: no data advice.
    records = _falling(60)
    blowup = Alert(19, Severity.WARNING, AlertKind.GRAD_NORM_SPIKE, "spike", value=40.0)
    records[19] = dataclasses.replace(records[19], alerts=(blowup,), total_norm=40.0)
    for step in range(20, 60):
        records[step] = dataclasses.replace(records[step], loss=50.0)
    records[20] = dataclasses.replace(records[20], alerts=(_loss_spike(20, 50.0),))
    assert "check_data" not in {a.key for a in advise(records)}


def test_a_ruined_run_is_not_called_a_success() -> None:
    records = ruined_mlp_records()
    summary = summarize(records)
    assert summary.steps_lost == 213
    assert summary.progress.verdict == "did_not_train"
    lower = advise(records)[0]
    assert lower.key == "lower_learning_rate"
    assert lower.severity is Severity.CRITICAL
    assert "about 0.0012 (it started at 0.1)" in lower.action  # 0.00125 rounded down
    assert lower.confidence == "high"  # 54 steps applied at 0.00125 without a fault
    assert not any(a.key in ("constrain_recurrent", "use_gated_rnn") for a in advise(records))


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


def test_a_clip_bound_from_the_log_is_rounded() -> None:
    records = _falling(40)
    spike = Alert(
        20,
        Severity.WARNING,
        AlertKind.GRAD_NORM_SPIKE,
        "spike",
        culprits=("net.0.weight",),
        value=3.0,
        threshold=0.03742668283845565,
    )
    records[20] = dataclasses.replace(records[20], alerts=(spike,), total_norm=3.0)
    (clip,) = advise(records)
    assert clip.key == "clip_gradients"
    assert clip.action.endswith("Settings: max_norm=0.037.")
    assert "0.0374266" not in clip.action
    assert clip.confidence == "low"  # one spike


def _losses(values: list[float]) -> list[StepRecord]:
    return [
        StepRecord(i, ActionKind.PROCEED, Reason.HEALTHY, loss=v, total_norm=1.0)
        for i, v in enumerate(values)
    ]


def test_progress_compares_first_best_and_final_loss() -> None:
    trained = progress(_losses([2.0 * 0.95**i for i in range(50)]))
    assert trained.verdict == "trained"
    assert trained.first == statistics.median([2.0, 1.9, 1.805, 1.71475, 1.6290125][:5])
    assert trained.best == (45, 2.0 * 0.95**45)  # the median of steps 41-49
    flat = progress(_losses([2.0 + 0.01 * math.sin(i) for i in range(50)]))
    assert flat.verdict == "did_not_train"
    # Down to 0.2 by step 20, back up to 1.5 at the end: kept only 0.5 of a 1.6 gain.
    lost = progress(_losses([2.0 - 0.09 * i for i in range(21)] + [1.5] * 29))
    assert lost.verdict == "lost_ground" and lost.best == (16, 2.0 - 0.09 * 16)
    # One lucky batch is not the best loss: the median of nine around it is.
    lucky = progress(_losses([2.0 - 0.01 * i for i in range(50)][:30] + [0.1] + [1.7] * 19))
    assert lucky.verdict == "trained" and lucky.best is not None and lucky.best[1] > 1.6
    assert progress(_losses([1.0])).verdict == "unknown"


def test_a_flat_run_without_incident_is_not_called_healthy() -> None:
    records = _losses([2.0 + 0.01 * math.sin(i) for i in range(50)])
    css, verdict = outcome(summarize(records))
    assert css == "bad"
    assert verdict.startswith("Did not train, with no instability seen: loss 2.00")
