"""Facts about a logged run, computed from its records: counts, first warning, first NaN, progress.

Counts come from :class:`~gradguard.sinks.StepTally`, the tally the console and the logging sink
keep, so a report never disagrees with what was printed during the run. Everything is computed
in one pass over the records, which may be a stream.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Iterable
from typing import Literal

from gradguard.records import ActionKind, Alert, Reason, Severity, StepRecord
from gradguard.remedies import round_setting
from gradguard.sinks import StepTally, shown_severity

__all__ = [
    "Confidence",
    "Progress",
    "RateEvidence",
    "RunSummary",
    "is_fault",
    "is_intervention",
    "progress",
    "rates",
    "record_nonfinite",
    "summarize",
]

TRAINED_FRACTION = 0.1
"""The loss must fall by this fraction of its starting level for a run to count as trained."""

GAVE_BACK_FRACTION = 0.5
"""A run that gave back more than this fraction of its best gain ended worse than it got."""

HELD_HIGH, HELD_MEDIUM = 50, 10
"""Fault-free steps at a backed-off rate for high and medium confidence in that rate."""

Verdict = Literal["trained", "did_not_train", "lost_ground", "unknown"]
Confidence = Literal["high", "medium", "low"]


@dataclasses.dataclass(frozen=True)
class Progress:
    """Did the loss go down? First, best and final loss, and the verdict they give.

    ``first`` and ``final`` are medians of the first and last few finite losses (a tenth of them,
    1 to 10), and ``best`` is the lowest median of nine consecutive ones, so a few lucky or noisy
    batches do not decide the verdict.

    Attributes:
        verdict: ``"trained"`` (the final loss is at least 10% below the first, and kept at
            least half of the best gain), ``"lost_ground"`` (it is 10% below, but gave back more
            than half of the best gain), ``"did_not_train"`` (the final loss is not 10% below
            the first, whatever happened between), ``"unknown"`` (fewer than two finite losses).
        first: typical loss of the first steps.
        best: lowest median of nine consecutive finite losses, at the step in their middle (the
            lowest loss while fewer than nine were logged).
        final: typical loss of the last steps.
    """

    verdict: Verdict
    first: float | None
    best: tuple[int, float] | None
    final: float | None


BEST_WINDOW = 9
"""Consecutive finite losses whose median is a candidate for the best loss."""


class _ProgressTracker:
    """:class:`Progress` in one pass: the first and last ten finite losses and the best."""

    def __init__(self) -> None:
        self.count = 0
        self.head: list[float] = []
        self.tail: collections.deque[float] = collections.deque(maxlen=10)
        self.window: collections.deque[tuple[int, float]] = collections.deque(maxlen=BEST_WINDOW)
        self.best: tuple[int, float] | None = None
        self.lowest: tuple[int, float] | None = None

    def add(self, record: StepRecord) -> None:
        loss = record.loss
        if loss is None or not math.isfinite(loss):
            return
        self.count += 1
        if len(self.head) < 10:
            self.head.append(loss)
        self.tail.append(loss)
        if self.lowest is None or loss < self.lowest[1]:
            self.lowest = (record.step, loss)
        self.window.append((record.step, loss))
        if len(self.window) == BEST_WINDOW:
            middle = self.window[BEST_WINDOW // 2][0]
            typical = statistics.median(v for _, v in self.window)
            if self.best is None or typical < self.best[1]:
                self.best = (middle, typical)

    def result(self) -> Progress:
        if self.best is None:
            self.best = self.lowest
        if self.count < 2 or self.best is None:
            return Progress("unknown", None, None, None)
        k = max(1, min(10, self.count // 10))
        first = statistics.median(self.head[:k])
        final = statistics.median(list(self.tail)[-k:])
        scale = max(abs(first), 1e-12)
        gain, best_gain = first - final, first - self.best[1]
        if gain < TRAINED_FRACTION * scale:
            verdict: Verdict = "did_not_train"
        elif gain < (1.0 - GAVE_BACK_FRACTION) * best_gain:
            verdict = "lost_ground"
        else:
            verdict = "trained"
        return Progress(verdict, first, self.best, final)


def progress(records: Iterable[StepRecord]) -> Progress:
    """Compare the first, best and final loss of ``records`` (see :class:`Progress`)."""
    tracker = _ProgressTracker()
    for record in records:
        tracker.add(record)
    return tracker.result()


@dataclasses.dataclass(frozen=True)
class RateEvidence:
    """What the log shows about the learning rate.

    Attributes:
        start: learning rate of the first record that has one.
        backoffs: ``(step, rate after it)`` of each back-off.
        held: the rate the last back-off set, when the run then applied steps at it.
        held_steps: applied steps at (or below) ``held`` after the last back-off, up to the
            first fault at that rate or the end.
        faults_after: whether NaN/Inf or rollbacks still came at or below ``held``.
        suggested: the rate to try, rounded down to two digits (``None``: no evidence).
        confidence: how firmly the log supports ``suggested``.
    """

    start: float | None
    backoffs: tuple[tuple[int, float], ...]
    held: float | None
    held_steps: int
    faults_after: bool
    suggested: float | None
    confidence: Confidence


class _RateTracker:
    """:class:`RateEvidence` in one pass."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.backoffs: list[tuple[int, float]] = []
        self.faults = 0
        self.held_steps = 0
        self.faults_after = False

    def add(self, record: StepRecord) -> None:
        if self.start is None and record.lr is not None:
            self.start = record.lr
        fault = is_fault(record) or record.action is ActionKind.ROLLBACK
        self.faults += fault
        if record.action is ActionKind.BACKOFF and record.lr is not None:
            self.backoffs.append((record.step, record.lr))
            self.held_steps, self.faults_after = 0, False
            return
        if not self.backoffs or self.faults_after:
            return
        held = self.backoffs[-1][1]
        at_rate = record.lr is None or record.lr <= held * (1.0 + 1e-6)
        if at_rate and fault:
            self.faults_after = True
        else:
            self.held_steps += at_rate and record.applied

    def result(self) -> RateEvidence:
        backoffs = tuple(self.backoffs)
        if backoffs:
            held = backoffs[-1][1]
            if self.faults_after:
                lowest = min(lr for _, lr in backoffs)
                suggested = round_setting(lowest / 10.0)
                return RateEvidence(
                    self.start, backoffs, held, self.held_steps, True, suggested, "low"
                )
            steps = self.held_steps
            confidence: Confidence = (
                "high" if steps >= HELD_HIGH else "medium" if steps >= HELD_MEDIUM else "low"
            )
            return RateEvidence(
                self.start, backoffs, held, steps, False, round_setting(held), confidence
            )
        if self.faults >= 2 and self.start is not None:
            suggested = round_setting(self.start / 10.0)
            return RateEvidence(self.start, (), None, 0, True, suggested, "low")
        return RateEvidence(self.start, (), None, 0, False, None, "low")


