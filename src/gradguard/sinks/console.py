"""A terminal view of a run: a compact line every N steps, alerts and interventions as they come.

It never floods: the first alert of a kind (at a given severity) is shown at once; repeats are
counted and shown as one line with the count when the window of N steps closes, and a kind that
keeps firing window after window gets only that one count line per window. An alert marked
``repeat`` (its incident was already told, see :class:`~gradguard.detect.episode.IncidentLatch`)
is never shown on its own line, only counted, so an incident gets one line. Every
intervention other than clipping (skip, back-off, rollback, optimizer reset, abort) is shown at
once, always; clipping, which is the normal regime of many runs, is summarised in the periodic
line (how many steps were clipped and the smallest coefficient). Strings are only formatted for
lines that are printed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from gradguard.errors import ConfigError, check_int
from gradguard.records import ActionKind, AlertKind, Severity, StepRecord
from gradguard.sinks.tally import (
    StepTally,
    done_phrase,
    is_clipped,
    is_shown_intervention,
    shown_severity,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = ["ConsoleSink", "terminal_safe"]


def terminal_safe(text: str) -> str:
    """``text`` with every control or invisible character shown escaped, as ``repr`` shows it.

    Tensor names and messages come from checkpoints and models the user may not have written;
    printed raw, an ESC sequence in one could clear the screen or retitle the terminal and a
    newline could fake a table row. Escaped, an ESC character shows as the four characters
    ``\\x1b`` and a newline as ``\\n``.
    """
    if text.isprintable():  # the usual case: one C-level scan, no copy
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


SEVERITY_STYLE = {
    Severity.INFO: "cyan",
    Severity.WARNING: "yellow",
    Severity.CRITICAL: "bold red",
}
ACTION_STYLE = {
    ActionKind.SKIP: "magenta",
    ActionKind.BACKOFF: "magenta",
    ActionKind.ROLLBACK: "bold magenta",
    ActionKind.RESET_OPTIMIZER_STATE: "bold magenta",
    ActionKind.ABORT: "bold white on red",
}


@dataclasses.dataclass
class _Repeats:
    count: int
    first_step: int
    last_step: int


class ConsoleSink:
    """Print a run to the terminal with rich, readable at a glance and never flooding.

    Args:
        every: print the periodic line on the first step and every ``every`` steps after it.
        console: a ``rich.console.Console`` to print to; a new one on stderr when ``None``.
        min_severity: alerts below this severity are only counted in the periodic line.

    Raises:
        ConfigError: ``every`` is not a positive integer or ``min_severity`` is unknown.
    """

    def __init__(
        self,
        every: int = 50,
        *,
        console: Console | None = None,
        min_severity: Severity | str = Severity.WARNING,
    ) -> None:
        check_int("every", every, minimum=1, fix="Try every=50.")
        try:
            self.min_severity = Severity(min_severity)
        except ValueError:
            allowed = [s.value for s in Severity]
            raise ConfigError(
                f"min_severity must be one of {allowed!r}, got {min_severity!r}."
            ) from None
        from rich.console import Console

        self.every = every
        self.console = console if console is not None else Console(stderr=True)
        self._tally = StepTally()
        self._recent: set[tuple[AlertKind, Severity]] = set()
        self._reset_window()

    def _reset_window(self) -> None:
        self._repeats: dict[tuple[AlertKind, Severity], _Repeats] = {}
        self._clipped = 0
        self._min_coef = 1.0
        self._quiet_alerts = 0
        self._window_steps = 0

    def write(self, record: StepRecord) -> None:
        """Take one step's record; print only what is due."""
        self._window_steps += 1
        self._tally.add(record)
        if is_clipped(record):
            self._clipped += 1
            if math.isfinite(record.clip_coef):
                self._min_coef = min(self._min_coef, record.clip_coef)
        if is_shown_intervention(record):  # a scaler overflow is counted in the closing line
            self._print_intervention(record)
        for alert in record.alerts:
            severity = shown_severity(record, alert)  # a GradScaler overflow is routine: info
            if severity.rank < self.min_severity.rank:
                self._quiet_alerts += 1
                continue
            key = (alert.kind, severity)
            repeats = self._repeats.get(key)
            if alert.repeat:  # its incident was already told: only counted, never a line of its own
                self._count_repeat(key, repeats, alert.step)
            elif repeats is None and key not in self._recent:
                self._repeats[key] = _Repeats(0, alert.step, alert.step)
                done = done_phrase(record)  # the alert says what was seen; this, what was done
                message = f"{alert.message} -> gradguard {done}." if done else alert.message
                self._print_alert(alert.step, severity, alert.kind, message)
            else:
                self._count_repeat(key, repeats, alert.step)
        seen = self._tally.steps
        if seen == 1 or seen % self.every == 0:
            self._print_periodic(record)

    def _count_repeat(
        self, key: tuple[AlertKind, Severity], repeats: _Repeats | None, step: int
    ) -> None:
        """Add one alert of ``key`` to the window's count of repeats, shown when it closes."""
        if repeats is None:
            self._repeats[key] = _Repeats(1, step, step)
            return
        if repeats.count == 0:
            repeats.first_step = step
        repeats.count += 1
        repeats.last_step = step

    def close(self) -> None:
        """Print the repeats still counted and a closing line with the whole run's counts."""
        if not self._tally.steps:
            return
        self._flush_repeats()
        from rich.text import Text

        self.console.print(Text(f"gradguard: {_run_counts(self._tally)}", style="dim"))
        self._reset_window()
        self._tally = StepTally()

    # ---------------------------------------------------------------------------------------
    # Formatting: only reached for lines that are printed.

    def _print_alert(self, step: int, severity: Severity, kind: AlertKind, message: str) -> None:
        from rich.text import Text

        line = Text()
        line.append(f"step {step:>6} ", style="dim")
        line.append(f"{severity.value.upper():<8}", style=SEVERITY_STYLE[severity])
        line.append(f" {kind.value}: ", style=SEVERITY_STYLE[severity])
        line.append(terminal_safe(message))
        self.console.print(line)

    def _print_intervention(self, record: StepRecord) -> None:
        from rich.text import Text

        style = ACTION_STYLE.get(record.action, "magenta")
        line = Text()
        line.append(f"step {record.step:>6} ", style="dim")
        line.append(f"{record.action.value.upper()}", style=style)
        line.append(f" ({record.reason.value})", style=style)
        if record.rolled_back_to is not None:
            line.append(f" -> step {record.rolled_back_to}, {record.steps_lost} steps lost")
        if record.message:
            line.append(f": {terminal_safe(record.message)}")
        self.console.print(line)

    def _print_periodic(self, record: StepRecord) -> None:
        from rich.text import Text

        self._flush_repeats()
        line = Text()
        line.append(f"step {record.step:>6}", style="bold")
        line.append(" | loss ")
        _append_number(line, record.loss, "{:.4g}")
        line.append(" | grad norm ")
        _append_number(line, record.total_norm, "{:.3g}")
        if record.lr is not None:
            line.append(f" | lr {record.lr:.3g}")
        self._append_window_counts(line)
        self.console.print(line)
        self._reset_window()

    def _append_window_counts(self, line: Text) -> None:
        if self._clipped:
            line.append(
                f" | clipped {self._clipped}/{self._window_steps} (min x{self._min_coef:.3g})",
                style="yellow",
            )
        if self._quiet_alerts:
            below = self.min_severity.value
            line.append(f" | {self._quiet_alerts} alert(s) below {below} not shown", style="dim")

    def _flush_repeats(self) -> None:
        from rich.text import Text

        for (kind, severity), repeats in self._repeats.items():
            if repeats.count:
                line = Text()
                line.append("       ... ", style="dim")
                line.append(f"{kind.value} x{repeats.count} more", style=SEVERITY_STYLE[severity])
                line.append(f" (steps {repeats.first_step}-{repeats.last_step})", style="dim")
                self.console.print(line)
        self._recent = set(self._repeats)
        self._repeats = {}


def _run_counts(tally: StepTally) -> str:
    """The closing line's counts, from the same tally the report and the guard's counters use."""
    parts = [f"{tally.steps} steps", f"{tally.clipped} clipped", f"{tally.skipped} skipped"]
    for count, what in (
        (tally.scaler_overflows, "of them GradScaler overflows"),
        (tally.backoffs, "back-offs"),
        (tally.rollbacks, f"rollbacks ({tally.steps_lost} steps lost)"),
        (tally.resets, "optimizer resets"),
        (tally.aborted, "aborted"),
    ):
        if count:
            parts.append(f"{count} {what}")
    alerts = tally.alert_counts()
    return ", ".join(parts) + (f"; {alerts}" if alerts else "; no alerts")


def _append_number(line: Text, value: float | None, fmt: str) -> None:
    if value is None:
        line.append("-", style="dim")
    elif math.isfinite(value):
        line.append(fmt.format(value))
    else:
        line.append(repr(value), style="bold red")
