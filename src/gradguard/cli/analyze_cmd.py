"""``gradguard analyze TARGET``: why a model's gradients can explode, and what to do about it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gradguard.analysis import (
    FLOAT32_MAX,
    DepthProfile,
    ExplosionTable,
    RecurrentReport,
    critical_radius,
    depth_profile,
    explosion_table,
    recurrent_report,
)
from gradguard.cli.errors import fail
from gradguard.errors import GradguardError, UnsupportedModelError
from gradguard.remedies import Advice, suggest
from gradguard.sinks.console import terminal_safe

__all__ = ["Analysis", "analyze", "run_analysis"]

REFERENCE_RADII = (1.01, 1.1, 1.5)
"""Radii tabulated beside the model's own, for a sense of scale."""


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What ``gradguard analyze`` found.

    Attributes:
        target: what was analysed, as given on the command line.
        model: class name of the model, or ``"checkpoint"``.
        parameters: number of parameter elements (of the state_dict for a checkpoint).
        seq_len: sequence length the verdicts refer to.
        threshold: growth factor that counts as an explosion.
        critical_radius: ``threshold^(1/seq_len)``.
        recurrent: spectra of the recurrent weights, or ``None`` when there are none.
        depth: the depth profile on the example inputs, or ``None``.
        growth: how fast ρ^T grows for the model's worst radius and reference radii.
        advice: :func:`gradguard.remedies.suggest` on all of the above.
        notes: one sentence for each analysis that did not run, and why.
    """

    target: str
    model: str
    parameters: int
    seq_len: int
    threshold: float
    critical_radius: float
    recurrent: RecurrentReport | None
    depth: DepthProfile | None
    growth: ExplosionTable
    advice: tuple[Advice, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form: the analyses' own ``to_dict()``, advice, notes."""
        return {
            "target": self.target,
            "model": self.model,
            "parameters": self.parameters,
            "seq_len": self.seq_len,
            "threshold": self.threshold,
            "critical_radius": self.critical_radius,
            "recurrent_report": self.recurrent.to_dict() if self.recurrent else None,
            "depth_profile": self.depth.to_dict() if self.depth else None,
            "explosion_table": self.growth.to_dict(),
            "advice": [a.to_dict() for a in self.advice],
            "notes": list(self.notes),
        }


def _output_loss(output: Any, _targets: Any) -> Any:
    """Mean square of the model's (first) output: a stand-in loss for the depth profile."""
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output.float().pow(2).mean()


def run_analysis(
    target: str,
    *,
    model: Any = None,
    inputs: Any = None,
    tensors: list[tuple[str, Any]] | None = None,
    seq_len: int = 100,
    threshold: float = 1e6,
) -> Analysis:
    """Run the analyses that apply to a model (with optional inputs) or a checkpoint's tensors.

    Args:
        target: label of what is analysed.
        model: an ``nn.Module``, or ``None`` for a checkpoint.
        inputs: example inputs for ``model``; enable the depth profile, whose loss is the mean
            square of the model's output (the per-layer growth does not depend on that choice).
        tensors: ``(name, tensor)`` pairs of a checkpoint when there is no model.
        seq_len: sequence length the spectral verdicts and the growth table refer to.
        threshold: growth factor that counts as an explosion.

    Returns:
        The :class:`Analysis`.
    """
    from gradguard.cli.checkpoint import recurrent_spectra

    notes: list[str] = []
    recurrent: RecurrentReport | None = None
    depth: DepthProfile | None = None
    if model is not None:
        name = type(model).__name__
        parameters = sum(p.numel() for p in model.parameters())
        try:
            recurrent = recurrent_report(model, seq_len=seq_len, threshold=threshold)
        except UnsupportedModelError:
            notes.append("No nn.RNN/LSTM/GRU or RNN cell: no recurrent spectrum to analyse.")
        if inputs is None:
            notes.append(
                "Depth profile skipped: the factory returned no example inputs; return "
                "(model, example_inputs) to get it."
            )
        else:
            try:
                depth = depth_profile(model, inputs, None, _output_loss)
            except Exception as exc:  # the user's model on the user's inputs: report, go on
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                notes.append(f"Depth profile failed: {type(exc).__name__}: {first[:200]}")
    else:
        name = "checkpoint"
        parameters = sum(t.numel() for _, t in tensors or ())
        spectra = recurrent_spectra(tensors or [], seq_len=seq_len, threshold=threshold)
        recurrent = spectra.report
        notes.extend(f"{n}: not analysed ({why})." for n, why in spectra.skipped)
        if recurrent is None and not spectra.skipped:
            notes.append("No weight_hh tensor in the checkpoint: no recurrent spectrum.")
        notes.append("Depth profile needs the model: pass FILE.py:FACTORY instead.")
    radii = sorted(
        {*REFERENCE_RADII, *([round(recurrent.worst.effective_radius, 4)] if recurrent else [])}
    )
    growth = explosion_table(radii, T_max=seq_len)
    evidence = [r for r in (recurrent, depth) if r is not None]
    advice: list[Advice] = []
    if model is not None or evidence:
        advice = suggest(model, evidence or None, seq_len=seq_len)
    return Analysis(
        target=target,
        model=name,
        parameters=parameters,
        seq_len=seq_len,
        threshold=float(threshold),
        critical_radius=critical_radius(seq_len, threshold),
        recurrent=recurrent,
        depth=depth,
        growth=growth,
        advice=tuple(advice),
        notes=tuple(notes),
    )


