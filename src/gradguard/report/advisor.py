"""Turn a run's events into remedies, each with the evidence (steps, norms) that calls for it.

The rules live in one place, :func:`gradguard.remedies.suggest` (clip every RNN at 1.0; after a
NaN/Inf lower the learning rate, check the initialisation and clip; after loss spikes clip lower
and check the data; deep RNNs clip at 0.5 with gated cells; sequences longer than 100 steps get
truncated BPTT; recurrent weights that drive the explosion get a spectral constraint). This
module gathers from the log what each situation needs (the alerts, the first non-finite step, the
model's description in the metadata), asks ``suggest`` what to do, and words the evidence from
the log: steps, norms and tensor names.

References:
    Pascanu, Mikolov, Bengio (2013), "On the difficulty of training recurrent neural networks",
    ICML: gradient norm clipping and the spectral-radius condition for explosion.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gradguard.errors import GradguardError
from gradguard.records import Alert, AlertKind, Observation, Severity, StepRecord
from gradguard.remedies import Advice as Suggestion
from gradguard.remedies import Remedy, suggest
from gradguard.report.summary import RunSummary, record_nonfinite, summarize

__all__ = ["Advice", "ModelFacts", "advise", "model_facts"]

_RECURRENT = re.compile(r"weight_hh(?:_l(\d+))?")
_GRADIENT_ALERTS = {
    AlertKind.GRAD_NORM_SPIKE,
    AlertKind.GRAD_NORM_THRESHOLD,
    AlertKind.GROWTH_TREND,
    AlertKind.CULPRIT,
}
_LOSS_ALERTS = {AlertKind.LOSS_SPIKE, AlertKind.LOSS_THRESHOLD}
_MAX_LISTED = 8
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


@dataclasses.dataclass(frozen=True)
class Advice:
    """One remedy and why it applies to this run.

    Attributes:
        key: the remedy's identifier (a :class:`gradguard.remedies.Remedy` value such as
            ``"clip_gradients"``), or ``"healthy"`` when nothing went wrong.
        severity: how pressing it is.
        title: a few words.
        action: what to do, in the words of :func:`gradguard.remedies.suggest`.
        evidence: the facts from the log that triggered it (steps, norms, names).
    """

    key: str
    severity: Severity
    title: str
    action: str
    evidence: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the log tells about the model: from metadata ``model`` or from tensor names.

    Attributes:
        recurrent: recurrent weights (``weight_hh*``) were seen or declared.
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
        if match:
            names.setdefault(name)
            if match.group(1) is not None:
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
        One :class:`Advice` per remedy :func:`gradguard.remedies.suggest` gives for the run's
        situations; a single "no instability" entry when nothing went wrong.
    """
    summary = summary or summarize(records)
    facts = model_facts(records, metadata or {})
    situations = _situations(records, summary, facts) + _analyses(analysis or {})
    lr = next((r.lr for r in records if record_nonfinite(r) and r.lr is not None), None)
    lines: dict[Remedy, list[str]] = {}
    for items, evidence in situations:
        for suggestion in suggest(None, items, lr=lr):
            listed = lines.setdefault(suggestion.action, [])
            listed.extend(e for e in evidence if e not in listed)
    everything = [item for items, _ in situations for item in items]
    advice: list[Advice] = []
    if everything:
        clipped = summary.clipped_steps > 0
        for suggestion in suggest(None, everything, lr=lr):
            advice.append(_worded(suggestion, lines.get(suggestion.action, []), clipped))
    if not advice:
        advice.append(
            Advice(
                key="healthy",
                severity=Severity.INFO,
                title="No instability seen",
                action="Nothing to change: no alert, no intervention, no NaN/Inf in the log.",
                evidence=(f"{summary.steps} steps logged without alerts or interventions.",),
            )
        )
    advice.sort(key=lambda a: -a.severity.rank)
    return advice


