"""``gradguard inspect CHECKPOINT``: non-finite tensors, norms and recurrent spectral radii."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradguard.cli.errors import EXIT_NONFINITE, EXIT_OK, fail

__all__ = ["inspect"]

MAX_ROWS = 40


def inspect(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT",
            help="A file written by torch.save: a state_dict, or a dict nesting state_dicts.",
            show_default=False,
        ),
    ],
    show_all: Annotated[
        bool, typer.Option("--all", help=f"List every tensor, not only the first {MAX_ROWS}.")
    ] = False,
) -> None:
    """Check a checkpoint: NaN/Inf tensors, parameter norms, spectral radius of weight_hh.

    Loads with torch.load(weights_only=True): no Python object is unpickled. Exit code 1 when
    any tensor holds NaN or Inf (use it as a CI gate), 0 otherwise, 2 for a bad path or file.
    """
    if not checkpoint.exists():
        fail(f"checkpoint {str(checkpoint)!r} does not exist", "check the path and try again")
    if checkpoint.is_dir():
        fail(
            f"checkpoint {str(checkpoint)!r} is a folder",
            "pass the file written by torch.save (e.g. model.pt)",
        )
    from gradguard.cli.checkpoint import flatten_tensors, gate_radii, load_checkpoint, tensor_health

    try:
        obj = load_checkpoint(checkpoint)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            fail(
                f"{str(checkpoint)!r} holds Python objects that torch.load(weights_only=True) "
                "refuses to unpickle",
                "gradguard never runs pickled code; re-save the tensors only, e.g. "
                "torch.save(model.state_dict(), path)",
            )
        fail(
            f"{str(checkpoint)!r} is not a PyTorch checkpoint", "pass a file written by torch.save"
        )
    except Exception as exc:  # any failure to parse a foreign file means "not a checkpoint"
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        fail(
            f"{str(checkpoint)!r} is not a readable PyTorch checkpoint ({reason[:120]})",
            "pass a file written by torch.save",
        )
    tensors = list(flatten_tensors(obj))
    if not tensors:
        fail(
            f"{str(checkpoint)!r} holds no tensors (a {type(obj).__name__})",
            "pass a state_dict or a dict that contains one",
        )
    health = [tensor_health(name, tensor) for name, tensor in tensors]
    radii = [r for name, tensor in tensors for r in gate_radii(name, tensor)]

    console = Console(highlight=False)
    if not console.is_terminal:  # logs and CI: keep long tensor names on one line
        console.width = max(console.width, 160)
    bad = [h for h in health if not h.finite]
    shown = bad + [h for h in health if h.finite]
    if not show_all:
        shown = shown[: max(MAX_ROWS, len(bad))]
    table = Table(title=f"{checkpoint.name}: {len(health)} tensors", title_justify="left")
    for column in ("tensor", "shape", "dtype", "norm", "max |x|", "NaN/Inf"):
        table.add_column(column, justify="right" if column != "tensor" else "left")
    for h in shown:
        problem = f"{h.nan} NaN, {h.inf} Inf" if not h.finite else "-"
        table.add_row(
            Text(h.name),
            "x".join(map(str, h.shape)) or "scalar",
            h.dtype,
            _num(h.norm),
            _num(h.max_abs),
            Text(problem, style="bold red" if not h.finite else "dim"),
        )
    console.print(table)
    if len(shown) < len(health):
        console.print(f"... {len(health) - len(shown)} more tensors (use --all to list them)")
    if radii:
        spectral = Table(
            title="Recurrent weights: spectral radius per gate block", title_justify="left"
        )
        for column in ("tensor", "gate", "radius", "verdict"):
            spectral.add_column(column, justify="left" if column == "tensor" else "right")
        for r in radii:
            spectral.add_row(Text(r.name), r.gate, _num(r.radius), _verdict(r.radius))
        console.print(spectral)
    if bad:
        listed = ", ".join(f"{h.name} ({h.nan} NaN, {h.inf} Inf)" for h in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        console.print(
            Text(f"FAIL: {len(bad)} of {len(health)} tensors hold NaN/Inf: {listed}{more}"),
            style="bold red",
        )
        raise typer.Exit(EXIT_NONFINITE)
    console.print(Text(f"OK: all {len(health)} tensors are finite"), style="bold green")
    raise typer.Exit(EXIT_OK)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else repr(value)


def _verdict(radius: float | None) -> Text:
    if radius is None:
        return Text("not square", style="dim")
    if not math.isfinite(radius):
        return Text("non-finite", style="bold red")
    if radius > 1.0:
        return Text("> 1: can explode", style="bold yellow")
    return Text("<= 1", style="green")
