"""``gradguard demo``: the textbook exploding RNN, unguarded then guarded, and the report."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradguard.cli.errors import fail

if TYPE_CHECKING:
    from rich.console import Console

    from gradguard.cli.demo import DemoResult

__all__ = ["DEMO_DIR", "demo"]

DEMO_DIR = Path("gradguard-demo")
FULL_STEPS = 200
QUICK_STEPS = 50


def demo(
    out: Annotated[
        Path,
        typer.Option("-o", "--out", help="Folder for the log, report.html and its PNGs."),
    ] = DEMO_DIR,
    quick: Annotated[
        bool, typer.Option("--quick", help=f"{QUICK_STEPS} steps per run instead of {FULL_STEPS}.")
    ] = False,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", min=20, help="Steps per run (overrides --quick).", show_default=False
        ),
    ] = None,
) -> None:
    """Watch gradguard rescue the textbook exploding RNN, then read the report.

    An RNN (hidden 50) with its recurrent weights scaled x3, sequences of 100 steps, SGD at lr
    0.01: trained once unguarded (a Monitor only watches) and once with Guard() defaults, from
    the same weights on the same batches. Prints both outcomes side by side and writes
    OUT/report.html with its PNGs from the guarded run's JSONL log. Exit code 0, 2 for a bad
    option or an output folder that cannot be written.
    """
    if out.exists() and not out.is_dir():
        fail(f"--out {str(out)!r} exists and is not a folder", "pick another folder with -o DIR")
    count = steps if steps is not None else (QUICK_STEPS if quick else FULL_STEPS)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gradguard.cli.demo import run_demo

    console = Console(highlight=False)
    if not console.is_terminal:  # logs and CI: keep the outcome table on one line per row
        console.width = max(console.width, 100)
    console.print(
        "[bold]gradguard demo[/bold]: an RNN whose recurrent weights are scaled x3 "
        "(spectral radius about 1.8), trained on sequences of 100 steps with SGD at lr 0.01."
    )
    started = time.perf_counter()
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = {
            name: bar.add_task(name, total=count, status="") for name in ("unguarded", "guarded")
        }

        def progress(run: str, step: int, loss: float) -> None:
            status = f"loss {loss:.4g}" if math.isfinite(loss) else f"[red]loss {loss}[/red]"
            bar.update(tasks[run], completed=step + 1, status=status)

        try:
            result = run_demo(out, steps=count, progress=progress)
        except OSError as exc:
            fail(f"cannot write to {str(out)!r}: {exc}", "pick another folder with -o DIR")
    _print_outcome(console, result, time.perf_counter() - started)


def _loss(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else repr(value)


def _print_outcome(console: Console, result: DemoResult, seconds: float) -> None:
    from rich.table import Table

    plain, guarded = result.unguarded, result.guarded
    table = Table(title="Outcome", title_justify="left")
    table.add_column("")
    table.add_column("unguarded", justify="right")
    table.add_column("guarded: Guard() defaults", justify="right")
    table.add_row(
        "result",
        "[bold red]NaN[/bold red]" if not plain.finite else "finite",
        "[bold green]finite[/bold green]" if guarded.finite else "[bold red]NaN[/bold red]",
    )
    table.add_row(
        "first NaN/Inf (loss or gradient)",
        f"step {plain.first_nonfinite}" if plain.first_nonfinite is not None else "-",
        f"step {guarded.first_nonfinite}" if guarded.first_nonfinite is not None else "none",
    )
    table.add_row(
        "diverged (loss x100)",
        f"step {plain.divergence}" if plain.divergence is not None else "-",
        f"step {guarded.divergence}" if guarded.divergence is not None else "never",
    )
    table.add_row("first loss", _loss(plain.losses[0]), _loss(guarded.losses[0]))
    recent = f"loss, last {max(10, guarded.steps // 10)} steps (median)"
    table.add_row(recent, _loss(plain.recent_loss), _loss(guarded.recent_loss))
    table.add_row(
        "first warning",
        _warning(plain.first_warning, plain.first_warning_kind),
        _warning(guarded.first_warning, guarded.first_warning_kind),
    )
    actions = ", ".join(f"{n} {k}" for k, n in guarded.interventions.items()) or "none"
    table.add_row("interventions", "-", actions)
    console.print(table)
    if result.lead is not None:
        console.print(
            f"The first warning came {result.lead} steps before the unguarded run hit NaN."
        )
    if guarded.stopped:
        console.print(f"[yellow]The guard stopped the run:[/yellow] {guarded.stopped}")
    console.print(f"log: {result.log}")
    if result.report is not None:
        console.print(f"report: [bold]{result.report}[/bold]  (open it in a browser)")
    console.print(f"[dim]{seconds:.1f} s[/dim]")


def _warning(step: int | None, kind: str | None) -> str:
    if step is None:
        return "none"
    return f"step {step}" + (f" ({kind})" if kind else "")
