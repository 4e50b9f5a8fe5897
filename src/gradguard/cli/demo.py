"""What ``gradguard demo`` computes: the textbook exploding RNN, trained without and with a Guard.

The model is the scenario ``rnn_x3`` (:mod:`gradguard.scenarios`): an RNN with hidden size 50
whose recurrent weights are scaled x3 (spectral radius about 1.8), sequences of 100 steps, SGD
at lr 0.01. Both runs start from the same weights and see the same batches. The unguarded run is
watched by a :class:`~gradguard.monitor.Monitor` (it warns, it does not act); the guarded one uses
:class:`~gradguard.guard.Guard` with its defaults and writes the JSONL log the report is built from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from gradguard import scenarios
from gradguard.analysis import explosion_table, recurrent_report
from gradguard.errors import TrainingDivergedError
from gradguard.guard import Guard
from gradguard.monitor import Monitor
from gradguard.records import ActionKind, Alert, Severity
from gradguard.report import summarize
from gradguard.sinks import JsonlSink, read_jsonl

__all__ = ["SCENARIO", "DemoResult", "RunOutcome", "run_demo"]

SCENARIO = "rnn_x3"
Progress = Callable[[str, int, float], None]
"""``progress(run, step, loss)`` after each step of run ``"unguarded"`` or ``"guarded"``."""


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How one of the two runs went.

    Attributes:
        steps: optimizer steps run.
        losses: the loss of every step.
        first_nonfinite: first step whose loss or gradient norm was NaN/Inf, or ``None``.
        divergence: first step the scenario counts as diverged (NaN/Inf, or the loss 100x its
            early median), or ``None``.
        final_loss: the last loss.
        recent_loss: median loss of the last tenth of the steps (at least 10): one batch's
            loss is noisy, this is what the run has reached.
        best_loss: the smallest finite loss.
        first_warning: step of the first warning or critical alert, or ``None``.
        first_warning_kind: what that alert was.
        interventions: count of each guard action other than ``proceed`` (empty unguarded).
        stopped: the guard's message when it gave up on the run, else ``None``.
    """

    steps: int
    losses: tuple[float, ...]
    first_nonfinite: int | None
    divergence: int | None
    final_loss: float
    recent_loss: float
    best_loss: float
    first_warning: int | None
    first_warning_kind: str | None
    interventions: dict[str, int]
    stopped: str | None = None

    @property
    def finite(self) -> bool:
        """Whether every loss stayed finite."""
        return self.first_nonfinite is None


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """Both runs, the log and the report.

    Attributes:
        unguarded: the run without protection.
        guarded: the run under ``Guard`` defaults.
        log: the guarded run's JSONL log.
        report: the HTML report built from it (``None`` when not built).
        analysis: the analyses stored with the report (``to_dict()`` forms).
    """

    unguarded: RunOutcome
    guarded: RunOutcome
    log: Path
    report: Path | None
    analysis: dict[str, Any]

    @property
    def lead(self) -> int | None:
        """Steps between the first warning and the unguarded run's first NaN/Inf."""
        warned, broke = self.unguarded.first_warning, self.unguarded.first_nonfinite
        if warned is None or broke is None:
            return None
        return broke - warned


