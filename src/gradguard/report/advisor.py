"""Turn a run's events into remedies, each with the evidence that calls for it and a confidence.

Advice follows from what the log shows, not from a checklist:

- the learning rate: when gradguard's own back-offs found a rate the run held without faults,
  that rate (rounded) is the advice, with a confidence from how long it held; repeated faults
  without a back-off give a tenth of the rate, as a guess (low confidence); one non-finite step
  that was skipped, followed by healthy training, is reported as what it is (info, nothing to
  change);
- the initialisation: only when faults begin within the first steps, worded for the model type;
- the data: only for loss spikes that look like a bad batch (the loss before and after is
  ordinary), not for spikes that follow a gradient blow-up;
- the model type (recurrent or not) comes from the tensor names in the log (``weight_hh``,
  ``rnn``, ``lstm``, ``gru``) or from the metadata; recurrent remedies are never given to a
  feed-forward model;
- clipping, recurrent structure and analysis results go through the rule table of
  :func:`gradguard.remedies.suggest`, whose settings are rounded to two digits.

References:
    Pascanu, Mikolov, Bengio (2013), "On the difficulty of training recurrent neural networks",
    ICML: gradient norm clipping and the spectral-radius condition for explosion.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gradguard.errors import GradguardError
from gradguard.records import Alert, AlertKind, Observation, Severity, StepRecord
from gradguard.remedies import Advice as Suggestion
from gradguard.remedies import Remedy, suggest
from gradguard.report.summary import (
    Confidence,
    RateEvidence,
    RunSummary,
    is_fault,
    rates,
    summarize,
)
from gradguard.sinks import shown_severity

__all__ = ["Advice", "Confidence", "ModelFacts", "RateEvidence", "advise", "model_facts", "rates"]

_RECURRENT = re.compile(r"weight_hh(?:_l(\d+))?")
_RECURRENT_MODULE = re.compile(r"(?:^|[._])(?:rnn|lstm|gru)\d*(?:[._]|$)", re.IGNORECASE)
_GRADIENT_ALERTS = {
    AlertKind.GRAD_NORM_SPIKE,
    AlertKind.GRAD_NORM_THRESHOLD,
    AlertKind.GROWTH_TREND,
    AlertKind.CULPRIT,
    AlertKind.EARLY_EXPLOSION,
}
_LOSS_ALERTS = {AlertKind.LOSS_SPIKE, AlertKind.LOSS_THRESHOLD}
_MAX_LISTED = 8
_EARLY_STEPS = 20
"""Faults that begin within this many steps (or 5% of the run) point at the initialisation."""
_ISOLATION = 10
"""Steps after a skipped fault that must pass without warnings for it to count as isolated."""
_TITLES = {
    Remedy.CLIP_GRADIENTS: "Clip the gradient norm",
    Remedy.LOWER_LEARNING_RATE: "Lower the learning rate",
    Remedy.STABLE_INIT: "Check the initialisation",
    Remedy.CONSTRAIN_RECURRENT: "Keep the recurrent weights near spectral radius 1",
    Remedy.TRUNCATED_BPTT: "Truncate back-propagation through time",
    Remedy.USE_GATED_RNN: "Use gated recurrent cells",
    Remedy.CHECK_DATA: "Check the data at the spikes",
    Remedy.ADD_NORMALIZATION: "Add normalisation",
}
_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclasses.dataclass(frozen=True)
class Advice:
    """One remedy and why it applies to this run.

    Attributes:
        key: the remedy's identifier (a :class:`gradguard.remedies.Remedy` value such as
            ``"clip_gradients"``), ``"isolated_fault"`` for a lone skipped NaN/Inf, or
            ``"healthy"`` when nothing went wrong.
        severity: how pressing it is.
        title: a few words.
        action: what to do, with rounded settings.
        evidence: the facts from the log that triggered it (steps, norms, names).
        confidence: how firmly the evidence supports the action: ``"high"`` (measured in this
            run, e.g. a rate the run held for 50+ steps), ``"medium"``, ``"low"`` (a rule of
            thumb or a guess).
    """

    key: str
    severity: Severity
    title: str
    action: str
    evidence: tuple[str, ...]
    confidence: Confidence = "medium"


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the log tells about the model: from metadata ``model`` or from tensor names.

    Attributes:
        recurrent: recurrent weights were seen (``weight_hh*``, or a module named ``rnn``,
            ``lstm``, ``gru``) or declared.
        recurrent_names: the recurrent tensor names seen in the records.
        num_layers: number of stacked recurrent layers, when known.
        cell: ``"RNN"``, ``"LSTM"``, ``"GRU"`` or ``None`` when unknown.
        seq_len: sequence length of the training data, when known.
    """

    recurrent: bool
    recurrent_names: tuple[str, ...]
    num_layers: int | None
    cell: str | None
    seq_len: int | None


