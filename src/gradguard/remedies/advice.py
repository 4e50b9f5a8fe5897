"""Map what was seen (model structure, alerts, an analysis) to concrete remedies with evidence.

The rules follow the practical guidelines for exploding gradients:

| situation | remedy |
| --- | --- |
| any recurrent network | clip the global gradient norm at 1.0 |
| NaN/Inf loss or gradient | lower the learning rate, check the initialisation, clip |
| loss spikes | lower the clipping threshold, look for outliers in the data |
| deep RNN (3+ stacked layers) | clip at 0.5, use LSTM/GRU cells |
| long sequences (T > 100) | truncated BPTT together with clipping |

and add what the analyses show: an explosive recurrent spectrum (constrain or re-initialise the
recurrent weights), a growing BPTT profile, a depth profile that amplifies, a cliff in reach of
a gradient step (clip at the bound that keeps the step short of it).

Analysis results are read through their ``to_dict()`` form (a ``"kind"`` key and plain values),
so advice can be given from live results and from JSON read back from disk alike.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from gradguard.errors import ConfigError
from gradguard.records import Alert, AlertKind, Observation
from gradguard.stats.recurrent import recurrent_kind

__all__ = ["Advice", "Remedy", "Trigger", "round_setting", "suggest"]

LONG_SEQUENCE = 100
"""Sequences longer than this get truncated BPTT."""

DEEP_RNN_LAYERS = 3
"""Stacked recurrent layers from which a network counts as a deep RNN."""


class Remedy(str, enum.Enum):
    """What to do."""

    CLIP_GRADIENTS = "clip_gradients"
    LOWER_LEARNING_RATE = "lower_learning_rate"
    STABLE_INIT = "stable_init"
    CONSTRAIN_RECURRENT = "constrain_recurrent"
    TRUNCATED_BPTT = "truncated_bptt"
    USE_GATED_RNN = "use_gated_rnn"
    CHECK_DATA = "check_data"
    ADD_NORMALIZATION = "add_normalization"


class Trigger(str, enum.Enum):
    """Which situation called for it."""

    RNN = "rnn"
    NONFINITE = "nonfinite"
    LOSS_SPIKE = "loss_spike"
    GRAD_NORM = "grad_norm"
    PARAM_GROWTH = "param_growth"
    DEEP_RNN = "deep_rnn"
    LONG_SEQUENCE = "long_sequence"
    EXPLOSIVE_SPECTRUM = "explosive_spectrum"
    GROWING_BPTT = "growing_bptt"
    DEPTH_GROWTH = "depth_growth"
    CLIFF = "cliff"


_PRIORITY = {
    Remedy.CLIP_GRADIENTS: 1,
    Remedy.LOWER_LEARNING_RATE: 2,
    Remedy.STABLE_INIT: 3,
    Remedy.CONSTRAIN_RECURRENT: 3,
    Remedy.TRUNCATED_BPTT: 4,
    Remedy.USE_GATED_RNN: 5,
    Remedy.CHECK_DATA: 5,
    Remedy.ADD_NORMALIZATION: 5,
}


@dataclasses.dataclass(frozen=True)
class Advice:
    """One remedy, why it is advised, and its settings.

    Attributes:
        action: what to do.
        trigger: the situation that called for it (the first, when several did).
        message: one sentence a person can act on.
        evidence: what was seen, one clause per observation, joined by ``"; "``.
        params: settings as ``(name, value)`` pairs, e.g. ``(("max_norm", 0.5),)``.
        priority: 0 is most urgent; the list returned by :func:`suggest` is sorted by it.
    """

    action: Remedy
    trigger: Trigger
    message: str
    evidence: str
    params: tuple[tuple[str, float | int | str], ...] = ()
    priority: int = 5

    def param(self, name: str) -> float | int | str | None:
        """The value of setting ``name``, or ``None``."""
        return dict(self.params).get(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "action": self.action.value,
            "trigger": self.trigger.value,
            "message": self.message,
            "evidence": self.evidence,
            "params": dict(self.params),
            "priority": self.priority,
        }

    def __str__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.params)
        return (
            f"[{self.action.value}] {self.message}"
            + (f" ({settings})" if settings else "")
            + (f" Evidence: {self.evidence}." if self.evidence else "")
        )


def _advice(
    action: Remedy,
    trigger: Trigger,
    message: str,
    evidence: str,
    *params: tuple[str, float | int | str],
    urgent: bool = False,
) -> Advice:
    priority = 0 if urgent else _PRIORITY[action]
    return Advice(action, trigger, message, evidence, tuple(params), priority)


def round_setting(value: float) -> float:
    """``value`` cut to two significant digits, rounding down: a setting a person types.

    Settings come from measurements (a median norm, a backed-off rate): ``0.03742668`` is advised
    as ``0.037``. Rounding down keeps a bound or a learning rate on the safe side.
    """
    if not (math.isfinite(value) and value > 0.0):
        return value
    power = 10.0 ** (math.floor(math.log10(value)) - 1)
    digits = math.floor(value / power * (1.0 + 1e-9))
    return float(f"{digits * power:.2g}")


def _num(value: Any) -> float:
    """A float from a to_dict value (``"inf"``/``"nan"`` strings included)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _clip(trigger: Trigger, max_norm: float, evidence: str, why: str) -> Advice:
    max_norm = round_setting(max_norm)
    return _advice(
        Remedy.CLIP_GRADIENTS,
        trigger,
        f"Clip the global gradient norm at {max_norm:g} "
        f"(torch.nn.utils.clip_grad_norm_ or gradguard's Guard): {why}",
        evidence,
        ("max_norm", max_norm),
    )