def _worded(suggestion: Suggestion, lines: Sequence[str], clipped: bool) -> Advice:
    if suggestion.priority == 0:
        severity = Severity.CRITICAL
    elif suggestion.action is Remedy.CLIP_GRADIENTS and clipped:
        severity = Severity.INFO  # clipping was already on: keep it
    else:
        severity = Severity.WARNING
    settings = ", ".join(f"{k}={v}" for k, v in suggestion.params)
    return Advice(
        key=suggestion.action.value,
        severity=severity,
        title=_TITLES[suggestion.action],
        action=suggestion.message + (f" Settings: {settings}." if settings else ""),
        evidence=tuple(lines) or (suggestion.evidence,),
    )


# ------------------------------------------------------------------------------------------------
# The situations: what to show ``suggest`` and how to word the log's evidence for each.

_Situation = tuple[list[Any], list[str]]


def _situations(
    records: Sequence[StepRecord], summary: RunSummary, facts: ModelFacts
) -> list[_Situation]:
    out = [
        _nonfinite(records),
        _loss_spikes(records),
        _gradient_alerts(records, recurrent=True),
        _gradient_alerts(records, recurrent=False),
        _param_growth(records),
        _recurrent(records, summary, facts),
        _deep(facts),
        _long_sequence(facts),
    ]
    return [(items, lines) for items, lines in out if items]


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
        out.append(([value], [f"{s.evidence}." for s in suggestions if s.evidence]))
    return out


def _nonfinite(records: Sequence[StepRecord]) -> _Situation:
    bad = [r for r in records if record_nonfinite(r)]
    if not bad:
        return [], []
    first = bad[0]
    norm = first.total_norm if first.total_norm is not None else 0.0
    observation = Observation(
        step=first.step, loss=first.loss, total_norm=norm, finite=math.isfinite(norm), top=first.top
    )
    evidence = [
        f"{len(bad)} step(s) with a NaN/Inf loss or gradient norm, first at step {first.step} "
        f"(loss {_num(first.loss)}, gradient norm {_num(first.total_norm)}); steps "
        f"{_steps(r.step for r in bad)}."
    ]
    before = [
        r
        for r in records
        if r.step < first.step and r.total_norm is not None and math.isfinite(r.total_norm)
    ]
    if before:
        last = before[-1]
        evidence.append(
            f"Last finite gradient norm before it: {_num(last.total_norm)} at step {last.step}."
        )
    if first.lr is not None:
        evidence.append(f"Learning rate at step {first.step}: {_num(first.lr)}.")
    return [observation], evidence


def _loss_spikes(records: Sequence[StepRecord]) -> _Situation:
    spikes = [a for r in records for a in r.alerts if a.kind in _LOSS_ALERTS]
    if not spikes:
        return [], []
    worst = max(spikes, key=lambda a: -math.inf if a.value is None else a.value)
    evidence = [f"{len(spikes)} loss spike(s) at steps {_steps(a.step for a in spikes)}."]
    if worst.value is not None:
        evidence.append(f"Largest at step {worst.step}: value {_num(worst.value)}.")
    return list(spikes), evidence


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
    return list(alerts), evidence


def _param_growth(records: Sequence[StepRecord]) -> _Situation:
    alerts = [a for r in records for a in r.alerts if a.kind is AlertKind.PARAM_NORM_GROWTH]
    if not alerts:
        return [], []
    evidence = [
        f"The parameter norm grew too fast: {len(alerts)} alert(s) at steps "
        f"{_steps(a.step for a in alerts)}."
    ]
    return list(alerts), evidence


def _recurrent(records: Sequence[StepRecord], summary: RunSummary, facts: ModelFacts) -> _Situation:
    if not facts.recurrent:
        return [], []
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
    return [described], evidence


def _deep(facts: ModelFacts) -> _Situation:
    if not facts.recurrent or facts.num_layers is None or facts.num_layers < 2:
        return [], []
    described = {
        "kind": "model",
        "recurrent": True,
        "cell": facts.cell,
        "num_layers": facts.num_layers,
    }
    return [described], [f"{facts.num_layers} stacked recurrent layers."]


def _long_sequence(facts: ModelFacts) -> _Situation:
    if facts.seq_len is None:
        return [], []
    described = {"kind": "model", "recurrent": False, "seq_len": facts.seq_len}
    return [described], [f"Sequence length T = {facts.seq_len} (> 100)."]


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