def rates(records: Iterable[StepRecord]) -> RateEvidence:
    """Read the learning rate the run held after gradguard's back-offs.

    The rate set by the last back-off is the evidence: if the run then applied steps at it
    without NaN/Inf or rollbacks, that is a rate this model trains at (high confidence after 50
    such steps, medium after 10). If faults went on at it, or there was no back-off but faults
    repeated, a tenth of the lowest rate seen is a guess (low confidence).
    """
    tracker = _RateTracker()
    for record in records:
        tracker.add(record)
    return tracker.result()


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
        alerts_by_severity: alerts per shown severity, repeats left out: one per incident (the
            alerts :class:`~gradguard.detect.episode.IncidentLatch` marked ``repeat`` are not
            counted), plus info alerts.
        alerts_by_kind: the same alerts per kind (by value, e.g. ``"loss_spike"``); kinds
            that only repeated are left out.
        first_warning: the first alert of severity warning or above.
        first_nonfinite_step: first step whose loss or gradient norm was NaN/Inf (a GradScaler's
            routine overflow excluded).
        nonfinite_steps: how many steps had a NaN/Inf loss or gradient norm (same exclusion).
        max_norm: largest finite gradient norm and its step.
        final_loss: loss of the last record with a finite loss.
        final_lr: learning rate of the last record that has one.
        steps_lost: optimizer steps undone by rollbacks, summed.
        clipped_steps: steps whose gradients were scaled down (clip coefficient below 1).
        smallest_clip: the strongest clipping, as ``(step, coefficient)``; ``None`` when none.
        tally: the counts every display shares (clipped, skipped, alerts by shown severity).
        alerts_with_repeats: every alert in the log, repeats included.
        progress: first, best and final loss and whether the run trained.
        rate: what the back-offs showed about the learning rate.
        last: the last record (``None`` for an empty log).
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
    tally: StepTally = dataclasses.field(default_factory=StepTally)
    alerts_with_repeats: int = 0
    progress: Progress = Progress("unknown", None, None, None)
    rate: RateEvidence = RateEvidence(None, (), None, 0, False, None, "low")
    last: StepRecord | None = None

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
    kinds: Counter[str] = Counter()
    first_warning: Alert | None = None
    first_nonfinite: int | None = None
    nonfinite = 0
    max_norm: tuple[int, float] | None = None
    final_loss: float | None = None
    final_lr: float | None = None
    clipped = 0
    smallest_clip: tuple[int, float] | None = None
    first_step: int | None = None
    last_step: int | None = None
    tally, tracked, rate = StepTally(), _ProgressTracker(), _RateTracker()
    last: StepRecord | None = None
    for record in records:
        tally.add(record)
        tracked.add(record)
        rate.add(record)
        last = record
        if first_step is None:
            first_step = record.step
        last_step = record.step
        if record.clip_coef < 1.0:
            clipped += 1
            if smallest_clip is None or record.clip_coef < smallest_clip[1]:
                smallest_clip = (record.step, record.clip_coef)
        if is_intervention(record):
            actions[record.action] += 1
        for alert in record.alerts:
            severity = shown_severity(record, alert)  # a GradScaler overflow is routine: info
            if not alert.repeat:  # counted as the tally counts: an incident once
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
        steps=tally.steps,
        first_step=first_step,
        last_step=last_step,
        actions=dict(actions),
        applied_steps=tally.applied,
        alerts_by_severity=dict(tally.alerts),
        alerts_by_kind=dict(kinds),
        first_warning=first_warning,
        first_nonfinite_step=first_nonfinite,
        nonfinite_steps=nonfinite,
        max_norm=max_norm,
        final_loss=final_loss,
        final_lr=final_lr,
        steps_lost=tally.steps_lost,
        clipped_steps=clipped,
        smallest_clip=smallest_clip,
        tally=tally,
        alerts_with_repeats=tally.alerts_with_repeats,
        progress=tracked.result(),
        rate=rate.result(),
        last=last,
    )
