"""The data that flows between gradguard's layers: plain, frozen, JSON-serialisable records.

No torch here: an :class:`Observation` holds host floats (the result of the one host transfer per
step), detectors turn it into :class:`Alert` s, the policy into an :class:`Action`, and the guard
writes a :class:`StepRecord` that sinks log and the report reads back.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

__all__ = [
    "CLIP_TOLERANCE",
    "SCHEMA_VERSION",
    "Action",
    "ActionKind",
    "Alert",
    "AlertKind",
    "Observation",
    "Reason",
    "Severity",
    "StepRecord",
    "from_json_dict",
    "most_severe",
    "reason_for",
    "to_json_dict",
]

SCHEMA_VERSION = 1
"""Version of the JSON layout of the records; bumped on any incompatible change."""


class Severity(str, enum.Enum):
    """How urgent an alert is; ordered ``INFO < WARNING < CRITICAL``."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0, 1 or 2: lets callers compare severities."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.CRITICAL: 2}


CLIP_TOLERANCE = 1e-5
"""A step whose gradients were scaled by less than ``1 - CLIP_TOLERANCE`` counts as clipped."""


class AlertKind(str, enum.Enum):
    """What a detector saw."""

    NONFINITE_GRAD = "nonfinite_grad"
    NONFINITE_LOSS = "nonfinite_loss"
    GRAD_NORM_THRESHOLD = "grad_norm_threshold"
    GRAD_NORM_SPIKE = "grad_norm_spike"
    GROWTH_TREND = "growth_trend"
    LOSS_SPIKE = "loss_spike"
    LOSS_THRESHOLD = "loss_threshold"
    PARAM_NORM_GROWTH = "param_norm_growth"
    CULPRIT = "culprit"
    EARLY_EXPLOSION = "early_explosion"
    LOSS_JUMP = "loss_jump"
    LOSS_HIGH = "loss_high"
    LOSS_STUCK = "loss_stuck"
    OSCILLATION = "oscillation"
    LOSS_DRIFT = "loss_drift"


class ActionKind(str, enum.Enum):
    """What the guard does with an optimizer step."""

    PROCEED = "proceed"
    CLIP = "clip"
    SKIP = "skip"
    BACKOFF = "backoff"
    ROLLBACK = "rollback"
    RESET_OPTIMIZER_STATE = "reset_optimizer_state"
    ABORT = "abort"


class Reason(str, enum.Enum):
    """Why the guard chose its action; every :class:`Action` carries one."""

    HEALTHY = "healthy"
    NORM_ABOVE_BOUND = "norm_above_bound"
    NONFINITE_GRAD = "nonfinite_grad"
    NONFINITE_LOSS = "nonfinite_loss"
    SPIKE = "spike"
    GROWTH_TREND = "growth_trend"
    LOSS_SPIKE = "loss_spike"
    REPEATED_FAULTS = "repeated_faults"
    DIVERGENCE = "divergence"
    RECOVERED = "recovered"
    BUDGET_EXHAUSTED = "budget_exhausted"
    LOSS_ABOVE_BOUND = "loss_above_bound"
    PARAM_NORM_GROWTH = "param_norm_growth"
    CULPRIT = "culprit"
    SCALER_OVERFLOW = "scaler_overflow"
    OSCILLATION = "oscillation"
    REGIME_CHANGE = "regime_change"
    EARLY_EXPLOSION = "early_explosion"
    NONFINITE_PARAM = "nonfinite_param"


_REASON_OF_KIND = {
    AlertKind.NONFINITE_GRAD: Reason.NONFINITE_GRAD,
    AlertKind.NONFINITE_LOSS: Reason.NONFINITE_LOSS,
    AlertKind.GRAD_NORM_THRESHOLD: Reason.NORM_ABOVE_BOUND,
    AlertKind.GRAD_NORM_SPIKE: Reason.SPIKE,
    AlertKind.GROWTH_TREND: Reason.GROWTH_TREND,
    AlertKind.LOSS_SPIKE: Reason.LOSS_SPIKE,
    AlertKind.LOSS_THRESHOLD: Reason.LOSS_ABOVE_BOUND,
    AlertKind.PARAM_NORM_GROWTH: Reason.PARAM_NORM_GROWTH,
    AlertKind.CULPRIT: Reason.CULPRIT,
    AlertKind.EARLY_EXPLOSION: Reason.EARLY_EXPLOSION,
    AlertKind.LOSS_JUMP: Reason.LOSS_SPIKE,
    AlertKind.LOSS_HIGH: Reason.LOSS_ABOVE_BOUND,
    AlertKind.LOSS_STUCK: Reason.DIVERGENCE,
    AlertKind.OSCILLATION: Reason.OSCILLATION,
    AlertKind.LOSS_DRIFT: Reason.GROWTH_TREND,
}


