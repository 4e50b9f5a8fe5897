"""One source of truth: the guard's counters, the console's closing line and the report agree.

Alerts are counted as a person is told them, an incident once: the guard's monitor, the console
and the report leave out the alerts the monitor marked ``repeat`` and keep the total with them
apart (``alerts_with_repeats``).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import gradguard as gg
from gradguard.detect import preset
from gradguard.records import Alert, AlertKind, Observation, Severity
from gradguard.report import RunSummary, summarize
from gradguard.sinks import ConsoleSink, JsonlSink, read_jsonl, shown_severity

NAMES = ("steps", "applied", "clipped", "skipped", "backoffs", "rollbacks", "steps_lost")


class _AlarmFromTo:
    """A detector that raises the same warning at every step from ``start`` to ``stop``."""

    name = "alarm"

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def update(self, obs: Observation) -> list[Alert]:
        if not self.start <= obs.step < self.stop:
            return []
        return [Alert(obs.step, Severity.WARNING, AlertKind.GROWTH_TREND, "the norm keeps growing")]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def _run(tmp_path: Path, *, alarm: bool) -> tuple[gg.Guard, str]:
    """90 guarded steps with faults at 10-13 and 40; with ``alarm`` a warning at steps 65-84."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    buffer = io.StringIO()
    console = ConsoleSink(every=25, console=Console(file=buffer, width=300))
    detectors = [*preset("default"), _AlarmFromTo(65, 85)] if alarm else None
    guard = gg.Guard(
        model,
        optimizer,
        sinks=[JsonlSink(tmp_path / "run.jsonl"), console],
        detectors=detectors,
    )
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    for step in range(90):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x[step % 8 :: 8]), y[step % 8 :: 8])
        loss.backward()
        if step in (10, 11, 12, 13, 40):
            first = model[0].weight.grad
            assert first is not None
            first[0, 0] = math.inf if step != 12 else 1e6  # faults, and one finite spike
        guard.step(loss)
    guard.close()
    return guard, buffer.getvalue()


def _check_counts_agree(tmp_path: Path, guard: gg.Guard, printed: str) -> RunSummary:
    counters = guard.counters
    assert counters["clipped"] > 0 and counters["skipped"] > 0 and counters["rollbacks"] > 0
    summary = summarize(read_jsonl(tmp_path / "run.jsonl").records)
    tally = summary.tally
    assert {n: getattr(tally, n) for n in NAMES} == {n: counters[n] for n in NAMES}
    closing = printed.splitlines()[-1]
    expected = (
        f"gradguard: {counters['steps']} steps, {counters['clipped']} clipped, "
        f"{counters['skipped']} skipped"
    )
    assert closing.startswith(expected), closing
    assert f"{counters['rollbacks']} rollbacks ({counters['steps_lost']} steps lost)" in closing
    alerts = tally.alert_counts()
    assert alerts and closing.endswith(f"; {alerts}")
    # Alerts: the report counts what the guard's monitor counts, repeats apart.
    told = guard.summary()["monitor"]
    assert {s.value: n for s, n in summary.alerts_by_severity.items()} == told["by_severity"]
    assert summary.alerts_by_kind == told["by_kind"]
    assert sum(tally.alerts.values()) == told["alerts"]
    assert summary.alerts_with_repeats == tally.alerts_with_repeats == told["alerts_with_repeats"]
    return summary


def test_guard_console_and_report_count_alike(tmp_path: Path) -> None:
    guard, printed = _run(tmp_path, alarm=False)
    _check_counts_agree(tmp_path, guard, printed)


def test_an_incident_that_repeats_its_alert_is_counted_once_everywhere(tmp_path: Path) -> None:
    guard, printed = _run(tmp_path, alarm=True)
    summary = _check_counts_agree(tmp_path, guard, printed)
    # The warning at steps 65-84 is one incident: told once, its 19 repeats only in the total.
    assert summary.alerts_by_kind["growth_trend"] == 1
    records = read_jsonl(tmp_path / "run.jsonl").records
    raised = sum(len(r.alerts) for r in records)
    repeats = sum(a.repeat for r in records for a in r.alerts)
    assert repeats >= 19 and summary.alerts_with_repeats == raised
    assert sum(summary.alerts_by_severity.values()) == raised - repeats
    assert printed.splitlines()[-1].endswith(f" ({raised} with repeats)")


def test_a_log_from_before_repeats_counts_every_alert(tmp_path: Path) -> None:
    _run(tmp_path, alarm=True)
    path = tmp_path / "run.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    old = [lines[0]]  # the header
    for line in lines[1:]:  # the records as a gradguard without ``repeat`` wrote them
        data = json.loads(line)
        for alert in data["alerts"]:
            del alert["repeat"]
        old.append(json.dumps(data))
    older = tmp_path / "old.jsonl"
    older.write_text("\n".join(old) + "\n", encoding="utf-8")
    records = read_jsonl(older).records
    assert not any(a.repeat for r in records for a in r.alerts)
    summary = summarize(records)
    by_severity: Counter[Severity] = Counter()
    by_kind: Counter[str] = Counter()
    for record in records:  # how every alert was counted before repeats existed
        for alert in record.alerts:
            by_severity[shown_severity(record, alert)] += 1
            by_kind[alert.kind.value] += 1
    assert summary.alerts_by_severity == dict(by_severity)
    assert summary.alerts_by_kind == dict(by_kind) and by_kind["growth_trend"] == 20
    assert summary.alerts_with_repeats == sum(by_severity.values())
    assert "with repeats" not in summary.tally.alert_counts()
