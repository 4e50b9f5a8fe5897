"""``gradguard report LOG.jsonl [-o DIR]``: build the HTML report of a logged run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gradguard.cli.errors import fail
from gradguard.errors import ConfigError, LogFormatError

__all__ = ["report"]


def report(
    log: Annotated[
        Path,
        typer.Argument(
            metavar="LOG.jsonl", help="A JSONL log written by gradguard.", show_default=False
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--out",
            help="Folder for report.html and its PNGs.  [default: <log name>-report beside it]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Build a self-contained HTML report (plots, events, advice) from a run's JSONL log.

    Writes report.html and its PNG figures into the output folder and prints the page's path.
    Exit code 0, or 2 for a missing or foreign log or an output folder that cannot be written.
    """
    if not log.exists():
        fail(
            f"log file {str(log)!r} does not exist",
            "pass the .jsonl file your run wrote (JsonlSink or gradguard run)",
        )
    if log.is_dir():
        fail(f"log file {str(log)!r} is a folder", "pass the .jsonl file inside it")
    from gradguard.report.build import write_report
    from gradguard.report.page import outcome

    try:
        built = write_report(log, out)
    except LogFormatError as exc:
        fail(str(exc), "pass a .jsonl log written by gradguard's JsonlSink")
    except ConfigError as exc:
        fail(str(exc), "choose another output folder with -o DIR")
    except OSError as exc:
        fail(f"cannot write the report: {exc}", "check the output folder's permissions, or -o DIR")
    summary = built.summary
    if built.skipped is not None:
        typer.echo(f"warning: {built.skipped}", err=True)
    told = sum(summary.alerts_by_severity.values())  # an incident once, not its repeats
    repeats = (
        f", {summary.alerts_with_repeats} with repeats"
        if summary.alerts_with_repeats != told
        else ""
    )
    typer.echo(
        f"report: {built.path} ({summary.steps} steps, {summary.interventions} interventions, "
        f"{told} alerts{repeats})"
    )
    typer.echo(outcome(summary)[1])  # the page's first line: did the run train?
