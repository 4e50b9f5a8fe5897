"""Turn a run's events into remedies, each with the evidence (steps, norms) that calls for it.

The rules follow the practical guidelines for exploding gradients in recurrent networks:
clip the global norm of every RNN at 1.0; after a NaN/Inf loss lower the learning rate, check the
initialisation and clip; after loss spikes lower the clipping threshold and look at the data;
for deep RNNs (3+ layers) clip at 0.5 and prefer LSTM/GRU cells; for sequences longer than 100
steps add truncated BPTT; keep recurrent weights near spectral radius 1 with orthogonal
initialisation or a spectral-norm constraint.

References:
    Pascanu, Mikolov, Bengio (2013), "On the difficulty of training recurrent neural networks",
    ICML: gradient norm clipping and the spectral-radius condition for explosion.
    Saxe, McClelland, Ganguli (2014), "Exact solutions to the nonlinear dynamics of learning in
    deep linear neural networks", ICLR: orthogonal initialisation.
    Miyato et al. (2018), "Spectral Normalization for Generative Adversarial Networks", ICLR.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gradguard.records import AlertKind, Severity, StepRecord
from gradguard.report.summary import RunSummary, record_nonfinite, summarize

__all__ = ["Advice", "ModelFacts", "advise", "model_facts"]

_RECURRENT = re.compile(r"weight_hh(?:_l(\d+))?")
_EXPLOSION_ALERTS = {
    AlertKind.GRAD_NORM_SPIKE,
    AlertKind.GRAD_NORM_THRESHOLD,
    AlertKind.GROWTH_TREND,
    AlertKind.NONFINITE_GRAD,
    AlertKind.PARAM_NORM_GROWTH,
}
_MAX_LISTED = 8


@dataclasses.dataclass(frozen=True)
class Advice:
    """One remedy and why it applies to this run.

    Attributes:
        key: stable identifier of the rule (``"clip_rnn"``, ``"nonfinite"``, ...).
        severity: how pressing it is.
        title: a few words.
        action: what to do, one or two sentences.
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
) -> list[Advice]:
    """Map what happened in a run to remedies, most pressing first, each with its evidence.

    Args:
        records: the run's records in log order.
        metadata: the log header's metadata (``model`` facts are used when present).
        summary: :func:`~gradguard.report.summarize` of ``records`` when already computed.

    Returns:
        A list of :class:`Advice`; a single "no instability" entry when nothing went wrong.
    """
    meta = metadata or {}
    summary = summary or summarize(records)
    facts = model_facts(records, meta)
    advice: list[Advice] = []
    advice.extend(_nonfinite(records, summary))
    advice.extend(_loss_spikes(records))
    advice.extend(_clip_rnn(records, summary, facts))
    advice.extend(_deep_rnn(facts))
    advice.extend(_long_sequence(facts))
    advice.extend(_recurrent_weights(records, facts))
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


# ------------------------------------------------------------------------------------------------
# The rules. Each returns zero or one Advice.


def _nonfinite(records: Sequence[StepRecord], summary: RunSummary) -> list[Advice]:
    bad = [r for r in records if record_nonfinite(r)]
    if not bad:
        return []
    first = bad[0]
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
    return [
        Advice(
            key="nonfinite",
            severity=Severity.CRITICAL,
            title="NaN/Inf loss or gradients",
            action=(
                "Lower the learning rate (e.g. by 10x), verify the weight initialisation, and "
                "clip the global gradient norm."
            ),
            evidence=tuple(evidence),
        )
    ]


def _loss_spikes(records: Sequence[StepRecord]) -> list[Advice]:
    spikes = [a for r in records for a in r.alerts if a.kind is AlertKind.LOSS_SPIKE]
    if not spikes:
        return []
    worst = max(spikes, key=lambda a: -math.inf if a.value is None else a.value)
    evidence = [
        f"{len(spikes)} loss spike(s) at steps {_steps(a.step for a in spikes)}.",
    ]
    if worst.value is not None:
        evidence.append(f"Largest at step {worst.step}: value {_num(worst.value)}.")
    return [
        Advice(
            key="loss_spikes",
            severity=Severity.WARNING,
            title="Loss spikes",
            action=(
                "Lower the clipping threshold, and check the batches of these steps for outliers "
                "(corrupt samples, extreme targets)."
            ),
            evidence=tuple(evidence),
        )
    ]


