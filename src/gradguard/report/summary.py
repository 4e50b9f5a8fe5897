"""Facts about a logged run, computed from its records: counts, first warning, first NaN, ..."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable

from gradguard.records import ActionKind, Alert, Severity, StepRecord

__all__ = ["RunSummary", "is_intervention", "record_nonfinite", "summarize"]


def is_intervention(record: StepRecord) -> bool:
    """``True`` when the guard did anything but let the step through unchanged."""
    return record.action is not ActionKind.PROCEED


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What happened in a run, in numbers a person reads first.

    Attributes:
        steps: how many records the log holds.
        first_step: step of the first record (``None`` for an empty log).
        last_step: step of the last record.
        actions: how many steps ended with each action other than ``proceed``.
        applied_steps: steps whose update reached the weights.
        alerts_by_severity: alert counts per severity.
        alerts_by_kind: alert counts per kind (by value, e.g. ``"loss_spike"``).
        first_warning: the first alert of severity warning or above.
        first_nonfinite_step: first step whose loss or gradient norm was NaN/Inf.
        nonfinite_steps: how many steps had a NaN/Inf loss or gradient norm.
        max_norm: largest finite gradient norm and its step.
        final_loss: loss of the last record with a finite loss.
        final_lr: learning rate of the last record that has one.
        steps_lost: optimizer steps undone by rollbacks, summed.
        clipped_steps: steps whose gradients were scaled down (clip coefficient below 1).
        smallest_clip: the strongest clipping, as ``(step, coefficient)``; ``None`` when none.
    """

    steps: int
    first_step: int | None
    last_step: int | None
    actions: dict[ActionKind, int]
    applied_steps: int
    alerts_by_severity: dict[Severity, int]
    alerts_by_kind: dict[str, int]
    first_warning: Alert | None
    first_nonfinite_step: int | None
    nonfinite_steps: int
    max_norm: tuple[int, float] | None
    final_loss: float | None
    final_lr: float | None
    steps_lost: int
    clipped_steps: int = 0
    smallest_clip: tuple[int, float] | None = None

    @property
    def interventions(self) -> int:
        """Steps where the guard clipped, skipped, backed off, rolled back, reset or aborted."""
        return sum(self.actions.values())


def record_nonfinite(record: StepRecord) -> bool:
    """``True`` when the step's loss or gradient norm is NaN or infinite."""
    return any(v is not None and not math.isfinite(v) for v in (record.loss, record.total_norm))


def summarize(records: Iterable[StepRecord]) -> RunSummary:
    """Count what happened in ``records`` (in log order) and find the first signs of trouble.

    One pass: ``records`` may be a stream (the report feeds a million-step log through it).
    """
    actions: Counter[ActionKind] = Counter()
    severities: Counter[Severity] = Counter()
    kinds: Counter[str] = Counter()
    first_warning: Alert | None = None
    first_nonfinite: int | None = None
    nonfinite = 0
    max_norm: tuple[int, float] | None = None
    final_loss: float | None = None
    final_lr: float | None = None
    count = applied = lost = clipped = 0
    smallest_clip: tuple[int, float] | None = None
    first_step: int | None = None
    last_step: int | None = None
    for record in records:
        count += 1
        if first_step is None:
            first_step = record.step
        last_step = record.step
        applied += record.applied
        lost += record.steps_lost
        if record.clip_coef < 1.0:
            clipped += 1
            if smallest_clip is None or record.clip_coef < smallest_clip[1]:
                smallest_clip = (record.step, record.clip_coef)
        if is_intervention(record):
            actions[record.action] += 1
        for alert in record.alerts:
            severities[alert.severity] += 1
            kinds[alert.kind.value] += 1
            if first_warning is None and alert.severity.rank >= Severity.WARNING.rank:
                first_warning = alert
        if record_nonfinite(record):
            nonfinite += 1
            if first_nonfinite is None:
                first_nonfinite = record.step
        norm = record.total_norm
        if norm is not None and math.isfinite(norm) and (max_norm is None or norm > max_norm[1]):
            max_norm = (record.step, norm)
        if record.loss is not None and math.isfinite(record.loss):
            final_loss = record.loss
        if record.lr is not None:
            final_lr = record.lr
    return RunSummary(
        steps=count,
        first_step=first_step,
        last_step=last_step,
        actions=dict(actions),
        applied_steps=applied,
        alerts_by_severity=dict(severities),
        alerts_by_kind=dict(kinds),
        first_warning=first_warning,
        first_nonfinite_step=first_nonfinite,
        nonfinite_steps=nonfinite,
        max_norm=max_norm,
        final_loss=final_loss,
        final_lr=final_lr,
        steps_lost=lost,
        clipped_steps=clipped,
        smallest_clip=smallest_clip,
    )
