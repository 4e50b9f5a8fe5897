"""ConsoleSink: periodic lines, alerts coloured by severity, repeats collapsed, no flood."""

from __future__ import annotations

import dataclasses
import io
import re

import pytest
from rich.console import Console

from gradguard.errors import ConfigError
from gradguard.records import ActionKind, Alert, AlertKind, Reason, Severity, StepRecord
from gradguard.sinks import ConsoleSink
from gradguard.sinks.console import terminal_safe

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _console(color: bool = False) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=200,
        force_terminal=color,
        color_system="standard" if color else None,
        highlight=False,
    )
    return console, buffer


def _spike(step: int, severity: Severity = Severity.WARNING) -> Alert:
    return Alert(step, severity, AlertKind.GRAD_NORM_SPIKE, f"norm spiked at {step}", value=9.0)


def _record(step: int, *alerts: Alert, action: ActionKind = ActionKind.PROCEED) -> StepRecord:
    return StepRecord(
        step=step,
        action=action,
        reason=Reason.HEALTHY if action is ActionKind.PROCEED else Reason.SPIKE,
        message="" if action is ActionKind.PROCEED else f"{action.value} at {step}",
        loss=0.5,
        total_norm=2.0,
        clip_coef=0.5 if action is ActionKind.CLIP else 1.0,
        lr=0.01,
        alerts=alerts,
    )


def _lines(buffer: io.StringIO) -> list[str]:
    return [ANSI.sub("", line) for line in buffer.getvalue().splitlines()]


def test_periodic_line_on_first_step_and_every_n() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=10, console=console)
    for step in range(25):
        sink.write(_record(step))
    lines = _lines(buffer)
    assert [line.split("|")[0].split()[1] for line in lines] == ["0", "9", "19"]
    assert lines[0] == "step      0 | loss 0.5 | grad norm 2 | lr 0.01"
    sink.close()
    assert _lines(buffer)[-1] == "gradguard: 25 steps, 0 clipped, 0 skipped; no alerts"


def test_a_persistent_alert_never_floods() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=50, console=console)
    for step in range(200):
        sink.write(_record(step, _spike(step)))
    sink.close()
    lines = _lines(buffer)
    # 200 alerts: the first one, then one count line per window of 50 steps.
    assert lines == [
        "step      0 WARNING  grad_norm_spike: norm spiked at 0",
        "step      0 | loss 0.5 | grad norm 2 | lr 0.01",
        "       ... grad_norm_spike x49 more (steps 1-49)",
        "step     49 | loss 0.5 | grad norm 2 | lr 0.01",
        "       ... grad_norm_spike x50 more (steps 50-99)",
        "step     99 | loss 0.5 | grad norm 2 | lr 0.01",
        "       ... grad_norm_spike x50 more (steps 100-149)",
        "step    149 | loss 0.5 | grad norm 2 | lr 0.01",
        "       ... grad_norm_spike x50 more (steps 150-199)",
        "step    199 | loss 0.5 | grad norm 2 | lr 0.01",
        "gradguard: 200 steps, 0 clipped, 0 skipped; 200 warning alerts",
    ]
    assert sum("WARNING" in line for line in lines) == 1


def test_an_alert_that_went_quiet_is_shown_again() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=10, console=console)
    for step in range(40):
        sink.write(_record(step, *([_spike(step)] if step in (3, 4, 35) else [])))
    text = _lines(buffer)
    assert sum(line.startswith("step      3 WARNING") for line in text) == 1
    assert sum("x1 more (steps 4-4)" in line for line in text) == 1
    assert sum(line.startswith("step     35 WARNING") for line in text) == 1


def test_a_new_severity_is_shown_at_once() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=100, console=console)
    sink.write(_record(0, _spike(0)))
    sink.write(_record(1, _spike(1)))
    sink.write(_record(2, _spike(2, Severity.CRITICAL)))
    alerts = [line.split()[2] for line in _lines(buffer) if "grad_norm_spike" in line]
    assert alerts == ["WARNING", "CRITICAL"]


def test_an_incident_gets_one_line_its_repeats_are_only_counted() -> None:
    # One incident (as IncidentLatch marks it): a spike is news at step 3; the spikes and a
    # growth trend after it are repeats, also one in a later window where the kind was quiet.
    console, buffer = _console()
    sink = ConsoleSink(every=10, console=console)

    def trend(step: int) -> Alert:
        return Alert(step, Severity.WARNING, AlertKind.GROWTH_TREND, f"trend at {step}")

    for step in range(30):
        alerts: tuple[Alert, ...] = ()
        if step == 3:
            alerts = (_spike(3),)
        elif 4 <= step <= 6:
            alerts = (_spike(step), trend(step))
        elif step == 25:
            alerts = (_spike(25),)
        repeats = tuple(dataclasses.replace(a, repeat=True) for a in alerts if step != 3)
        sink.write(_record(step, *(alerts if step == 3 else repeats)))
    sink.close()
    assert [line for line in _lines(buffer) if not line.startswith("step") or "|" not in line] == [
        "step      3 WARNING  grad_norm_spike: norm spiked at 3",
        "       ... grad_norm_spike x3 more (steps 4-6)",
        "       ... growth_trend x3 more (steps 4-6)",
        "       ... grad_norm_spike x1 more (steps 25-25)",
        "gradguard: 30 steps, 0 clipped, 0 skipped; 1 warning alerts (8 with repeats)",
    ]


