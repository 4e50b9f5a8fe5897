"""A sink that speaks through Python's ``logging``: the channel every framework already routes.

The guard adds one by default (see :func:`with_default_logging`), so a user who ignores the
returned records still hears about trouble: with no logging configured, Python prints WARNING
records to stderr. Healthy steps log nothing above DEBUG. One incident does not flood: its
first step is logged at once, and so is each escalation (the first skip, back-off, rollback,
reset or abort of the incident, or a higher level); the other steps are counted and told in one
line when the incident has been quiet for ``quiet`` steps (or every ``window`` steps while it
lasts, and at :meth:`LoggingSink.close`). Only rank 0 logs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable

from gradguard.errors import ConfigError
from gradguard.records import ActionKind, Reason, Severity, StepRecord
from gradguard.sinks import rank
from gradguard.sinks.base import Sink
from gradguard.sinks.console import ConsoleSink
from gradguard.sinks.rank import RankZeroSink
from gradguard.sinks.tally import done_phrase, shown_severity

__all__ = ["LOGGER_NAME", "LoggingSink", "with_default_logging"]

LOGGER_NAME = "gradguard"
"""Name of the logger records go to; ``logging.getLogger("gradguard").setLevel(...)`` tunes it."""

_LEVEL_OF = {Severity.INFO: logging.INFO, Severity.WARNING: logging.WARNING}
_NOTED = (Reason.REGIME_CHANGE, Reason.RECOVERED)
"""Reasons of an unchanged step that are still news (at INFO): a new loss level, a rate restored."""

_ESCALATIONS = (
    ActionKind.SKIP,
    ActionKind.BACKOFF,
    ActionKind.ROLLBACK,
    ActionKind.RESET_OPTIMIZER_STATE,
    ActionKind.ABORT,
)
"""Actions logged at once the first time they happen in an incident; later ones are counted."""


@dataclasses.dataclass
class _Incident:
    level: int  # the highest level logged so far
    last: int
    told_until: int
    seen: set[ActionKind]
    counted: Counter[str] = dataclasses.field(default_factory=Counter)
    counted_level: int = logging.NOTSET
    first_counted: int = 0
    last_counted: int = 0


class LoggingSink:
    """Log alerts and interventions to the ``gradguard`` logger, one line per situation.

    Levels: WARNING for alerts of severity warning or critical and for every intervention (clip,
    skip, back-off, rollback, reset), ERROR for an abort, INFO for info alerts, routine GradScaler
    overflows and restored learning rates, DEBUG for a healthy step (formatted only when DEBUG is
    enabled).

    Args:
        logger: the logger, or its name; ``"gradguard"`` by default.
        level: the lowest level this sink logs at (``logging.ERROR``: only an abort), on top of
            the logger's own level; for a caller that shows alerts elsewhere or not at all.
        quiet: steps without a repeat after which a situation's repeats are told and it closes.
        window: while a situation keeps repeating, its count is told at most every this many steps.

    Raises:
        ConfigError: ``quiet`` or ``window`` is not a positive integer.
    """

    def __init__(
        self,
        logger: logging.Logger | str = LOGGER_NAME,
        *,
        level: int = logging.DEBUG,
        quiet: int = 50,
        window: int = 1000,
    ) -> None:
        for name, value in (("quiet", quiet), ("window", window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}; try {name}=50.")
        self.logger = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
        self.level = level
        self.quiet = quiet
        self.window = window
        self._incident: _Incident | None = None
        self._next_check: int | None = None

    def write(self, record: StepRecord) -> None:
        """Log what this step calls for; a healthy step costs a couple of comparisons."""
        if self._next_check is not None:
            if record.step >= self._next_check:
                self._tell_repeats(record.step)
            elif self._incident is not None and record.step < self._incident.last:
                self._tell_repeats(None)  # steps went back: a new run shares this sink
        if (
            not record.alerts
            and record.action is ActionKind.PROCEED
            and record.reason not in _NOTED
        ):
            debug = self.level <= logging.DEBUG and self.logger.isEnabledFor(logging.DEBUG)
            if debug and _rank_zero():
                self.logger.debug(
                    "step %d: healthy (loss %s, gradient norm %s)",
                    record.step,
                    record.loss,
                    record.total_norm,
                )
            return
        if not _rank_zero():
            return
        level = self._level(record)
        if level is None:
            return
        incident = self._incident
        if incident is None:
            incident = self._incident = _Incident(level, record.step, record.step, set())
            incident.seen.add(record.action)
            self._log(level, _line(record))
        elif level > incident.level or (
            record.action in _ESCALATIONS and record.action not in incident.seen
        ):
            incident.level = max(incident.level, level)
            incident.seen.add(record.action)
            incident.last = record.step
            self._log(level, _line(record))
        else:
            if not incident.counted:
                incident.first_counted = record.step
            incident.counted[f"{record.action.value} ({record.reason.value})"] += 1
            incident.counted_level = max(incident.counted_level, level)
            incident.last = incident.last_counted = record.step
        self._next_check = min(incident.last + self.quiet + 1, incident.told_until + self.window)

    def close(self) -> None:
        """Tell the repeats still counted."""
        self._tell_repeats(None)

    # ------------------------------------------------------------------------------------------

    def _log(self, level: int, line: str) -> None:
        if level >= self.level and self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", line)

    @staticmethod
    def _level(record: StepRecord) -> int | None:
        if record.action is ActionKind.ABORT:
            return logging.ERROR
        levels = [_LEVEL_OF.get(shown_severity(record, a), logging.WARNING) for a in record.alerts]
        if record.reason is Reason.SCALER_OVERFLOW:
            levels.append(logging.INFO)
        elif record.action is not ActionKind.PROCEED:
            levels.append(logging.WARNING)
        elif record.reason in _NOTED:
            levels.append(logging.INFO)
        return max(levels) if levels else None

    def _tell_repeats(self, step: int | None) -> None:
        """Tell the incident's counted steps; close it when quiet (or when ``step`` is None)."""
        incident = self._incident
        if incident is None:
            self._next_check = None
            return
        if incident.counted:
            parts = ", ".join(f"{n} {what}" for what, n in incident.counted.most_common())
            self._log(
                incident.counted_level,
                f"{sum(incident.counted.values())} more step(s) of this incident at steps "
                f"{incident.first_counted}-{incident.last_counted}: {parts}",
            )
            incident.counted.clear()
            incident.counted_level = logging.NOTSET
        if step is None or step - incident.last > self.quiet:
            self._incident = self._next_check = None
            return
        incident.told_until = step
        self._next_check = min(incident.last + self.quiet + 1, step + self.window)