def _tbptt(k: int, evidence: str, trigger: Trigger) -> Advice:
    return _advice(
        Remedy.TRUNCATED_BPTT,
        trigger,
        f"Back-propagate through at most {k} steps (gradguard.remedies.TruncatedBPTT(k1={k}, "
        f"k2={k}), or detach the hidden state every {k} steps) together with clipping.",
        evidence,
        ("k1", k),
        ("k2", k),
    )


def _long_sequence(seq_len: int) -> Advice:
    evidence = f"sequence length {seq_len} > {LONG_SEQUENCE}"
    return _tbptt(LONG_SEQUENCE, evidence, Trigger.LONG_SEQUENCE)


def _from_model(model: nn.Module, seq_len: int | None) -> list[Advice]:
    kinds: list[str] = []
    layers = 0
    for _, module in model.named_modules():
        kind = recurrent_kind(module)
        if kind is None:
            continue
        kinds.append(kind)
        layers += module.num_layers if isinstance(module, nn.RNNBase) else 1
    if not kinds:
        return []
    return _structure(kinds, layers, seq_len)


_CELL_KINDS = {"RNN": "RNN_TANH", "RNN_TANH": "RNN_TANH", "RNN_RELU": "RNN_RELU"}


def _from_model_facts(data: Mapping[str, Any]) -> list[Advice]:
    """The structure rules from a ``{"kind": "model", ...}`` description (e.g. a log's metadata)."""
    cell = data.get("cell")
    kind = None
    if isinstance(cell, str) and cell.strip():
        kind = _CELL_KINDS.get(cell.strip().upper(), cell.strip().upper())
    if not (data.get("recurrent") or kind is not None):
        return []
    layers = data.get("num_layers")
    count = layers if isinstance(layers, int) and not isinstance(layers, bool) else 1
    return _structure([kind] if kind is not None else [], max(count, 1), None)


def _structure(kinds: Sequence[str], layers: int, seq_len: int | None) -> list[Advice]:
    """The guidelines for a recurrent network of ``kinds`` with ``layers`` stacked layers."""
    described = ", ".join(sorted(set(kinds))) or "cell type unknown"
    out = [
        _clip(
            Trigger.RNN,
            1.0,
            f"the model is recurrent ({described})",
            "recurrent networks need clipping as a matter of course.",
        )
    ]
    if layers >= DEEP_RNN_LAYERS:
        out.append(
            _clip(
                Trigger.DEEP_RNN,
                0.5,
                f"{layers} stacked recurrent layers",
                "deep recurrent stacks need tighter clipping.",
            )
        )
        vanilla = [k for k in kinds if k.startswith("RNN_")]
        if vanilla:
            out.append(
                _advice(
                    Remedy.USE_GATED_RNN,
                    Trigger.DEEP_RNN,
                    "Replace the plain RNN layers by nn.LSTM or nn.GRU: gating keeps a deep "
                    "recurrent stack trainable.",
                    f"{layers} stacked recurrent layers, {len(vanilla)} of them plain RNNs",
                )
            )
    if seq_len is not None and seq_len > LONG_SEQUENCE:
        out.append(_long_sequence(seq_len))
    return out


def _init_message(recurrent: bool | None) -> str:
    """How to verify the initialisation, worded for the model type when it is known."""
    if recurrent is False:
        return (
            "Verify the initialisation: gradguard.remedies.init_for_stability(model) gives "
            "Xavier (tanh) or He (ReLU) scaling to every layer."
        )
    if recurrent:
        return (
            "Verify the initialisation: gradguard.remedies.init_for_stability(model) makes the "
            "recurrent weights orthogonal per gate and scales the other layers by Xavier/He."
        )
    return (
        "Verify the initialisation: gradguard.remedies.init_for_stability(model) gives "
        "orthogonal recurrent blocks and Xavier/He elsewhere."
    )


