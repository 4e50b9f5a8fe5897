"""One incident, one reported alert: later alerts of an open incident are marked as repeats.

A run in trouble trips several detectors at once and keeps tripping them step after step (a
growing norm is a trend, then a spike, then non-finite). Each of those alerts is true, and the
policy needs every one of them: a warning keeps its incident open and its severity decides what
is done. A person needs the incident once. So nothing is suppressed and no severity is changed;
instead :class:`IncidentLatch` marks an alert ``repeat=True`` when it belongs to an incident that
was already reported, and sinks, summaries and benchmarks count only the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from gradguard.detect.base import check_int
from gradguard.records import Alert, Severity, most_severe

__all__ = ["IncidentLatch", "reported"]


class IncidentLatch:
    """Mark the alerts of an incident that was already reported as repeats.

    An incident opens with the first warning or critical alert, stays open while such alerts
    keep coming, and closes after ``quiet`` steps without one: the same rule by which the
    guard's policy opens and closes its incidents. Per step, the most severe alert is news when
    no incident is open, or when it is critical and the incident had only warnings so far (an
    escalation); every other warning or critical alert is marked ``repeat=True``. Info alerts
    are never marked and never open an incident.

    Args:
        quiet: steps without a warning or critical alert that close an incident.
    """

    def __init__(self, *, quiet: int = 20) -> None:
        self.quiet = check_int("quiet", quiet, minimum=1, fix="Use the policy's quiet (20).")
        self.last_alarm: int | None = None  # step of the open incident's latest alarm
        self.reported = Severity.INFO  # the highest severity reported in the open incident

    def mark(self, step: int, alerts: Sequence[Alert]) -> list[Alert]:
        """``alerts`` of ``step`` with ``repeat`` set on those the open incident already covers."""
        if all(a.severity is Severity.INFO for a in alerts):
            return list(alerts)
        if self.last_alarm is None or step - self.last_alarm > self.quiet:
            self.reported = Severity.INFO  # the previous incident is over
        self.last_alarm = step
        # The first of the most severe alarms is news, unless the incident already said as much.
        first = most_severe(alerts)
        news = -1  # the position of the news, if any (one alert object may be listed twice)
        if first is not None and first.severity.rank > self.reported.rank:
            news = next(i for i, alert in enumerate(alerts) if alert is first)
            self.reported = first.severity
        return [
            alert
            if i == news or alert.severity is Severity.INFO or alert.repeat
            else dataclasses.replace(alert, repeat=True)
            for i, alert in enumerate(alerts)
        ]

    def state_dict(self) -> dict[str, Any]:
        """The open incident's latest alarm step and the severity reported in it."""
        return {"last_alarm": self.last_alarm, "reported": self.reported.value}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        last = state["last_alarm"]
        self.last_alarm = None if last is None else int(last)
        self.reported = Severity(state["reported"])


def reported(alerts: Sequence[Alert]) -> list[Alert]:
    """The warning and critical alerts of ``alerts`` that a person is shown: not repeats."""
    return [a for a in alerts if a.severity is not Severity.INFO and not a.repeat]
