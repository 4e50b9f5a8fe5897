"""The typer application behind the ``gradguard`` command: demo, run, analyze, inspect, report.

Exit codes: 0 success; 1 ``inspect`` found NaN/Inf in the checkpoint; 2 a bad path, file or
argument (one ``error:`` line and one ``hint:`` line on stderr, never a traceback); ``run``
passes on the script's own exit code, 3 when the guard stopped a run it could not rescue, 130
after Ctrl-C.
"""

from __future__ import annotations

from typing import Annotated

import typer

from gradguard.cli.analyze_cmd import analyze
from gradguard.cli.demo_cmd import demo
from gradguard.cli.errors import EXIT_NONFINITE, EXIT_OK, EXIT_USAGE, OneLineErrors
from gradguard.cli.inspect_cmd import inspect
from gradguard.cli.report_cmd import report
from gradguard.cli.run_cmd import run

__all__ = ["EXIT_NONFINITE", "EXIT_OK", "EXIT_USAGE", "app", "main"]

RUN_CONTEXT = {
    "allow_extra_args": True,
    "ignore_unknown_options": True,
    "allow_interspersed_args": False,
    "auto_envvar_prefix": "GRADGUARD",
}
"""``run`` stops parsing at SCRIPT: everything after it belongs to the script; each option can
also be set as GRADGUARD_<OPTION> (torchrun's own parser rejects ``--log`` after the script)."""

app = typer.Typer(
    name="gradguard",
    cls=OneLineErrors,
    help="Catch exploding gradients in PyTorch training, rescue the run, explain why.",
    epilog=(
        "Exit codes: 0 success; 1 inspect found NaN/Inf in the checkpoint; 2 bad path, file or "
        "argument; run: the script's own exit code, 3 when the guard stopped a run it could not "
        "rescue, 130 after Ctrl-C."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rich markup would read "[default: ...]" in a help text as a tag and drop it,
    # and it prints the help while the no-arguments error is being built (so it came twice).
    rich_markup_mode=None,
)
app.command("demo", short_help="Watch gradguard rescue an exploding RNN; write its report.")(demo)
app.command(
    "run",
    context_settings=RUN_CONTEXT,
    short_help="Run a training script unchanged, every optimizer step guarded.",
)(run)
app.command("analyze", short_help="Explain why a model's gradients can explode.")(analyze)
app.command("inspect", short_help="Check a checkpoint's weights for NaN/Inf; recurrent spectra.")(
    inspect
)
app.command("report", short_help="Build the HTML report of a run from its JSONL log.")(report)


def _print_version(value: bool) -> None:
    if value:
        import torch

        from gradguard import __version__

        typer.echo(f"gradguard {__version__} (torch {torch.__version__})")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of gradguard and torch, and exit.",
        ),
    ] = False,
) -> None:
    """Catch exploding gradients in PyTorch training, rescue the run, explain why."""


def main() -> None:
    """Entry point of the ``gradguard`` console script."""
    app()
