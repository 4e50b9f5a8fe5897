"""Facts about a logged run, computed from its records: counts, first warning, first NaN, progress.

Counts come from :class:`~gradguard.sinks.StepTally`, the tally the console and the logging sink
keep, so a report never disagrees with what was printed during the run.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from gradguard.records import ActionKind, Alert, Reason, Severity, StepRecord
from gradguard.sinks import StepTally, shown_severity

__all__ = [
    "Progress",
    "RunSummary",
    "is_fault",
    "is_intervention",
    "progress",
    "record_nonfinite",
    "summarize",
]

TRAINED_FRACTION = 0.1
"""The loss must fall by this fraction of its starting level for a run to count as trained."""

GAVE_BACK_FRACTION = 0.5
"""A run that gave back more than this fraction of its best gain ended worse than it got."""

Verdict = Literal["trained", "did_not_train", "lost_ground", "unknown"]


@dataclasses.dataclass(frozen=True)
class Progress:
    """Did the loss go down? First, best and final loss, and the verdict they give.

    ``first`` and ``final`` are medians of the first and last few finite losses (a tenth of them,
    1 to 10), so one noisy batch does not decide the verdict.

    Attributes:
        verdict: ``"trained"`` (the final loss is at least 10% below the first, and kept at
            least half of the best gain), ``"lost_ground"`` (it is 10% below, but gave back more
            than half of the best gain), ``"did_not_train"`` (the final loss is not 10% below
            the first, whatever happened between), ``"unknown"`` (fewer than two finite losses).
        first: typical loss of the first steps.
        best: lowest finite loss and its step.
        final: typical loss of the last steps.
    """

    verdict: Verdict
    first: float | None
    best: tuple[int, float] | None
    final: float | None


def progress(records: Sequence[StepRecord]) -> Progress:
    """Compare the first, best and final loss of ``records`` (see :class:`Progress`)."""
    losses = [(r.step, r.loss) for r in records if r.loss is not None and math.isfinite(r.loss)]
    if len(losses) < 2:
        return Progress("unknown", None, None, None)
    k = max(1, min(10, len(losses) // 10))
    first = statistics.median(v for _, v in losses[:k])
    final = statistics.median(v for _, v in losses[-k:])
    best = min(losses, key=lambda sv: sv[1])
    scale = max(abs(first), 1e-12)
    gain, best_gain = first - final, first - best[1]
    if gain < TRAINED_FRACTION * scale:
        verdict: Verdict = "did_not_train"
    elif gain < (1.0 - GAVE_BACK_FRACTION) * best_gain:
        verdict = "lost_ground"
    else:
        verdict = "trained"
    return Progress(verdict, first, best, final)


def is_fault(record: StepRecord) -> bool:
    """A NaN/Inf loss or gradient norm that is not a GradScaler's routine overflow."""
    return record_nonfinite(record) and record.reason is not Reason.SCALER_OVERFLOW


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
        first_nonfinite_step: first step whose loss or gradient norm was NaN/Inf (a GradScaler's
            routine overflow excluded).
        nonfinite_steps: how many steps had a NaN/Inf loss or gradient norm (same exclusion).
        max_norm: largest finite gradient norm and its step.
        final_loss: loss of the last record with a finite loss.
        final_lr: learning rate of the last record that has one.
        steps_lost: optimizer steps undone by rollbacks, summed.
        tally: the counts every display shares (clipped, skipped, alerts by shown severity).
        progress: first, best and final loss and whether the run trained.
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
    tally: StepTally
    progress: Progress

    @property
    def interventions(self) -> int:
        """Steps where the guard clipped, skipped, backed off, rolled back, reset or aborted."""
        return sum(self.actions.values())


def record_nonfinite(record: StepRecord) -> bool:
    """``True`` when the step's loss or gradient norm is NaN or infinite."""
    return any(v is not None and not math.isfinite(v) for v in (record.loss, record.total_norm))


def summarize(records: Sequence[StepRecord]) -> RunSummary:
    """Count what happened in ``records`` (in log order) and find the first signs of trouble."""
    tally = StepTally()
    actions: Counter[ActionKind] = Counter()
    severities: Counter[Severity] = Counter()
    kinds: Counter[str] = Counter()
    first_warning: Alert | None = None
    first_nonfinite: int | None = None
    nonfinite = 0
    max_norm: tuple[int, float] | None = None
    final_loss: float | None = None
    final_lr: float | None = None
    for record in records:
        tally.add(record)
        if is_intervention(record):
            actions[record.action] += 1
        for alert in record.alerts:
            severity = shown_severity(record, alert)
            severities[severity] += 1
            kinds[alert.kind.value] += 1
            if first_warning is None and severity.rank >= Severity.WARNING.rank:
                first_warning = alert
        if is_fault(record):
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
        steps=len(records),
        first_step=records[0].step if records else None,
        last_step=records[-1].step if records else None,
        actions=dict(actions),
        applied_steps=sum(r.applied for r in records),
        alerts_by_severity=dict(severities),
        alerts_by_kind=dict(kinds),
        first_warning=first_warning,
        first_nonfinite_step=first_nonfinite,
        nonfinite_steps=nonfinite,
        max_norm=max_norm,
        final_loss=final_loss,
        final_lr=final_lr,
        steps_lost=sum(r.steps_lost for r in records),
        tally=tally,
        progress=progress(records),
    )
