"""One source of truth: the guard's counters, the console's closing line and the report agree."""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
from rich.console import Console

import gradguard as gg
from gradguard.report import summarize
from gradguard.sinks import ConsoleSink, JsonlSink, read_jsonl

NAMES = ("steps", "applied", "clipped", "skipped", "backoffs", "rollbacks", "steps_lost")


def test_guard_console_and_report_count_alike(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    buffer = io.StringIO()
    console = ConsoleSink(every=25, console=Console(file=buffer, width=300))
    guard = gg.Guard(model, optimizer, sinks=[JsonlSink(tmp_path / "run.jsonl"), console])
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
    counters = guard.counters
    assert counters["clipped"] > 0 and counters["skipped"] > 0 and counters["rollbacks"] > 0
    tally = summarize(read_jsonl(tmp_path / "run.jsonl").records).tally
    assert {n: getattr(tally, n) for n in NAMES} == {n: counters[n] for n in NAMES}
    closing = buffer.getvalue().splitlines()[-1]
    expected = (
        f"gradguard: {counters['steps']} steps, {counters['clipped']} clipped, "
        f"{counters['skipped']} skipped"
    )
    assert closing.startswith(expected), closing
    assert f"{counters['rollbacks']} rollbacks ({counters['steps_lost']} steps lost)" in closing
    alerts = tally.alert_counts()
    assert alerts and closing.endswith(f"; {alerts}")