def _nonfinite(evidence: str, lr: float | None, recurrent: bool | None = None) -> list[Advice]:
    lowered: list[tuple[str, float | int | str]] = [("factor", 0.1)]
    if lr is not None:
        lowered.append(("lr", round_setting(lr * 0.1)))
    return [
        _advice(
            Remedy.LOWER_LEARNING_RATE,
            Trigger.NONFINITE,
            "Lower the learning rate tenfold and restart from the last finite checkpoint.",
            evidence,
            *lowered,
            urgent=True,
        ),
        _advice(
            Remedy.STABLE_INIT,
            Trigger.NONFINITE,
            _init_message(recurrent),
            evidence,
            urgent=True,
        ),
        _clip(Trigger.NONFINITE, 1.0, evidence, "a bounded step cannot overflow the weights."),
    ]


def _loss_spike(evidence: str) -> list[Advice]:
    return [
        _clip(Trigger.LOSS_SPIKE, 0.5, evidence, "a lower threshold damps the spikes."),
        _advice(
            Remedy.CHECK_DATA,
            Trigger.LOSS_SPIKE,
            "Check the batches at the spikes for outliers (extreme values, wrong labels, "
            "very long sequences).",
            evidence,
        ),
    ]


def _from_observation(
    obs: Observation, lr: float | None, recurrent: bool | None = None
) -> list[Advice]:
    problems = []
    if not obs.loss_finite:
        problems.append(f"loss {obs.loss!r} at step {obs.step}")
    if not obs.finite:
        culprits = ", ".join(name for name, _ in obs.top[:3])
        problems.append(
            f"gradient norm {obs.total_norm!r} at step {obs.step}"
            + (f" (largest: {culprits})" if culprits else "")
        )
    return _nonfinite("; ".join(problems), lr, recurrent) if problems else []


def _from_alerts(
    alerts: Sequence[Alert], lr: float | None, recurrent: bool | None = None
) -> list[Advice]:
    out: list[Advice] = []
    for alert in alerts:
        evidence = f"step {alert.step}: {alert.message}".rstrip(".")
        if alert.kind in (AlertKind.NONFINITE_LOSS, AlertKind.NONFINITE_GRAD):
            out += _nonfinite(evidence, lr, recurrent)
        elif alert.kind in (AlertKind.LOSS_SPIKE, AlertKind.LOSS_THRESHOLD):
            out += _loss_spike(evidence)
        elif alert.kind in (
            AlertKind.GRAD_NORM_SPIKE,
            AlertKind.GRAD_NORM_THRESHOLD,
            AlertKind.GROWTH_TREND,
        ):
            bound = alert.threshold if alert.threshold is not None else 1.0
            out.append(
                _clip(
                    Trigger.GRAD_NORM,
                    float(min(bound, 1.0)) if math.isfinite(bound) and bound > 0 else 1.0,
                    evidence,
                    "the gradient norm is running away.",
                )
            )
            if any("weight_hh" in name for name in alert.culprits):
                out.append(_constrain(evidence, Trigger.GRAD_NORM))
        elif alert.kind == AlertKind.PARAM_NORM_GROWTH:
            out.append(
                _advice(
                    Remedy.LOWER_LEARNING_RATE,
                    Trigger.PARAM_GROWTH,
                    "Lower the learning rate (or add weight decay): the weights grow without "
                    "bound.",
                    evidence,
                    ("factor", 0.5),
                )
            )
        elif alert.kind == AlertKind.CULPRIT and any("weight_hh" in n for n in alert.culprits):
            out.append(_constrain(evidence, Trigger.GRAD_NORM))
    return out


def _constrain(evidence: str, trigger: Trigger) -> Advice:
    return _advice(
        Remedy.CONSTRAIN_RECURRENT,
        trigger,
        "Keep the recurrent matrices non-expansive: gradguard.remedies.constrain_recurrent_(model, "
        "max_radius=1.0) (or re-initialise them with init_for_stability).",
        evidence,
        ("max_radius", 1.0),
    )