def model_facts(records: Sequence[StepRecord], metadata: Mapping[str, Any]) -> ModelFacts:
    """Gather :class:`ModelFacts` from ``metadata["model"]`` and the tensor names in the records.

    Args:
        records: the run's records; their ``top`` and alert culprits name tensors.
        metadata: the log header's metadata; ``model`` may hold ``recurrent``, ``cell``,
            ``num_layers`` and ``seq_len``.

    Returns:
        What could be learned; unknown fields are ``None``.
    """
    model = metadata.get("model")
    declared: Mapping[str, Any] = model if isinstance(model, Mapping) else {}
    names: dict[str, None] = {}
    layers = -1
    for name in _tensor_names(records):
        match = _RECURRENT.search(name)
        if match or _RECURRENT_MODULE.search(name):
            names.setdefault(name)
            if match and match.group(1) is not None:
                layers = max(layers, int(match.group(1)))
    cell = declared.get("cell")
    cell = str(cell).upper() if isinstance(cell, str) else None
    num_layers = _int_or_none(declared.get("num_layers"))
    if num_layers is None and layers >= 0:
        num_layers = layers + 1
    recurrent = bool(declared.get("recurrent", False)) or bool(names) or cell is not None
    return ModelFacts(
        recurrent=recurrent,
        recurrent_names=tuple(names),
        num_layers=num_layers,
        cell=cell,
        seq_len=_int_or_none(declared.get("seq_len")),
    )


def advise(
    records: Sequence[StepRecord],
    metadata: Mapping[str, Any] | None = None,
    summary: RunSummary | None = None,
    analysis: Mapping[str, Any] | None = None,
) -> list[Advice]:
    """Map what happened in a run to remedies, most pressing first, each with its evidence.

    Args:
        records: the run's records in log order.
        metadata: the log header's metadata (``model`` facts are used when present).
        summary: :func:`~gradguard.report.summarize` of ``records`` when already computed.
        analysis: analysis results by name (their ``to_dict()``); those ``suggest`` reads
            (``recurrent_report``, ``bptt_profile``, ``depth_profile``, ...) add their remedies.

    Returns:
        One :class:`Advice` per remedy the evidence supports; a single "no instability" entry
        when nothing went wrong.
    """
    summary = summary or summarize(records)
    facts = model_facts(records, metadata or {})
    faults = [r for r in records if is_fault(r)]
    advice: list[Advice] = []
    isolated = _isolated(records, faults, summary)
    if isolated is not None:
        advice.append(isolated)
    else:
        advice += _learning_rate(faults, summary)
        advice += _initialisation(summary, faults, facts)
    situations = _situations(records, summary, facts) + _analyses(analysis or {})
    lines: dict[Remedy, list[str]] = {}
    confidence: dict[Remedy, Confidence] = {}
    for items, evidence, sure in situations:
        for suggestion in suggest(None, items, recurrent=facts.recurrent):
            listed = lines.setdefault(suggestion.action, [])
            listed.extend(e for e in evidence if e not in listed)
            known = confidence.get(suggestion.action)
            if known is None or _RANK[sure] > _RANK[known]:
                confidence[suggestion.action] = sure
    everything = [item for items, _, _ in situations for item in items]
    if everything:
        clipped = summary.clipped_steps > 0
        have = {a.key for a in advice}
        for suggestion in suggest(None, everything, recurrent=facts.recurrent):
            if suggestion.action.value in have:
                continue
            advice.append(
                _worded(
                    suggestion,
                    lines.get(suggestion.action, []),
                    clipped,
                    confidence.get(suggestion.action, "medium"),
                )
            )
    if not advice:
        advice.append(
            Advice(
                key="healthy",
                severity=Severity.INFO,
                title="No instability seen",
                action="Nothing to change: no alert, no intervention, no NaN/Inf in the log.",
                evidence=(f"{summary.steps} steps logged without alerts or interventions.",),
                confidence="high",
            )
        )
    advice.sort(key=lambda a: (-a.severity.rank, -_RANK[a.confidence]))
    return advice


