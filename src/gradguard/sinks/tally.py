"""How a step record is shown and counted: one rule for the console, the log and the report.

Every display of a run (console lines, ``logging`` records, the report's counts) reads a record
through these functions, so they cannot disagree: a step counts as clipped, skipped or backed off
by the same test everywhere (the test :class:`~gradguard.guard.Guard` uses for its counters), an
alert has one shown severity (a GradScaler overflow's non-finite gradient is routine: info), and
"what was done" is worded once, as is which steps are interventions a person must see.
"""

from __future__ import annotations

import dataclasses
import math

from gradguard.records import (
    CLIP_TOLERANCE,
    ActionKind,
    Alert,
    AlertKind,
    Reason,
    Severity,
    StepRecord,
)

__all__ = [
    "CLIP_TOLERANCE",
    "StepTally",
    "done_phrase",
    "is_clipped",
    "is_shown_intervention",
    "shown_severity",
]


_ROUTINE = {Reason.SCALER_OVERFLOW: {AlertKind.NONFINITE_GRAD}}
"""Alerts that the step's reason shows to be routine: shown as info, not counted as faults."""


def shown_severity(record: StepRecord, alert: Alert) -> Severity:
    """The severity to show for ``alert``: info when the record's reason makes it routine.

    A GradScaler overflow (reason ``scaler_overflow``) yields a non-finite gradient that the
    nonfinite detector, which cannot know about the scaler, calls critical; the guard skipped the
    step as the scaler expects, so it is shown and counted as info.
    """
    if alert.kind in _ROUTINE.get(record.reason, ()):
        return Severity.INFO
    return alert.severity


def is_clipped(record: StepRecord) -> bool:
    """``True`` for an applied step whose gradients were scaled down (a clip or clipped backoff)."""
    if not record.applied:
        return False
    coef = record.clip_coef
    return record.action is ActionKind.CLIP or (math.isfinite(coef) and coef < 1.0 - CLIP_TOLERANCE)


def is_shown_intervention(record: StepRecord) -> bool:
    """Whether a person must see this step: neither proceed nor clip, nor a routine scaler skip."""
    routine = record.reason is Reason.SCALER_OVERFLOW
    return record.action not in (ActionKind.PROCEED, ActionKind.CLIP) and not routine


def done_phrase(record: StepRecord) -> str:
    """What the guard did at this step, in a few words (empty for an unchanged step)."""
    action = record.action
    if action is ActionKind.PROCEED:
        return "clipped the gradients" if is_clipped(record) else ""
    if action is ActionKind.CLIP:
        coef = record.clip_coef
        by = f" by x{coef:.2g}" if math.isfinite(coef) else ""
        return f"clipped the gradients{by}"
    if action is ActionKind.SKIP and record.reason is Reason.REGIME_CHANGE:  # an undone rollback
        return "skipped the step and undid its rollback (weights from before it restored)"
    if action is ActionKind.SKIP:
        return "skipped the step (weights unchanged)"
    if action is ActionKind.BACKOFF:
        lr = f" to {record.lr:.3g}" if record.lr is not None else ""
        return f"lowered the learning rate{lr}"
    if action is ActionKind.ROLLBACK:
        to = f" to step {record.rolled_back_to}" if record.rolled_back_to is not None else ""
        return f"rolled back{to} ({record.steps_lost} steps lost)"
    if action is ActionKind.RESET_OPTIMIZER_STATE:
        return "reset the optimizer state"
    return "stopped the run"


@dataclasses.dataclass
class StepTally:
    """Counts of a run's steps, built one record at a time: the one source of every count shown.

    Attributes:
        steps: records seen.
        applied: steps whose update reached the weights.
        clipped: applied steps whose gradients were scaled down (:func:`is_clipped`).
        skipped: steps whose update was not applied (skips, rollbacks, aborts).
        backoffs: learning-rate back-offs.
        rollbacks: rollbacks to a snapshot.
        resets: optimizer-state resets.
        aborted: aborted steps (0 or 1).
        scaler_overflows: steps skipped for a GradScaler overflow (routine, not a fault).
        steps_lost: applied steps undone by rollbacks.
        alerts: alerts a person is told, by shown severity (:func:`shown_severity`): one per
            incident, not the alerts :class:`~gradguard.detect.episode.IncidentLatch` marked
            ``repeat`` (as ``Monitor.summary()`` counts them).
        alerts_with_repeats: every alert raised, repeats included.
    """

    steps: int = 0
    applied: int = 0
    clipped: int = 0
    skipped: int = 0
    backoffs: int = 0
    rollbacks: int = 0
    resets: int = 0
    aborted: int = 0
    scaler_overflows: int = 0
    steps_lost: int = 0
    alerts: dict[Severity, int] = dataclasses.field(default_factory=dict)
    alerts_with_repeats: int = 0

    def add(self, record: StepRecord) -> None:
        """Count one record."""
        self.steps += 1
        self.applied += record.applied
        self.skipped += not record.applied
        self.clipped += is_clipped(record)
        self.backoffs += record.action is ActionKind.BACKOFF
        self.rollbacks += record.action is ActionKind.ROLLBACK
        self.resets += record.action is ActionKind.RESET_OPTIMIZER_STATE
        self.aborted += record.action is ActionKind.ABORT
        self.scaler_overflows += record.reason is Reason.SCALER_OVERFLOW
        self.steps_lost += record.steps_lost
        alerts = record.alerts
        if not alerts:
            return
        self.alerts_with_repeats += len(alerts)
        for alert in alerts:
            if not alert.repeat:
                severity = shown_severity(record, alert)
                self.alerts[severity] = self.alerts.get(severity, 0) + 1

    def alert_counts(self) -> str:
        """``"2 critical, 1 warning, 3 info alerts (41 with repeats)"`` (``""`` if none).

        Only the severities seen are named; the total with repeats is added when repeats came.
        """
        parts = [f"{self.alerts[s]} {s.value}" for s in reversed(Severity) if self.alerts.get(s, 0)]
        told = sum(self.alerts.values())
        if told == self.alerts_with_repeats:
            return ", ".join(parts) + " alerts" if parts else ""
        counted = ", ".join(parts) + " alerts" if parts else "no new alerts"
        return f"{counted} ({self.alerts_with_repeats} with repeats)"