def _from_report(data: Mapping[str, Any], lr: float | None) -> tuple[list[Advice], int | None]:
    """Advice from an analysis result's ``to_dict()``, and the sequence length it names."""
    kind = data.get("kind")
    out: list[Advice] = []
    seq_len = data.get("seq_len")
    seq = int(seq_len) if isinstance(seq_len, int) else None
    if kind == "recurrent_report":
        blocks = [b for b in data.get("blocks", []) if b.get("verdict") == "explosive"]
        near = [b for b in data.get("blocks", []) if b.get("verdict") == "near-critical"]
        if blocks:
            worst = max(blocks, key=lambda b: _num(b.get("effective_radius")))
            evidence = (
                f"{len(blocks)} recurrent block(s) explosive for T={seq}, worst "
                f"{worst.get('name')} gate {worst.get('gate')}: rho={_num(worst.get('radius')):.4g}"
                f" > critical {_num(data.get('critical_radius')):.4g}"
            )
            out.append(_constrain(evidence, Trigger.EXPLOSIVE_SPECTRUM))
            out.append(
                _advice(
                    Remedy.STABLE_INIT,
                    Trigger.EXPLOSIVE_SPECTRUM,
                    "Re-initialise the recurrent weights orthogonally per gate "
                    "(gradguard.remedies.init_for_stability) if training has not started.",
                    evidence,
                )
            )
            out.append(_clip(Trigger.EXPLOSIVE_SPECTRUM, 1.0, evidence, "ρ^T overflows otherwise."))
        elif near:
            evidence = f"{len(near)} recurrent block(s) near-critical for T={seq}"
            out.append(_clip(Trigger.EXPLOSIVE_SPECTRUM, 1.0, evidence, "ρ is close to 1."))
    elif kind == "bptt_profile":
        growth = _num(data.get("growth_factor"))
        if growth > 1.0:
            k = LONG_SEQUENCE
            if growth > 1.0 + 1e-12:
                k = max(5, min(LONG_SEQUENCE, int(math.log(100.0) / math.log(growth))))
            evidence = (
                f"||dL/dh_t|| grows by {growth:.4g} per step back over T={seq} steps "
                f"(x{growth ** max(0, (seq or 1) - 1):.3g} in total)"
            )
            out.append(_tbptt(k, evidence, Trigger.GROWING_BPTT))
            out.append(_clip(Trigger.GROWING_BPTT, 1.0, evidence, "the BPTT gradient grows."))
    elif kind == "depth_profile":
        growth = _num(data.get("growth_factor"))
        if growth > 1.5:
            evidence = f"the back-propagated signal grows {growth:.3g}x per layer toward the input"
            out.append(
                _advice(
                    Remedy.STABLE_INIT,
                    Trigger.DEPTH_GROWTH,
                    "Re-initialise with Xavier (tanh) or He (ReLU) scaling: "
                    "gradguard.remedies.init_for_stability(model, feedforward='he').",
                    evidence,
                )
            )
            out.append(
                _advice(
                    Remedy.ADD_NORMALIZATION,
                    Trigger.DEPTH_GROWTH,
                    "Add normalisation between layers (LayerNorm, or BatchNorm for large batches).",
                    evidence,
                )
            )
            out.append(_clip(Trigger.DEPTH_GROWTH, 1.0, evidence, "the gradient grows with depth."))
    elif kind == "cliff_check":
        if data.get("falls_off"):
            safe_clip = round_setting(_num(data.get("safe_clip")))
            safe_lr = round_setting(_num(data.get("safe_lr")))
            step_lr = _num(data.get("lr"))
            evidence = f"a plain step with lr={step_lr:g} falls off a cliff"
            if math.isfinite(safe_lr):
                evidence += f" at lr≈{safe_lr:.4g}"
            if math.isfinite(safe_clip) and safe_clip > 0:
                out.append(
                    _clip(Trigger.CLIFF, safe_clip, evidence, "the step then stops short of it.")
                )
            if math.isfinite(safe_lr) and safe_lr > 0:
                out.append(
                    _advice(
                        Remedy.LOWER_LEARNING_RATE,
                        Trigger.CLIFF,
                        f"Or lower the learning rate to at most {safe_lr:g}.",
                        evidence,
                        ("lr", safe_lr),
                    )
                )
            elif not (math.isfinite(safe_clip) and safe_clip > 0):
                out += _nonfinite(evidence, lr)[:1]
    elif kind == "landscape_scan":
        cliffs = data.get("cliffs") or []
        if cliffs:
            evidence = f"{len(cliffs)} cliff(s) along the {data.get('direction')} direction"
            out.append(_clip(Trigger.CLIFF, 1.0, evidence, "clipping keeps steps off the cliff."))
    elif kind == "eigen_dynamics":
        moduli = [_num(m) for m in data.get("unstable_moduli", [])]
        if moduli:
            evidence = f"{len(moduli)} unstable eigen-direction(s), max |lambda|={max(moduli):.4g}"
            out.append(_constrain(evidence, Trigger.EXPLOSIVE_SPECTRUM))
    elif kind == "model":
        out += _from_model_facts(data)
    elif kind == "explosion_table":
        pass  # a table of what-ifs: no situation to remedy
    else:
        raise ConfigError(
            f"cannot give advice from a result of kind {kind!r}; pass an Observation, Alerts, or "
            "an analysis result (recurrent_report, bptt_profile, depth_profile, cliff_check, "
            "landscape_scan, eigen_dynamics) or its to_dict(), or a model description "
            "{'kind': 'model', 'recurrent': True, 'cell': 'LSTM', 'num_layers': 2, 'seq_len': 200}."
        )
    return out, seq


