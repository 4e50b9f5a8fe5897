"""How the CLI fails: one line saying what is wrong, one line saying what to do, no traceback."""

from __future__ import annotations

import importlib
import sys
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

__all__ = ["EXIT_NONFINITE", "EXIT_OK", "EXIT_USAGE", "OneLineErrors", "fail"]

EXIT_OK = 0
"""The command did its job (and ``inspect`` found only finite values)."""
EXIT_NONFINITE = 1
"""``inspect``: the checkpoint holds a NaN or Inf value."""
EXIT_USAGE = 2
"""A bad path, file or argument: nothing was done."""


def _click_exceptions() -> Any:
    """Click's exception classes: vendored as ``typer._click`` by recent typer, else click's."""
    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # typer < 0.20 depends on click itself
        return importlib.import_module("click.exceptions")


_CX = _click_exceptions()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(message: str, hint: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: <message>`` and ``hint: <hint>`` to stderr and exit with ``code``."""
    typer.echo(f"error: {_one_line(message)}", err=True)
    typer.echo(f"hint: {_one_line(hint)}", err=True)
    raise typer.Exit(code)


class OneLineErrors(TyperGroup):
    """The app's command group: usage errors print two plain lines (error, hint), exit code 2.

    Click would print a boxed, multi-line message; a script calling gradguard reads one line.
    """

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; usage errors become an ``error:``/``hint:`` pair."""
        try:
            code = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except _CX.NoArgsIsHelpError as exc:
            typer.echo(exc.ctx.get_help())
            code = EXIT_USAGE
        except _CX.UsageError as exc:
            path = exc.ctx.command_path if exc.ctx is not None else "gradguard"
            typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
            typer.echo(f"hint: run '{path} --help' for usage", err=True)
            code = exc.exit_code
        except _CX.ClickException as exc:
            typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
            typer.echo("hint: run 'gradguard --help'", err=True)
            code = exc.exit_code
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else EXIT_OK)