def _median(values: tuple[float, ...]) -> float:
    """Median that counts NaN as larger than everything (a NaN run has a NaN median)."""
    if not values:
        return math.nan
    ordered = sorted(values, key=lambda v: (math.isnan(v), v))
    return ordered[len(ordered) // 2]


def _first_warning(alerts: Sequence[Alert], seen: dict[str, tuple[int, str]], run: str) -> None:
    """Remember the first warning or critical alert of ``run``."""
    if run not in seen:
        for alert in alerts:
            if alert.severity.rank >= Severity.WARNING.rank:
                seen[run] = (alert.step, alert.kind.value)
                return


def _outcome(
    trace: scenarios.Trace,
    warning: tuple[int, str] | None,
    actions: dict[str, int],
    stopped: str | None,
) -> RunOutcome:
    losses = trace.losses
    bad = [
        i
        for i, (loss, norm) in enumerate(zip(losses, trace.norms, strict=True))
        if not (math.isfinite(loss) and math.isfinite(norm))
    ]
    finite = [v for v in losses if math.isfinite(v)]
    return RunOutcome(
        steps=len(losses),
        losses=losses,
        first_nonfinite=bad[0] if bad else None,
        divergence=trace.divergence_step,
        final_loss=losses[-1] if losses else math.nan,
        recent_loss=_median(losses[-max(10, len(losses) // 10) :]),
        best_loss=min(finite) if finite else math.nan,
        first_warning=warning[0] if warning else None,
        first_warning_kind=warning[1] if warning else None,
        interventions=actions,
        stopped=stopped,
    )


def run_demo(
    out_dir: Path,
    *,
    steps: int = 200,
    seed: int = 0,
    progress: Progress | None = None,
    build: bool = True,
) -> DemoResult:
    """Train the exploding RNN twice (unguarded, then guarded) and build the report.

    Args:
        out_dir: folder for ``guarded.jsonl`` and ``report.html`` with its PNGs (created).
        steps: optimizer steps of each run.
        seed: the scenario's seed (same weights and batches for both runs).
        progress: called after every step of either run.
        build: build the HTML report.

    Returns:
        The :class:`DemoResult`.
    """
    scenario = scenarios.get(SCENARIO)
    out_dir.mkdir(parents=True, exist_ok=True)

    # Unguarded: a Monitor only watches; the loop steps the optimizer itself.
    watch: dict[str, Monitor] = {}
    warnings: dict[str, tuple[int, str]] = {}

    def unguarded(run: scenarios.TrainingRun, step: int, loss: Tensor) -> bool:
        monitor = watch.setdefault("m", Monitor(run.model))
        _first_warning(monitor.observe(loss), warnings, "unguarded")
        if progress is not None:
            progress("unguarded", step, float(loss.detach()))
        return False

    plain = scenarios.train(scenario, unguarded, seed=seed, steps=steps, stop_at_divergence=False)
    before = _outcome(plain, warnings.get("unguarded"), {}, None)

    # Guarded: Guard() with its defaults replaces optimizer.step().
    model = scenario.build(seed).model
    analysis = {
        "recurrent_report": recurrent_report(model, seq_len=100).to_dict(),
        "explosion_table": explosion_table([1.01, 1.1, 1.5], T_max=100).to_dict(),
    }
    log = out_dir / "guarded.jsonl"
    metadata = {
        "scenario": SCENARIO,
        "description": scenario.description,
        "model": {"recurrent": True, "cell": "RNN", "num_layers": 1, "seq_len": 100},
    }
    sink = JsonlSink(log, metadata=metadata, if_exists="overwrite")
    state: dict[str, Any] = {"stopped": None}

    def guarded(run: scenarios.TrainingRun, step: int, loss: Tensor) -> bool:
        guard = state.get("guard")
        if guard is None:
            guard = state["guard"] = Guard(run.model, run.optimizer, sinks=[sink])
        if state["stopped"] is None:
            try:
                _first_warning(guard.step(loss).alerts, warnings, "guarded")
            except TrainingDivergedError as exc:
                state["stopped"] = str(exc)
        if progress is not None:
            progress("guarded", step, float(loss.detach()))
        return True  # the guard stepped (or skipped) the optimizer

    try:
        rescued = scenarios.train(
            scenario, guarded, seed=seed, steps=steps, stop_at_divergence=False
        )
    finally:
        sink.close()
    # The interventions as the log (and so the report) counts them: one action per step.
    counted = summarize(read_jsonl(log).records).actions
    actions = {kind.value: counted[kind] for kind in ActionKind if counted.get(kind)}
    after = _outcome(rescued, warnings.get("guarded"), actions, state["stopped"])
    page = None
    if build:
        from gradguard.report import build_report

        page = build_report(
            log, out_dir, analysis=analysis, title="gradguard demo: the exploding RNN, guarded"
        )
    return DemoResult(before, after, log, page, analysis)
