"""A GradScaler's routine overflow is info everywhere it is shown: log, console and report."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn

import gradguard as gg
from gradguard.records import AlertKind, Reason, Severity
from gradguard.report import build_report, summarize
from gradguard.sinks import ConsoleSink, JsonlSink, LoggingSink, StepTally, read_jsonl


def test_scaler_overflows_are_info_in_log_console_and_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gradguard")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # overflows until it has halved
    buffer = io.StringIO()
    console = ConsoleSink(every=10**6, console=Console(file=buffer, width=200))
    log = tmp_path / "amp.jsonl"
    sinks = [JsonlSink(log), console, LoggingSink()]
    guard = gg.Guard(model, optimizer, scaler=scaler, sinks=sinks)
    for _ in range(30):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(torch.randn(16, 8) * 100)
        loss = nn.functional.mse_loss(out.float(), torch.randn(16, 1))
        scaler.scale(loss).backward()
        guard.step(loss)
    guard.close()
    overflows = guard.counters["scaler_overflows"]
    assert overflows >= 5
    records = read_jsonl(log).records
    flagged = [r for r in records if r.reason is Reason.SCALER_OVERFLOW]
    # The detector still calls the non-finite gradient critical: it cannot know about the scaler.
    assert (
        all(a.severity is Severity.CRITICAL for r in flagged for a in r.alerts)
        and flagged[0].alerts[0].kind is AlertKind.NONFINITE_GRAD
    )
    # The log: one INFO line for the run of overflows, nothing at WARNING.
    ours = [r for r in caplog.records if r.name == "gradguard"]
    assert [r.levelno for r in ours if r.levelno > logging.DEBUG] == [logging.INFO] * 2
    assert "INFO nonfinite_grad" in ours[0].getMessage()
    # The console: no CRITICAL line, and the same counts as the guard's counters.
    text = buffer.getvalue()
    assert "CRITICAL" not in text and "SKIP" not in text  # routine: counted, not shown
    assert f"{overflows} skipped, {overflows} of them GradScaler overflows" in text
    # The run of overflows is one incident of the monitor's: one alert, the others repeats.
    assert f"1 info alerts ({overflows} with repeats)" in text
    # The report: info alerts, no first warning, no NaN step, a healthy verdict.
    summary = summarize(records)
    assert summary.alerts_by_severity == {Severity.INFO: 1}
    assert summary.alerts_with_repeats == overflows
    assert summary.first_warning is None and summary.first_nonfinite_step is None
    page = build_report(log, tmp_path / "out").read_text(encoding="utf-8")
    assert f"({overflows} routine GradScaler overflow(s) skipped)" in page
    events = page[page.index('id="events"') :]
    assert "scaler_overflow" not in events[: events.index("</section>")]  # not one row each
    tally = StepTally()
    for record in records:
        tally.add(record)
    for name in ("steps", "applied", "clipped", "skipped", "scaler_overflows"):
        assert getattr(tally, name) == guard.counters[name], name