def _rank_zero() -> bool:
    return rank.is_launch_rank_zero()


def _line(record: StepRecord) -> str:
    """One sentence: the step, what was done and why, and the most severe alert's message."""
    parts = [f"step {record.step}:"]
    done = done_phrase(record)
    if done:
        parts.append(f"gradguard {done} ({record.reason.value}).")
    shown = sorted(record.alerts, key=lambda a: -shown_severity(record, a).rank)
    if shown:
        top = shown[0]
        parts.append(f"{shown_severity(record, top).value.upper()} {top.kind.value}: {top.message}")
        if len(shown) > 1:
            others = ", ".join(a.kind.value for a in shown[1:])
            parts.append(f"(also: {others})")
    elif record.message:
        parts.append(record.message)
    return " ".join(parts)


def with_default_logging(sinks: Iterable[Sink]) -> tuple[Sink, ...]:
    """``sinks`` plus a :class:`LoggingSink`, unless one, or a console, already shows the run.

    A sink of your own that tells a person what happened (a framework's logger relay) says so
    with a true ``speaks`` attribute, and no second voice is added.

    The guard calls this on the sinks it is given, so a guard with no configuration warns
    through ``logging``; a :class:`~gradguard.sinks.ConsoleSink` already prints the same events,
    and a second voice would repeat them. Silence it with
    ``logging.getLogger("gradguard").setLevel(logging.ERROR)``.
    """
    given = tuple(sinks)
    inner = [s.sink if isinstance(s, RankZeroSink) else s for s in given]
    if any(isinstance(s, (ConsoleSink, LoggingSink)) or getattr(s, "speaks", False) for s in inner):
        return given
    return (*given, LoggingSink())