def _worded(
    suggestion: Suggestion, lines: Sequence[str], clipped: bool, confidence: Confidence
) -> Advice:
    if suggestion.priority == 0:
        severity = Severity.CRITICAL
    elif suggestion.action is Remedy.CLIP_GRADIENTS and clipped:
        severity = Severity.INFO  # clipping was already on: keep it
    else:
        severity = Severity.WARNING
    settings = ", ".join(f"{k}={_setting(v)}" for k, v in suggestion.params)
    return Advice(
        key=suggestion.action.value,
        severity=severity,
        title=_TITLES[suggestion.action],
        action=suggestion.message + (f" Settings: {settings}." if settings else ""),
        evidence=tuple(lines) or (suggestion.evidence,),
        confidence=confidence,
    )


# ------------------------------------------------------------------------------------------------
# Learning rate, initialisation, a lone fault: read from the log directly.


def _isolated(
    records: Sequence[StepRecord], faults: Sequence[StepRecord], summary: RunSummary
) -> Advice | None:
    """Info advice for one skipped NaN/Inf step that training shrugged off, else ``None``."""
    if len(faults) != 1 or summary.tally.rollbacks or summary.tally.backoffs:
        return None
    fault = faults[0]
    if fault.applied or summary.progress.verdict in ("did_not_train", "lost_ground"):
        return None
    # The records may hold only the events (the report's digest drops routine steps): a step
    # missing here had no alert. How many steps followed comes from the summary.
    after = [r for r in records if fault.step < r.step <= fault.step + _ISOLATION]
    followed = min(_ISOLATION, (summary.last_step or fault.step) - fault.step)
    troubled = any(
        shown_severity(r, a).rank >= Severity.WARNING.rank for r in after for a in r.alerts
    )
    if troubled:
        return None
    what = "loss" if fault.loss is not None and not math.isfinite(fault.loss) else "gradient norm"
    value = fault.loss if what == "loss" else fault.total_norm
    return Advice(
        key="isolated_fault",
        severity=Severity.INFO,
        title="One non-finite step, skipped",
        action=(
            f"Nothing to change: gradguard skipped step {fault.step} and training went on "
            f"healthy. If it recurs, look at the batch of step {fault.step}."
        ),
        evidence=(
            f"One step with a NaN/Inf {what} ({_num(value)}) at step {fault.step}, not applied.",
            f"No warning in the {followed} steps after it; no rollback, no back-off.",
        ),
        confidence="high" if followed >= _ISOLATION else "medium",
    )


def _learning_rate(faults: Sequence[StepRecord], summary: RunSummary) -> list[Advice]:
    rate = summary.rate
    if rate.suggested is None:
        return []
    ruined = summary.progress.verdict in ("did_not_train", "lost_ground")
    severity = Severity.CRITICAL if ruined or summary.tally.aborted else Severity.WARNING
    start = f" (it started at {rate.start:g})" if rate.start is not None else ""
    evidence: list[str] = []
    if rate.backoffs:
        evidence.append(
            f"gradguard backed the learning rate off {len(rate.backoffs)} time(s), at steps "
            f"{_steps(s for s, _ in rate.backoffs)}, down to {_num(rate.held)}."
        )
    if faults:
        evidence.append(
            f"{len(faults)} step(s) with a NaN/Inf loss or gradient norm, first at step "
            f"{faults[0].step}; steps {_steps(r.step for r in faults)}."
        )
    if summary.tally.rollbacks:
        evidence.append(
            f"{summary.tally.rollbacks} rollback(s) undid {summary.tally.steps_lost} of "
            f"{summary.steps} steps."
        )
    if rate.held is not None and not rate.faults_after:
        evidence.append(
            f"At {_num(rate.held)} the run applied {rate.held_steps} steps without NaN/Inf or "
            "rollback."
        )
        action = (
            f"Restart with the learning rate at about {rate.suggested:g}{start}: the rate "
            "gradguard's back-offs found stable in this run."
        )
    elif rate.held is not None:
        evidence.append(f"Faults went on at {_num(rate.held)}, the lowest rate tried.")
        action = (
            f"Lower the learning rate to about {rate.suggested:g}{start}, a tenth of the lowest "
            "rate tried, which still failed; if that fails too, look at the initialisation "
            "and the data."
        )
    else:
        evidence.append("No back-off measured a stable rate: a tenth of it is a guess.")
        action = (
            f"Lower the learning rate to about {rate.suggested:g}{start}, a tenth, and watch "
            "whether the faults stop."
        )
    return [
        Advice(
            key=Remedy.LOWER_LEARNING_RATE.value,
            severity=severity,
            title=_TITLES[Remedy.LOWER_LEARNING_RATE],
            action=action + f" Settings: lr={rate.suggested:g}.",
            evidence=tuple(evidence),
            confidence=rate.confidence,
        )
    ]