def _merge(advice: list[Advice]) -> list[Advice]:
    """One entry per action: the tightest clip bound, evidence of every trigger, top priority."""
    merged: dict[Remedy, Advice] = {}
    for item in advice:
        current = merged.get(item.action)
        if current is None:
            merged[item.action] = item
            continue
        keep = current
        if item.action == Remedy.CLIP_GRADIENTS:
            bound_new, bound_old = _num(item.param("max_norm")), _num(current.param("max_norm"))
            keep = item if bound_new < bound_old else current
        elif item.action == Remedy.TRUNCATED_BPTT:
            keep = item if _num(item.param("k1")) < _num(current.param("k1")) else current
        evidence = current.evidence
        if item.evidence and item.evidence not in evidence.split("; "):
            evidence = f"{evidence}; {item.evidence}" if evidence else item.evidence
        merged[item.action] = dataclasses.replace(
            keep, evidence=evidence, priority=min(current.priority, item.priority)
        )
    return sorted(merged.values(), key=lambda a: (a.priority, a.action.value))


def suggest(
    model: nn.Module | None = None,
    evidence: Any = None,
    *,
    seq_len: int | None = None,
    lr: float | None = None,
    recurrent: bool | None = None,
) -> list[Advice]:
    """Say what to do about exploding gradients, with the evidence behind each remedy.

    Args:
        model: the model; its structure alone triggers the recurrent rules (any RNN: clip at
            1.0; 3+ stacked recurrent layers: clip at 0.5 and use LSTM/GRU; T > 100: truncated
            BPTT). May be ``None`` when ``evidence`` is given.
        evidence: what was seen, any of: a :class:`gradguard.records.Observation`, an
            :class:`gradguard.records.Alert` or a list of them, an analysis result from
            :mod:`gradguard.analysis` (or its ``to_dict()``), a model description without the
            model (``{"kind": "model", "recurrent": True, "cell": "LSTM", "num_layers": 3,
            "seq_len": 200}``, as a run log's metadata holds it), or a list mixing these.
        seq_len: the training sequence length, when no analysis names it.
        lr: the current learning rate, to turn "lower it" into a number.
        recurrent: whether the model is recurrent, when known without ``model`` (a log's
            tensor names tell): the initialisation advice is worded for it.

    Returns:
        One :class:`Advice` per remedy, most urgent first (clip bounds merged to the tightest).

    Raises:
        ConfigError: neither ``model`` nor ``evidence`` given, or evidence of an unknown kind.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013 (clipping); Williams and Peng 1990 (truncated BPTT); Saxe et al. 2014
        (orthogonal initialisation).
    """
    if model is None and evidence is None:
        raise ConfigError(
            "suggest needs a model, evidence (an Observation, Alerts, an analysis result), or both."
        )
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model must be an nn.Module or None, got {type(model).__name__}.")
    if model is not None and recurrent is None:
        recurrent = any(recurrent_kind(m) is not None for m in model.modules())
    out: list[Advice] = []
    items = evidence if isinstance(evidence, (list, tuple)) else [evidence]
    alerts = [item for item in items if isinstance(item, Alert)]
    if alerts:
        out += _from_alerts(alerts, lr, recurrent)
    for item in items:
        if item is None or isinstance(item, Alert):
            continue
        if isinstance(item, Observation):
            out += _from_observation(item, lr, recurrent)
            continue
        data = item.to_dict() if hasattr(item, "to_dict") else item
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"cannot read evidence of type {type(item).__name__}; pass an Observation, "
                "Alerts, or an analysis result."
            )
        advice, named = _from_report(data, lr)
        out += advice
        if seq_len is None and named is not None:
            seq_len = named
    if model is not None:
        out += _from_model(model, seq_len)
    elif seq_len is not None and seq_len > LONG_SEQUENCE:
        out.append(_long_sequence(seq_len))
    return _merge(out)
