"""LoggingSink: a default Guard warns through logging, healthy steps stay quiet, no flood."""

from __future__ import annotations

import logging
import math
import re

import pytest
import torch

import gradguard as gg
from gradguard.errors import ConfigError
from gradguard.records import ActionKind, Alert, AlertKind, Reason, Severity, StepRecord
from gradguard.sinks import ConsoleSink, JsonlSink, LoggingSink, RankZeroSink, with_default_logging


def _train(steps: int, poison: range = range(0)) -> gg.Guard:
    """A one-line user: Guard(model, optimizer) with nothing else; ``poison`` steps get an Inf."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = gg.Guard(model, optimizer)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x[step % 8 :: 8]), y[step % 8 :: 8])
        loss.backward()
        if step in poison:
            assert model.weight.grad is not None
            model.weight.grad[0, 0] = math.inf
        guard.step(loss)
    guard.close()
    return guard


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gradguard"]


def test_a_healthy_default_guard_logs_nothing_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gradguard")
    _train(40)
    records = _ours(caplog)
    assert len(records) == 40  # one DEBUG line per healthy step, formatted only at DEBUG
    assert {r.levelno for r in records} == {logging.DEBUG}


def test_an_exploding_step_warns_on_the_gradguard_logger(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gradguard")
    guard = _train(30, poison=range(12, 13))
    assert guard.counters["skipped"] == 1
    (warning,) = [r for r in _ours(caplog) if r.levelno >= logging.WARNING]
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert message.startswith("step 12: gradguard skipped the step (weights unchanged)")
    assert "CRITICAL nonfinite_grad: Gradient norm is inf at step 12 in weight" in message


def test_one_incident_is_one_line_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gradguard")
    guard = _train(80, poison=range(10, 14))
    acted = guard.counters["skipped"] + guard.counters["backoffs"] + guard.counters["rollbacks"]
    assert acted >= 4
    lines = [r.getMessage() for r in _ours(caplog) if r.levelno >= logging.WARNING]
    # Four poisoned steps and whatever the ladder did about them: a handful of lines at most,
    # each situation once, its repeats as one count.
    assert len(lines) == 3, lines
    assert lines[0].startswith("step 10: gradguard skipped the step")
    assert lines[1].startswith("step 11: gradguard rolled back to step 0")  # an escalation
    # The rest of the incident (clipped under the bound that stays on after a rescue) is one
    # count, whatever its length.
    summary = re.match(
        r"(\d+) more step\(s\) of this incident at steps 12-(\d+): (\d+) clip", lines[2]
    )
    assert summary is not None, lines[2]
    assert 0 < int(summary.group(3)) <= guard.counters["clipped"]


def _record(step: int, *alerts: Alert, **fields: object) -> StepRecord:
    base: dict[str, object] = {"action": ActionKind.PROCEED, "reason": Reason.HEALTHY}
    base.update(fields)
    return StepRecord(step, alerts=alerts, loss=1.0, total_norm=1.0, **base)  # type: ignore[arg-type]


def _inf_alert(step: int) -> Alert:
    return Alert(step, Severity.CRITICAL, AlertKind.NONFINITE_GRAD, f"inf at {step}")


def test_a_scaler_overflow_is_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gradguard")
    sink = LoggingSink()
    overflow = {"action": ActionKind.SKIP, "reason": Reason.SCALER_OVERFLOW, "applied": False}
    sink.write(_record(0, _inf_alert(0), **overflow))
    (record,) = _ours(caplog)
    assert record.levelno == logging.INFO
    assert "INFO nonfinite_grad" in record.getMessage()


def test_repeats_are_told_when_quiet_or_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gradguard")
    sink = LoggingSink(quiet=5, window=1000)
    spike = {"action": ActionKind.CLIP, "reason": Reason.SPIKE, "clip_coef": 0.5}
    for step in range(3):
        sink.write(_record(step, **spike))
    for step in range(3, 20):
        sink.write(_record(step))
    sink.write(_record(20, **spike))
    sink.close()
    lines = [r.getMessage() for r in _ours(caplog) if r.levelno == logging.WARNING]
    assert lines == [
        "step 0: gradguard clipped the gradients by x0.5 (spike).",
        "2 more step(s) of this incident at steps 1-2: 2 clip (spike)",
        "step 20: gradguard clipped the gradients by x0.5 (spike).",
    ]


def test_a_long_incident_is_counted_once_per_window(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gradguard")
    sink = LoggingSink(quiet=5, window=100)
    for step in range(300):
        sink.write(_record(step, action=ActionKind.SKIP, reason=Reason.NONFINITE_GRAD))
    sink.close()
    lines = [r.getMessage() for r in _ours(caplog)]
    assert lines == [
        "step 0: gradguard skipped the step (weights unchanged) (nonfinite_grad).",
        "99 more step(s) of this incident at steps 1-99: 99 skip (nonfinite_grad)",
        "100 more step(s) of this incident at steps 100-199: 100 skip (nonfinite_grad)",
        "100 more step(s) of this incident at steps 200-299: 100 skip (nonfinite_grad)",
    ]


def test_only_rank_zero_logs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger="gradguard")
    monkeypatch.setenv("RANK", "1")  # torchrun's rank 1, before init_process_group
    sink = LoggingSink()
    sink.write(_record(0, _inf_alert(0), action=ActionKind.SKIP, applied=False))
    sink.write(_record(1))
    sink.close()
    assert _ours(caplog) == []


def test_the_default_is_added_once_and_not_beside_a_console(tmp_path: object) -> None:
    (added,) = with_default_logging(())
    assert isinstance(added, LoggingSink)
    console = ConsoleSink()
    assert with_default_logging([console]) == (console,)
    wrapped = RankZeroSink(LoggingSink())
    assert with_default_logging([wrapped]) == (wrapped,)
    model = torch.nn.Linear(2, 1)
    guard = gg.Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), snapshot_every=None)
    assert [type(s) for s in guard.sinks] == [LoggingSink]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_settings(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"quiet must be an integer >= 1, got"):
        LoggingSink(quiet=bad)  # type: ignore[arg-type]


def test_jsonl_alone_still_gets_the_default(tmp_path: object) -> None:
    import pathlib

    assert isinstance(tmp_path, pathlib.Path)
    sink = JsonlSink(tmp_path / "log.jsonl")
    sinks = with_default_logging([sink])
    assert sinks[0] is sink and isinstance(sinks[1], LoggingSink)
    sink.close()


def test_a_sink_set_to_error_tells_only_an_abort(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gradguard")
    sink = LoggingSink(level=logging.ERROR)  # what `gradguard run --quiet` gives its guards
    for step in range(5):
        sink.write(_record(step, _inf_alert(step), action=ActionKind.SKIP, applied=False))
    sink.write(_record(5, action=ActionKind.ABORT, reason=Reason.BUDGET_EXHAUSTED, applied=False))
    sink.close()
    assert [(r.levelno, r.getMessage()) for r in _ours(caplog)] == [
        (logging.ERROR, "step 5: gradguard stopped the run (budget_exhausted).")
    ]
    assert with_default_logging([sink]) == (sink,)  # and the guard adds no second one


def test_a_second_run_on_the_same_sink_starts_a_new_incident(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gradguard")
    sink = LoggingSink()
    skip = {"action": ActionKind.SKIP, "reason": Reason.NONFINITE_GRAD, "applied": False}
    for step in (5, 6):
        sink.write(_record(step, **skip))
    sink.write(_record(0, **skip))  # a new guard starts again at step 0
    lines = [r.getMessage() for r in _ours(caplog)]
    assert lines == [
        "step 5: gradguard skipped the step (weights unchanged) (nonfinite_grad).",
        "1 more step(s) of this incident at steps 6-6: 1 skip (nonfinite_grad)",
        "step 0: gradguard skipped the step (weights unchanged) (nonfinite_grad).",
    ]


def test_a_framework_relay_is_the_run_s_voice_and_gets_no_second_one() -> None:
    # The Lightning and HF callbacks relay every intervention to the framework's logger; a
    # default LoggingSink beside it would print each one twice.
    from gradguard.integrations._callbacks import FrameworkRelay

    relay = FrameworkRelay(logging.getLogger("lightning.pytorch.callbacks.gradguard"))
    assert with_default_logging([relay]) == (relay,)
    wrapped = RankZeroSink(relay)
    assert with_default_logging([wrapped]) == (wrapped,)