def analyze(
    target: Annotated[
        str,
        typer.Argument(
            metavar="TARGET",
            help="FILE.py:FACTORY or module:FACTORY (a zero-argument function returning a model "
            "or (model, example_inputs)), or a checkpoint file written by torch.save.",
            show_default=False,
        ),
    ],
    seq_len: Annotated[
        int,
        typer.Option("--seq-len", min=1, help="Training sequence length T the verdicts use."),
    ] = 100,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", min=1.0, help="Gradient growth over T steps that counts as explosion."
        ),
    ] = 1e6,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of tables.")
    ] = False,
) -> None:
    """Explain why a model's gradients can explode: spectra, depth profile, growth, advice.

    For each recurrent weight (per gate block): spectral radius, largest singular value and a
    verdict against the critical radius threshold^(1/T); with example inputs, the gradient per
    layer; how fast rho^T grows; and the remedies that follow (gradguard.remedies.suggest).
    Exit code 0 when the analysis ran, 2 for a bad target or argument.
    """
    from gradguard.cli.target import is_factory_spec, load_factory, load_tensors

    # With --json, anything the user's code prints goes to stderr: stdout holds only the JSON.
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet:
        if is_factory_spec(target):
            loaded = load_factory(target)
            model, inputs, tensors = loaded.model, loaded.inputs, None
        elif target.endswith(".py") or target.rpartition(":")[0].endswith(".py"):
            fail(
                f"{target!r} names no factory",
                "add the function that builds the model: FILE.py:FACTORY",
            )
        else:
            model, inputs, tensors = None, None, load_tensors(Path(target))
        try:
            result = run_analysis(
                target,
                model=model,
                inputs=inputs,
                tensors=tensors,
                seq_len=seq_len,
                threshold=threshold,
            )
        except GradguardError as exc:
            fail(str(exc), "check the model and the options (gradguard analyze --help)")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), allow_nan=False))
        return
    _print(result)


# ------------------------------------------------------------------------------------------------
# Display.


def _num(value: float | None, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if math.isfinite(value) else repr(value)


def _print(result: Analysis) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gradguard.cli.inspect_cmd import VERDICT_STYLE

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    console.print(
        Text(f"{result.target}: {result.model}, {result.parameters:,} parameters", style="bold")
    )
    console.print(
        f"Critical spectral radius for T={result.seq_len}: {result.critical_radius:.4f} "
        f"(a larger radius can grow a gradient more than {result.threshold:g}x over "
        f"{result.seq_len} steps)."
    )
    if result.recurrent is not None:
        report = result.recurrent
        console.print(
            Text(f"Recurrent weights, T={report.seq_len}: {report.verdict.value}", style="bold")
        )
        table = Table()
        for column in ("weight", "gate", "shape", "rho", "sigma_max", "gain*rho", "verdict"):
            table.add_column(column, justify="left" if column == "weight" else "right")
        for b in report.blocks:
            table.add_row(
                Text(terminal_safe(b.name)),
                b.gate,
                "x".join(map(str, b.shape)),
                _num(b.radius),
                _num(b.sigma_max),
                _num(b.effective_radius),
                Text(b.verdict.value, style=VERDICT_STYLE[b.verdict.value]),
            )
        console.print(table)
    if result.depth is not None:
        depth = result.depth
        console.print(
            Text(
                f"Depth profile: {len(depth.layers)} layers, the gradient grows "
                f"{depth.growth_factor:.4g}x per layer toward the input",
                style="bold",
            )
        )
        table = Table()
        for column in ("layer", "type", "dL/da_k", "dL/dinput", "dL/dW", "growth"):
            table.add_column(column, justify="left" if column in ("layer", "type") else "right")
        for layer in depth.layers:
            table.add_row(
                Text(terminal_safe(layer.name)),
                layer.module_type,
                _num(layer.signal_norm),
                _num(layer.input_grad_norm),
                _num(layer.weight_grad_norm),
                _num(layer.growth),
            )
        console.print(table)
    console.print(Text(f"How fast rho^T grows (T <= {result.growth.T_max})", style="bold"))
    table = Table()
    table.add_column("rho", justify="right")
    table.add_column(f"rho^{result.growth.T_max}", justify="right")
    for bound in (*result.growth.thresholds, FLOAT32_MAX):
        table.add_column(
            "float32 overflow at T" if bound == FLOAT32_MAX else f"> {bound:g} at T",
            justify="right",
        )
    worst = result.recurrent.worst.effective_radius if result.recurrent else None
    for row in result.growth.rows:
        cells = []
        for crossing in row.crossings:
            if crossing.step is not None:
                cells.append(str(crossing.step))
            elif crossing.eventually is not None:
                cells.append(f"beyond ({crossing.eventually})")
            else:
                cells.append("never")
        mark = " (model)" if worst is not None and row.radius == round(worst, 4) else ""
        table.add_row(f"{row.radius:.4g}{mark}", _num(row.curve[-1], ".3g"), *cells)
    console.print(table)
    for note in result.notes:
        console.print(Text(note, style="dim"))
    if result.advice:
        console.print(Text("Advice", style="bold"))
        for number, item in enumerate(result.advice, start=1):
            settings = ", ".join(f"{k}={v}" for k, v in item.params)
            line = Text(f"{number}. ", style="bold")
            line.append(item.message, style="bold red" if item.priority == 0 else "")
            if settings:
                line.append(f" ({settings})", style="cyan")
            console.print(line)
            if item.evidence:
                console.print(Text(f"   evidence: {item.evidence}", style="dim"))
    else:
        console.print(Text("Advice: nothing to change for exploding gradients.", style="green"))