def reason_for(kind: AlertKind) -> Reason:
    """The :class:`Reason` a record gives when an alert of ``kind`` decided it."""
    return _REASON_OF_KIND[kind]


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one optimizer step looked like, in host floats.

    Attributes:
        step: optimizer step index (0-based), not micro-batch index.
        loss: the loss value, or ``None`` when the caller gave none.
        total_norm: global gradient norm; ``inf``/``nan`` when any gradient is non-finite or its
            norm overflows float32 (both count as an explosion).
        finite: whether ``total_norm`` is finite.
        top: the largest per-tensor gradient norms as ``(name, norm)`` pairs, largest first.
        num_tensors: how many tensors had a gradient.
        param_norm: global parameter norm when measured this step, else ``None``.
        tensor_norms: every per-tensor gradient norm by name, only when a detector asked for them.
        clip_coef: the factor by which a clipper object shrank the global norm before this
            observation (it travelled in the step's one transfer); ``None`` when none ran.
    """

    step: int
    loss: float | None
    total_norm: float
    finite: bool
    top: tuple[tuple[str, float], ...] = ()
    num_tensors: int = 0
    param_norm: float | None = None
    tensor_norms: tuple[tuple[str, float], ...] | None = None
    clip_coef: float | None = None

    @property
    def loss_finite(self) -> bool:
        """``True`` when no loss was given or the loss is finite."""
        return self.loss is None or math.isfinite(self.loss)


@dataclasses.dataclass(frozen=True)
class Alert:
    """One thing a detector noticed, with a sentence a person can act on.

    Attributes:
        step: optimizer step at which it was raised.
        severity: how urgent it is.
        kind: what was seen.
        message: one sentence: what happened and what to do.
        detector: name of the detector that raised it.
        culprits: names of the tensors most responsible, largest first.
        value: the measured quantity that tripped the rule (norm, loss, z-score, ...).
        threshold: the bound it was compared with.
        steps_to_overflow: for trends, forecast steps left before the norm reaches its limit.
        since: for trends, the step at which the growth began, as far as the detector can tell.
        repeat: the incident it belongs to was already reported (see
            :class:`~gradguard.detect.episode.IncidentLatch`): the policy still acts on it, a
            person need not be told again.
    """

    step: int
    severity: Severity
    kind: AlertKind
    message: str
    detector: str = ""
    culprits: tuple[str, ...] = ()
    value: float | None = None
    threshold: float | None = None
    steps_to_overflow: float | None = None
    since: int | None = None
    repeat: bool = False


def most_severe(alerts: Sequence[Alert]) -> Alert | None:
    """The first alert of the highest severity in ``alerts``, or ``None`` when there is none."""
    best: Alert | None = None
    for alert in alerts:
        if best is None or alert.severity.rank > best.severity.rank:
            best = alert
    return best


@dataclasses.dataclass(frozen=True)
class Action:
    """A decision of the policy: what to do, why, and a sentence explaining it."""

    kind: ActionKind
    reason: Reason
    message: str = ""


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """What the guard did at one optimizer step and why; one line of the JSONL log.

    Attributes:
        step: optimizer step index.
        action: what was done.
        reason: why.
        message: one sentence for a person.
        applied: whether the optimizer step was applied to the weights.
        loss: the loss given for this step, if any.
        total_norm: global gradient norm before clipping.
        clip_coef: factor the gradients were multiplied by on an applied step (1.0 when not
            clipped, and on a skipped step, whose gradients never reach the weights). With a
            clipper object that scales tensors differently (per tensor, per unit, by value) it is
            the factor by which the global norm shrank, ``norm(after) / norm(before)``, so
            ``total_norm * clip_coef`` is always the global norm that was applied; ``nan`` when
            the clipper returned no coefficient.
        lr: learning rate of the first parameter group after the action.
        alerts: alerts raised at this step.
        top: the largest per-tensor gradient norms as ``(name, norm)`` pairs.
        rolled_back_to: step of the snapshot restored by a rollback.
        steps_lost: optimizer steps undone by a rollback.
    """

    step: int
    action: ActionKind
    reason: Reason
    message: str = ""
    applied: bool = True
    loss: float | None = None
    total_norm: float | None = None
    clip_coef: float = 1.0
    lr: float | None = None
    alerts: tuple[Alert, ...] = ()
    top: tuple[tuple[str, float], ...] = ()
    rolled_back_to: int | None = None
    steps_lost: int = 0


# --------------------------------------------------------------------------------------------
# JSON round-trip. Floats that JSON cannot hold (nan, inf) are written as strings.

_NONFINITE_OUT = {math.inf: "inf", -math.inf: "-inf"}
_NONFINITE_IN = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}

R = TypeVar("R")


def to_json_dict(record: Any) -> dict[str, Any]:
    """Turn a record into a dict of JSON-safe values (enums by value, nan/inf as strings)."""
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"to_json_dict expects a record instance, got {record!r}")
    return {f.name: _encode(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _encode(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return _NONFINITE_OUT.get(value, value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json_dict(value)
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    return value


def from_json_dict(cls: type[R], data: Mapping[str, Any]) -> R:
    """Rebuild a ``cls`` record from :func:`to_json_dict` output; unknown keys are ignored."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: _decode(hints[k], v) for k, v in data.items() if k in names}
    return cls(**kwargs)


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            return hint(value)
        if hint is float:
            return _NONFINITE_IN[value] if isinstance(value, str) else float(value)
        if dataclasses.is_dataclass(hint):
            return from_json_dict(hint, value)
    return value