def test_interventions_always_shown_clips_summarised() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=20, console=console)
    for step in range(20):
        action = ActionKind.CLIP if step % 2 else ActionKind.PROCEED
        if step in (5, 6, 7):
            action = ActionKind.SKIP
        sink.write(_record(step, action=action))
    lines = _lines(buffer)
    skips = [line for line in lines if "SKIP" in line]
    assert skips == [f"step      {s} SKIP (spike): skip at {s}" for s in (5, 6, 7)]
    assert lines[-1].endswith("| clipped 8/19 (min x0.5)")


def test_rollback_line_says_where_to_and_what_was_lost() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=100, console=console)
    sink.write(
        StepRecord(
            step=40,
            action=ActionKind.ROLLBACK,
            reason=Reason.DIVERGENCE,
            message="loss is inf",
            rolled_back_to=30,
            steps_lost=10,
        )
    )
    assert "ROLLBACK (divergence) -> step 30, 10 steps lost: loss is inf" in _lines(buffer)[0]


def test_severities_are_coloured() -> None:
    console, buffer = _console(color=True)
    sink = ConsoleSink(every=100, console=console, min_severity="info")
    sink.write(_record(0, _spike(0, Severity.CRITICAL)))
    sink.write(_record(1, _spike(1, Severity.WARNING)))
    sink.write(_record(2, _spike(2, Severity.INFO)))
    raw = buffer.getvalue().splitlines()
    assert "\x1b[1;31mCRITICAL" in raw[0]  # bold red
    assert "\x1b[33mWARNING" in raw[2]  # yellow
    assert "\x1b[36mINFO" in raw[3]  # cyan


def test_minor_alerts_are_only_counted() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=5, console=console)
    for step in range(5):
        sink.write(_record(step, _spike(step, Severity.INFO)))
    lines = _lines(buffer)
    assert len(lines) == 2
    assert lines[1].endswith("| 4 alert(s) below warning not shown")


def test_user_text_is_not_read_as_markup() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=100, console=console)
    alert = Alert(0, Severity.WARNING, AlertKind.CULPRIT, "[bold]w[/bold] <script>x</script>")
    sink.write(_record(0, alert))
    assert "[bold]w[/bold] <script>x</script>" in _lines(buffer)[0]


class _CountingConsole:
    def __init__(self) -> None:
        self.calls = 0

    def print(self, *args: object, **kwargs: object) -> None:
        self.calls += 1


def test_quiet_steps_print_nothing() -> None:
    counting = _CountingConsole()
    sink = ConsoleSink(every=1000, console=counting)  # type: ignore[arg-type]
    for step in range(500):
        sink.write(_record(step))
    assert counting.calls == 1  # the first periodic line only


@pytest.mark.parametrize("every", [0, -3, 2.5, True])
def test_bad_every(every: object) -> None:
    with pytest.raises(ConfigError, match="every must be an integer >= 1"):
        ConsoleSink(every=every)  # type: ignore[arg-type]


def test_bad_severity() -> None:
    with pytest.raises(ConfigError, match=r"min_severity must be one of .* got 'loud'"):
        ConsoleSink(min_severity="loud")


def test_an_alert_on_a_clipped_step_says_it_was_clipped() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=100, console=console)
    sink.write(_record(0, _spike(0), action=ActionKind.CLIP))
    (line,) = [line for line in _lines(buffer) if "grad_norm_spike" in line]
    assert line.endswith("norm spiked at 0 -> gradguard clipped the gradients by x0.5.")


def test_a_scaler_overflow_is_counted_as_info_not_shown_as_critical() -> None:
    console, buffer = _console()
    sink = ConsoleSink(every=100, console=console)
    overflow = Alert(0, Severity.CRITICAL, AlertKind.NONFINITE_GRAD, "inf gradient")
    sink.write(
        StepRecord(0, ActionKind.SKIP, Reason.SCALER_OVERFLOW, applied=False, alerts=(overflow,))
    )
    sink.write(_record(1, _spike(1, Severity.CRITICAL)))
    skipped = _record(2, _spike(2, Severity.CRITICAL), action=ActionKind.SKIP)
    sink.write(dataclasses.replace(skipped, applied=False))
    sink.close()
    lines = _lines(buffer)
    assert sum("CRITICAL" in line for line in lines) == 1  # the spike; the overflow is info
    # The closing counts agree with what was shown: 2 critical (one repeat), 1 info.
    assert lines[-1] == (
        "gradguard: 3 steps, 0 clipped, 2 skipped, 1 of them GradScaler overflows; "
        "2 critical, 1 info alerts"
    )


# Turns shared/repro/reliability/repro_terminal_escape_injection.py into a test.
def test_control_characters_from_names_never_reach_the_terminal() -> None:
    assert terminal_safe("rnn.weight_hh_l0") == "rnn.weight_hh_l0"
    assert terminal_safe("a\x1b[2Jb\x07\nc\u202e\x9b") == "a\\x1b[2Jb\\x07\\nc\\u202e\\x9b"
    assert terminal_safe("héllo wörld ✓") == "héllo wörld ✓"  # printable text is left alone
    console, buffer = _console(color=True)
    sink = ConsoleSink(every=1000, console=console)
    evil = "\x1b]0;TITLE\x07w\nFAKE ROW"
    alert = Alert(1, Severity.WARNING, AlertKind.GRAD_NORM_SPIKE, f"spike in {evil}")
    sink.write(_record(1, alert))
    skip = dataclasses.replace(_record(2, action=ActionKind.SKIP), message=f"NaN in {evil}")
    sink.write(skip)
    text = ANSI.sub("", buffer.getvalue())  # rich's own colour codes are fine
    assert "\x1b" not in text and "\x07" not in text
    assert "spike in \\x1b]0;TITLE\\x07w\\nFAKE ROW" in text
    assert "NaN in \\x1b]0;TITLE" in text
    assert not any(line.startswith("FAKE ROW") for line in text.splitlines())
