"""``gradguard inspect CHECKPOINT``: non-finite tensors, norms and recurrent spectral radii."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradguard.cli.errors import EXIT_NONFINITE, EXIT_OK
from gradguard.sinks.console import terminal_safe

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
    seq_len: Annotated[
        int,
        typer.Option("--seq-len", min=1, help="Sequence length the spectral verdicts refer to."),
    ] = 100,
) -> None:
    """Check a checkpoint: NaN/Inf tensors, parameter norms, spectral radius of weight_hh.

    Loads with torch.load(weights_only=True): no Python object is unpickled. Each recurrent
    weight's gate blocks get their spectral radius and a verdict for sequences of --seq-len
    steps (gradguard.analysis.recurrent_report). Exit code 1 when a weight or optimizer tensor
    holds NaN or Inf (use it as a CI gate), 0 otherwise, 2 for a bad path or file. In a training
    checkpoint (Lightning's, or any dict with state_dict / model / optimizer keys) only the
    weights and optimizer state are judged: bookkeeping such as callback state, where inf is a
    placeholder, is listed but does not fail the check.
    """
    from gradguard.cli.checkpoint import (
        is_judged,
        recurrent_spectra,
        tensor_health,
        weight_sections,
    )
    from gradguard.cli.target import load_object

    obj, tensors = load_object(checkpoint)
    sections = weight_sections(obj)
    health = [tensor_health(name, tensor) for name, tensor in tensors]
    judged = {h.name for h in health if is_judged(h.name, sections)}
    spectra = recurrent_spectra(tensors, seq_len=seq_len)

    console = Console(highlight=False)
    if not console.is_terminal:  # logs and CI: keep long tensor names on one line
        console.width = max(console.width, 160)
    bad = [h for h in health if not h.finite and h.name in judged]
    bad_names = {h.name for h in bad}
    placeholders = [h for h in health if not h.finite and h.name not in judged]
    shown = bad + [h for h in health if h.finite or h.name not in judged]
    if not show_all:
        shown = shown[: max(MAX_ROWS, len(bad))]
    table = Table(
        title=f"{terminal_safe(checkpoint.name)}: {len(health)} tensors", title_justify="left"
    )
    for column in ("tensor", "shape", "dtype", "norm", "max |x|", "NaN/Inf"):
        table.add_column(column, justify="right" if column != "tensor" else "left")
    for h in shown:
        problem = f"{h.nan} NaN, {h.inf} Inf" if not h.finite else "-"
        if not h.finite and h.name not in judged:
            problem += " (bookkeeping, not judged)"
        table.add_row(
            Text(terminal_safe(h.name)),
            "x".join(map(str, h.shape)) or "scalar",
            h.dtype,
            _num(h.norm),
            _num(h.max_abs),
            Text(problem, style="bold red" if h.name in bad_names else "dim"),
        )
    console.print(table)
    if len(shown) < len(health):
        console.print(f"... {len(health) - len(shown)} more tensors (use --all to list them)")
    if spectra.report is not None or spectra.skipped:
        report = spectra.report
        critical = f" (critical radius {report.critical_radius:.4g})" if report else ""
        spectral = Table(
            title=f"Recurrent weights: spectral radius per gate block, T={seq_len}{critical}",
            title_justify="left",
        )
        for column in ("tensor", "gate", "radius", "gain*radius", "verdict"):
            spectral.add_column(column, justify="left" if column == "tensor" else "right")
        for b in report.blocks if report is not None else ():
            spectral.add_row(
                Text(terminal_safe(b.name)),
                b.gate,
                _num(b.radius),
                _num(b.effective_radius),
                Text(b.verdict.value, style=VERDICT_STYLE[b.verdict.value]),
            )
        for name, why in spectra.skipped:
            style = "bold red" if why == "non-finite" else "dim"
            spectral.add_row(Text(terminal_safe(name)), "-", "-", "-", Text(why, style=style))
        console.print(spectral)
    if bad:
        listed = ", ".join(f"{terminal_safe(h.name)} ({h.nan} NaN, {h.inf} Inf)" for h in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        console.print(
            Text(f"FAIL: {len(bad)} of {len(judged)} tensors hold NaN/Inf: {listed}{more}"),
            style="bold red",
        )
        raise typer.Exit(EXIT_NONFINITE)
    if sections is None:
        console.print(Text(f"OK: all {len(health)} tensors are finite"), style="bold green")
    else:
        kept = ", ".join(sorted(sections))
        console.print(
            Text(f"OK: all {len(judged)} weight and optimizer tensors ({kept}) are finite"),
            style="bold green",
        )
    if placeholders:
        listed = ", ".join(h.name for h in placeholders[:5])
        more = f" and {len(placeholders) - 5} more" if len(placeholders) > 5 else ""
        console.print(
            Text(
                f"note: {len(placeholders)} bookkeeping tensor(s) outside the weights hold "
                f"NaN/Inf, as frameworks store placeholders there (not judged): {listed}{more}"
            ),
            style="dim",
        )
    raise typer.Exit(EXIT_OK)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if math.isfinite(value) else repr(value)


VERDICT_STYLE = {"stable": "green", "near-critical": "yellow", "explosive": "bold red"}
"""Colour of each :class:`gradguard.analysis.Verdict` value in the CLI's tables."""
