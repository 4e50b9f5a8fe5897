"""The typer application behind the ``gradguard`` command.

Exit codes: 0 success; 1 ``inspect`` found NaN/Inf in the checkpoint; 2 a bad path, file or
argument (one ``error:`` line and one ``hint:`` line on stderr, never a traceback).
"""

from __future__ import annotations

import typer

from gradguard.cli.errors import EXIT_NONFINITE, EXIT_OK, EXIT_USAGE, OneLineErrors
from gradguard.cli.inspect_cmd import inspect
from gradguard.cli.report_cmd import report

__all__ = ["EXIT_NONFINITE", "EXIT_OK", "EXIT_USAGE", "app", "main"]

app = typer.Typer(
    name="gradguard",
    cls=OneLineErrors,
    help="Catch exploding gradients in PyTorch training, rescue the run, explain why.",
    epilog=(
        "Exit codes: 0 success; 1 inspect found NaN/Inf in the checkpoint; "
        "2 bad path, file or argument."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("inspect")(inspect)
app.command("report")(report)


def main() -> None:
    """Entry point of the ``gradguard`` console script."""
    app()