def _clip_rnn(
    records: Sequence[StepRecord], summary: RunSummary, facts: ModelFacts
) -> list[Advice]:
    if not facts.recurrent:
        return []
    evidence = []
    if facts.recurrent_names:
        evidence.append(f"Recurrent weights in the culprits: {_names(facts.recurrent_names)}.")
    elif facts.cell:
        evidence.append(f"The run metadata declares a recurrent model ({facts.cell}).")
    else:
        evidence.append("The run metadata declares a recurrent model.")
    clipped = [r for r in records if r.clip_coef < 1.0]
    if clipped:
        smallest = min(clipped, key=lambda r: r.clip_coef)
        evidence.append(
            f"Clipping acted on {len(clipped)} of {len(records)} steps; smallest coefficient "
            f"{_num(smallest.clip_coef)} at step {smallest.step}."
        )
    else:
        evidence.append("No step was clipped.")
    if summary.max_norm is not None:
        step, norm = summary.max_norm
        evidence.append(f"Largest finite gradient norm: {_num(norm)} at step {step}.")
    return [
        Advice(
            key="clip_rnn",
            severity=Severity.WARNING if not clipped else Severity.INFO,
            title="Recurrent network: clip the gradient norm",
            action="Always clip the global gradient norm of an RNN; max_norm=1.0 is the default.",
            evidence=tuple(evidence),
        )
    ]


def _deep_rnn(facts: ModelFacts) -> list[Advice]:
    if not facts.recurrent or facts.num_layers is None or facts.num_layers < 3:
        return []
    gated = facts.cell in ("LSTM", "GRU")
    action = "Clip more aggressively (max_norm=0.5)" + (
        f"; the {facts.cell} cells already help." if gated else " and use LSTM or GRU cells."
    )
    return [
        Advice(
            key="deep_rnn",
            severity=Severity.WARNING,
            title="Deep recurrent stack",
            action=action,
            evidence=(f"{facts.num_layers} stacked recurrent layers (3 or more).",),
        )
    ]


def _long_sequence(facts: ModelFacts) -> list[Advice]:
    if facts.seq_len is None or facts.seq_len <= 100:
        return []
    return [
        Advice(
            key="long_sequence",
            severity=Severity.WARNING,
            title="Long sequences",
            action=(
                "Combine clipping with truncated BPTT: detach the hidden state every k steps "
                "(k <= 100) so gradients cross at most k recurrent Jacobians."
            ),
            evidence=(f"Sequence length T = {facts.seq_len} (> 100).",),
        )
    ]


def _recurrent_weights(records: Sequence[StepRecord], facts: ModelFacts) -> list[Advice]:
    if not facts.recurrent:
        return []
    hits: dict[tuple[str, str], list[tuple[int, float | None]]] = {}
    for record in records:
        top = record.top[0][0] if record.top else ""
        for alert in record.alerts:
            if alert.kind not in _EXPLOSION_ALERTS:
                continue
            named = [c for c in alert.culprits if _RECURRENT.search(c)]
            tensor = named[0] if named else top
            if _RECURRENT.search(tensor):
                hits.setdefault((alert.kind.value, tensor), []).append((alert.step, alert.value))
    if not hits:
        return []
    shown = []
    for (kind, tensor), events in list(hits.items())[:_MAX_LISTED]:
        values = [v for _, v in events if v is not None and math.isfinite(v)]
        peak = f", value up to {_num(max(values))}" if values else ""
        shown.append(
            f"{kind} on {tensor}: {len(events)} alert(s) at steps "
            f"{_steps(step for step, _ in events)}{peak}."
        )
    return [
        Advice(
            key="recurrent_weights",
            severity=Severity.WARNING,
            title="Recurrent weights drive the explosion",
            action=(
                "Keep the recurrent weights near spectral radius 1: initialise weight_hh "
                "orthogonally (per gate block), or constrain its spectral norm to at most 1."
            ),
            evidence=tuple(shown),
        )
    ]


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