def _initialisation(
    summary: RunSummary, faults: Sequence[StepRecord], facts: ModelFacts
) -> list[Advice]:
    if not faults or summary.first_step is None:
        return []
    first = faults[0]
    into = first.step - summary.first_step
    early = max(_EARLY_STEPS, summary.steps // 20)
    if into >= early:
        return []
    observation = Observation(
        step=first.step,
        loss=first.loss,
        total_norm=first.total_norm if first.total_norm is not None else math.nan,
        finite=False,
    )
    init = next(
        s
        for s in suggest(None, observation, recurrent=facts.recurrent)
        if s.action is Remedy.STABLE_INIT
    )
    return [
        Advice(
            key=Remedy.STABLE_INIT.value,
            severity=Severity.WARNING,
            title=_TITLES[Remedy.STABLE_INIT],
            action=init.message,
            evidence=(
                f"The first NaN/Inf came at step {first.step}, {into} step(s) into the run: "
                "before training could have drifted, so the starting weights are suspect.",
            ),
            confidence="low",
        )
    ]


# ------------------------------------------------------------------------------------------------
# The situations for the rule table: what to show ``suggest``, how to word the log's evidence for
# each, and how sure the evidence is.

_Situation = tuple[list[Any], list[str], Confidence]


def _situations(
    records: Sequence[StepRecord], summary: RunSummary, facts: ModelFacts
) -> list[_Situation]:
    out = [
        _data_spikes(records),
        _gradient_alerts(records, recurrent=True),
        _gradient_alerts(records, recurrent=False),
        _recurrent(summary, facts),
        _deep(facts),
        _long_sequence(facts),
    ]
    if summary.rate.suggested is None:  # the rate advice above already covers growing weights
        out.append(_param_growth(records))
    return [(items, lines, sure) for items, lines, sure in out if items]


def _analyses(results: Mapping[str, Any]) -> list[_Situation]:
    """One situation per analysis result ``suggest`` can read; its evidence is suggest's own."""
    out: list[_Situation] = []
    for value in results.values():
        if not isinstance(value, Mapping) or "kind" not in value:
            continue
        try:
            suggestions = suggest(None, [value])
        except GradguardError:  # a result of a kind that calls for no remedy rule
            continue
        out.append(([value], [f"{s.evidence}." for s in suggestions if s.evidence], "high"))
    return out


def _data_spikes(records: Sequence[StepRecord]) -> _Situation:
    """Loss spikes that look like a bad batch: ordinary loss and no warning just before and after.

    A spike that follows a gradient blow-up (or leaves the loss high) comes from the weights,
    not the data: those are left to the learning-rate and clipping advice. ``records`` may hold
    only the events (the report's digest drops routine steps): a neighbouring step missing from
    them raised no alert and counts as ordinary.
    """
    by_step = {r.step: r for r in records}
    losses: list[float] = []
    spikes: list[Alert] = []
    for index, record in enumerate(records):
        alerts = [a for a in record.alerts if a.kind in _LOSS_ALERTS]
        loss = record.loss
        finite = loss is not None and math.isfinite(loss)
        level = statistics.median(losses[-10:]) if losses else None
        if finite and loss is not None:
            losses.append(loss)
        if not alerts or not finite or index == len(records) - 1:
            continue
        before, after = by_step.get(record.step - 1), by_step.get(record.step + 1)
        calm = not any(
            shown_severity(n, a).rank >= Severity.WARNING.rank
            for n in (before, after)
            if n is not None
            for a in n.alerts
        )
        settled = after is None or (
            after.loss is not None
            and math.isfinite(after.loss)
            and (level is None or abs(after.loss) <= 2.0 * abs(level) + 1e-12)
        )
        if calm and settled:
            spikes.extend(alerts)
    if not spikes:
        return [], [], "low"
    worst = max(spikes, key=lambda a: -math.inf if a.value is None else a.value)
    evidence = [
        f"{len(spikes)} loss spike(s) at steps {_steps(a.step for a in spikes)} with an ordinary "
        "loss and no warning on the steps before and after: a batch stood out.",
    ]
    if worst.value is not None:
        evidence.append(f"Largest at step {worst.step}: value {_num(worst.value)}.")
    return list(spikes), evidence, "medium" if len(spikes) >= 2 else "low"


def _gradient_alerts(records: Sequence[StepRecord], *, recurrent: bool) -> _Situation:
    """Alerts on the gradient norm blamed on recurrent weights (or on others, ``recurrent=False``).

    An alert that names no tensor is blamed on the step's largest one.
    """
    alerts: list[Alert] = []
    hits: dict[tuple[str, str], list[tuple[int, float | None]]] = {}
    for record in records:
        top = record.top[0][0] if record.top else ""
        for alert in record.alerts:
            if alert.kind not in _GRADIENT_ALERTS:
                continue
            if not alert.culprits and top:
                alert = dataclasses.replace(alert, culprits=(top,))
            named = [c for c in alert.culprits if _RECURRENT.search(c)]
            if bool(named) != recurrent:
                continue
            tensor = named[0] if named else (alert.culprits[0] if alert.culprits else "?")
            alerts.append(alert)
            hits.setdefault((alert.kind.value, tensor), []).append((alert.step, alert.value))
    evidence = []
    for (kind, tensor), events in list(hits.items())[:_MAX_LISTED]:
        values = [v for _, v in events if v is not None and math.isfinite(v)]
        peak = f", value up to {_num(max(values))}" if values else ""
        evidence.append(
            f"{kind} on {tensor}: {len(events)} alert(s) at steps "
            f"{_steps(step for step, _ in events)}{peak}."
        )
    sure: Confidence = "medium" if len(alerts) >= 2 else "low"
    return list(alerts), evidence, sure


def _param_growth(records: Sequence[StepRecord]) -> _Situation:
    alerts = [a for r in records for a in r.alerts if a.kind is AlertKind.PARAM_NORM_GROWTH]
    if not alerts:
        return [], [], "low"
    evidence = [
        f"The parameter norm grew too fast: {len(alerts)} alert(s) at steps "
        f"{_steps(a.step for a in alerts)}."
    ]
    return list(alerts), evidence, "medium"


def _recurrent(summary: RunSummary, facts: ModelFacts) -> _Situation:
    if not facts.recurrent:
        return [], [], "low"
    described = {"kind": "model", "recurrent": True, "cell": facts.cell, "num_layers": 1}
    evidence = []
    if facts.recurrent_names:
        evidence.append(f"Recurrent weights in the culprits: {_names(facts.recurrent_names)}.")
    elif facts.cell:
        evidence.append(f"The run metadata declares a recurrent model ({facts.cell}).")
    else:
        evidence.append("The run metadata declares a recurrent model.")
    if summary.smallest_clip is not None:
        step, coef = summary.smallest_clip
        evidence.append(
            f"Clipping acted on {summary.clipped_steps} of {summary.steps} steps; smallest "
            f"coefficient {_num(coef)} at step {step}."
        )
    else:
        evidence.append("No step was clipped.")
    if summary.max_norm is not None:
        step, norm = summary.max_norm
        evidence.append(f"Largest finite gradient norm: {_num(norm)} at step {step}.")
    return [described], evidence, "medium"


def _deep(facts: ModelFacts) -> _Situation:
    if not facts.recurrent or facts.num_layers is None or facts.num_layers < 2:
        return [], [], "low"
    described = {
        "kind": "model",
        "recurrent": True,
        "cell": facts.cell,
        "num_layers": facts.num_layers,
    }
    return [described], [f"{facts.num_layers} stacked recurrent layers."], "medium"


def _long_sequence(facts: ModelFacts) -> _Situation:
    if facts.seq_len is None:
        return [], [], "low"
    described = {"kind": "model", "recurrent": False, "seq_len": facts.seq_len}
    return [described], [f"Sequence length T = {facts.seq_len} (> 100)."], "medium"


# ------------------------------------------------------------------------------------------------


def _tensor_names(records: Iterable[StepRecord]) -> Iterable[str]:
    for record in records:
        for name, _ in record.top:
            yield name
        for alert in record.alerts:
            yield from alert.culprits


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value) if math.isfinite(value) else None


def _setting(value: float | int | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if math.isfinite(value) else repr(value)


def _steps(steps: Iterable[int]) -> str:
    listed = list(steps)
    text = ", ".join(str(s) for s in listed[:_MAX_LISTED])
    return text + (f", ... ({len(listed)} in all)" if len(listed) > _MAX_LISTED else "")


def _names(names: Sequence[str]) -> str:
    text = ", ".join(names[:_MAX_LISTED])
    return text + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")
