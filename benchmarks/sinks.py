"""Cost of each sink per step, against a small training step, measured side by side.

Justifies flushing the JSONL log on every write: the flush costs a few microseconds, a sliver
of even a tiny training step. Prints a markdown table and one summary line of ratios.

Usage: .venv/bin/python benchmarks/sinks.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from gradguard.records import (
    ActionKind,
    Alert,
    AlertKind,
    Reason,
    Severity,
    StepRecord,
    to_json_dict,
)
from gradguard.sinks import ConsoleSink, CsvSink, JsonlSink, LoggingSink, TensorBoardSink


def _record(step: int) -> StepRecord:
    alerts = (
        (Alert(step, Severity.WARNING, AlertKind.GRAD_NORM_SPIKE, "spike", value=9.0),)
        if step % 10 == 0
        else ()
    )
    return StepRecord(
        step=step,
        action=ActionKind.CLIP if step % 3 == 0 else ActionKind.PROCEED,
        reason=Reason.NORM_ABOVE_BOUND if step % 3 == 0 else Reason.HEALTHY,
        loss=1.0 / (step + 1),
        total_norm=1.0 + math.sin(step),
        clip_coef=0.5 if step % 3 == 0 else 1.0,
        lr=1e-3,
        alerts=alerts,
        top=(("rnn.weight_hh_l0", 1.2), ("rnn.weight_ih_l0", 0.3), ("fc.weight", 0.1)),
    )


def _quiet_logger() -> logging.Logger:
    """A logger that formats what is due but writes nowhere (the cost is the sink's own)."""
    logger = logging.getLogger("gradguard.benchmark")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    return logger


def _best_of(fn: Callable[[int], None], steps: int, repeats: int) -> float:
    """Best mean seconds per call of ``fn(step)`` over ``repeats`` rounds of ``steps`` calls."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for step in range(steps):
            fn(step)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


class _BufferedJsonl:
    """The alternative not taken: the same lines, flushed only when the buffer fills."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8")

    def write(self, record: StepRecord) -> None:
        line = json.dumps(to_json_dict(record), separators=(",", ":"), allow_nan=False)
        self._file.write(line + "\n")

    def close(self) -> None:
        self._file.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a few seconds)")
    args = parser.parse_args()
    steps, repeats = (300, 3) if args.quick else (3000, 5)
    torch.set_num_threads(1)
    records = [_record(i) for i in range(steps)]
    healthy = [
        StepRecord(i, ActionKind.PROCEED, Reason.HEALTHY, loss=1.0, total_norm=1.0)
        for i in range(steps)
    ]

    model = torch.nn.RNN(16, 32)
    head = torch.nn.Linear(32, 1)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01)
    x, y = torch.randn(20, 4, 16), torch.randn(4, 1)

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        out, _h = model(x)
        torch.nn.functional.mse_loss(head(out[-1]), y).backward()
        optimizer.step()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sinks = {
            "JsonlSink (flush per write)": JsonlSink(folder / "a.jsonl"),
            "JSONL, buffered (not used)": _BufferedJsonl(folder / "b.jsonl"),
            "CsvSink (flush per write)": CsvSink(folder / "c.csv"),
            "ConsoleSink (every=50)": ConsoleSink(
                50, console=Console(file=io.StringIO(), width=120)
            ),
            "TensorBoardSink": TensorBoardSink(folder / "tb"),
            "LoggingSink (the guard's default)": LoggingSink(_quiet_logger()),
        }
        step_s = _best_of(train_step, max(steps // 10, 30), repeats)
        rows = [("RNN training step (16->32, T=20, batch 4)", step_s)]
        for name, sink in sinks.items():
            rows.append((name, _best_of(lambda i, s=sink: s.write(records[i]), steps, repeats)))
        quiet = LoggingSink(_quiet_logger())
        rows.append(
            (
                "LoggingSink, healthy steps only",
                _best_of(lambda i: quiet.write(healthy[i]), steps, repeats),
            )
        )
        for sink in sinks.values():
            sink.close()

    print("| what | us per step | % of the RNN step |")
    print("| --- | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:.1f} | {100 * seconds / step_s:.1f} |")
    cost = dict(rows)
    flushed, buffered = cost["JsonlSink (flush per write)"], cost["JSONL, buffered (not used)"]
    print(
        f"sinks: jsonl flush-per-write/buffered {flushed / buffered:.2f}x; "
        f"jsonl/train-step {flushed / step_s:.3f}; "
        f"console/train-step {cost['ConsoleSink (every=50)'] / step_s:.3f}; "
        f"tensorboard/train-step {cost['TensorBoardSink'] / step_s:.3f}; "
        f"logging(healthy)/train-step {cost['LoggingSink, healthy steps only'] / step_s:.4f}"
    )


if __name__ == "__main__":
    main()
