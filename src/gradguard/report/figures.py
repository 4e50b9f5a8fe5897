"""The report's plots, drawn with matplotlib (Agg, no pyplot, imported lazily).

Each run figure takes a :class:`~gradguard.report.digest.RunDigest` (what the report builds in
its one pass over the log: downsampled curves and the event records) or, for small runs and
tests, the records themselves. Each function returns PNG bytes. Figures are built with
``matplotlib.figure.Figure`` directly, so drawing a report never switches the backend or
touches pyplot state of the calling process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from gradguard.records import ActionKind, Severity, StepRecord
from gradguard.report.digest import Envelope, Marks, RunDigest
from gradguard.sinks import shown_severity

__all__ = [
    "clip_lr_figure",
    "culprit_heatmap",
    "label",
    "lines_figure",
    "loss_figure",
    "norm_figure",
    "place_legend",
    "png_bytes",
    "series_figure",
]

WIDTH = 10.0
SEVERITY_COLOR = {
    Severity.INFO: "#4c9be8",
    Severity.WARNING: "#f0a30a",
    Severity.CRITICAL: "#d62728",
}
ACTION_STYLE: dict[ActionKind, tuple[str, str]] = {
    ActionKind.SKIP: ("#9467bd", ":"),
    ActionKind.BACKOFF: ("#ff7f0e", "--"),
    ActionKind.ROLLBACK: ("#8c1a8c", "-"),
    ActionKind.RESET_OPTIMIZER_STATE: ("#17becf", "-."),
    ActionKind.ABORT: ("#000000", "-"),
}
MAX_HEATMAP_ROWS = 16
MAX_HEATMAP_COLUMNS = 400


def label(text: str, limit: int = 48) -> str:
    """Make a user string safe as a matplotlib label: no mathtext, at most ``limit`` chars."""
    if len(text) > limit:
        text = "..." + text[-(limit - 3) :]
    return text.replace("$", r"\$")


def png_bytes(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def place_legend(ax: Any) -> None:
    """Put the legend under the axes, outside them: it never hides data (an early spike)."""
    if not ax.get_legend_handles_labels()[0]:
        return
    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        fontsize=8,
        ncols=4,
        frameon=False,
    )


def _figure(rows: int = 1, height: float = 3.6) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height * rows), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    return fig, axes


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


def _digest(records: RunDigest | Sequence[StepRecord]) -> RunDigest:
    return records if isinstance(records, RunDigest) else RunDigest.of(records)


def _mark_nonfinite(ax: Any, marks: Marks) -> None:
    bad = marks.steps()
    if bad:
        ax.scatter(
            bad,
            [0.97] * len(bad),
            transform=ax.get_xaxis_transform(),
            marker="x",
            color="#d62728",
            s=40,
            zorder=5,
            label=f"NaN/Inf ({marks.count})",
        )


def _mark_interventions(ax: Any, events: Sequence[StepRecord]) -> None:
    """One vertical line per skip, back-off, rollback, reset or abort (one artist per kind)."""
    by_kind: dict[ActionKind, list[int]] = {}
    for record in events:
        if record.action in ACTION_STYLE:
            by_kind.setdefault(record.action, []).append(record.step)
    for kind, steps in by_kind.items():
        color, linestyle = ACTION_STYLE[kind]
        ax.vlines(
            steps,
            0.0,
            1.0,
            transform=ax.get_xaxis_transform(),
            colors=color,
            linestyles=linestyle,
            linewidth=1.0,
            alpha=0.7,
            label=kind.value,
        )


def _draw(ax: Any, envelope: Envelope, **style: Any) -> None:
    xs, ys = envelope.points()
    ax.plot(xs, ys, **style)


def norm_figure(records: RunDigest | Sequence[StepRecord]) -> bytes:
    """Gradient norm per step on a log scale, with alerts and interventions marked.

    Long runs are drawn from their :class:`~gradguard.report.digest.RunDigest`: the smallest
    and largest norm of each bucket of steps, so every spike shows. Non-finite norms are red
    crosses at the top edge (a log axis cannot show them); the norm after clipping is drawn
    where it differs; alerts are triangles coloured by severity at the norm of their step (just
    under the top edge when that norm is NaN/Inf); skips, back-offs, rollbacks, resets and
    aborts are vertical lines.
    """
    digest = _digest(records)
    fig, (ax,) = _figure(height=4.2)
    _draw(ax, digest.norm, color="#1f77b4", linewidth=1.2, label="gradient norm")
    if digest.clipped.count:
        sparse = len(digest.clipped.buckets) < 200  # isolated clipped steps need a marker
        style = {"marker": ".", "markersize": 4} if sparse else {}
        _draw(ax, digest.clipped, color="#2ca02c", linewidth=1.0, label="after clipping", **style)
    _mark_nonfinite(ax, digest.norm_nonfinite)
    events = digest.records()
    for severity in (Severity.INFO, Severity.WARNING, Severity.CRITICAL):
        xs: list[int] = []
        ys: list[float] = []
        for record in events:
            for alert in record.alerts:
                if shown_severity(record, alert) is severity:  # a scaler overflow: info
                    xs.append(alert.step)
                    ys.append(math.nan if record.total_norm is None else record.total_norm)
        if not xs:
            continue
        drawable = [y > 0 and math.isfinite(y) for y in ys]  # NaN/Inf go to the top edge
        style = {"marker": "v", "color": SEVERITY_COLOR[severity], "s": 36, "zorder": 4}
        ax.scatter(
            [x for x, ok in zip(xs, drawable, strict=True) if ok],
            [y for y, ok in zip(ys, drawable, strict=True) if ok],
            label=f"{severity.value} alert ({len(xs)})",
            **style,
        )
        off = [x for x, ok in zip(xs, drawable, strict=True) if not ok]
        if off:
            ax.scatter(off, [0.91] * len(off), transform=ax.get_xaxis_transform(), **style)
    _mark_interventions(ax, events)
    bounds = digest.norm.bounds()
    if bounds is not None and bounds[1] > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.set_title("Gradient norm")
    ax.grid(True, which="major", alpha=0.3)
    place_legend(ax)
    return png_bytes(fig)


def loss_figure(records: RunDigest | Sequence[StepRecord]) -> bytes:
    """Loss per step (log scale when positive and spanning more than two decades)."""
    digest = _digest(records)
    fig, (ax,) = _figure()
    _draw(ax, digest.loss, color="#ff7f0e", linewidth=1.2, label="loss")
    _mark_nonfinite(ax, digest.loss_nonfinite)
    _mark_interventions(ax, digest.records())
    _log_if_wide(ax, digest.loss.bounds())
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    place_legend(ax)
    return png_bytes(fig)


def culprit_heatmap(records: RunDigest | Sequence[StepRecord]) -> bytes:
    """Per-tensor gradient norms (the logged top-k) over steps, log10 colour scale.

    Rows are the tensors that reached the top-k, largest peak first (at most 16); columns are
    steps, binned (maximum per bin) when the run has more than 400 of them. A blank cell means
    the tensor was not among the top-k that step; a red cell means its norm was NaN/Inf. Steps
    that go back (a log continued after resuming from an older snapshot) share the columns of
    their step numbers.
    """
    import numpy as np

    cells = _digest(records).culprits
    names = cells.names(MAX_HEATMAP_ROWS)
    fig, (ax,) = _figure(height=max(2.6, 0.4 * len(names) + 1.4))
    if not names or cells.first_step is None or cells.last_step is None:
        ax.text(0.5, 0.5, "no per-tensor norms in the log", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return png_bytes(fig)
    first, last, shift = cells.first_step, cells.last_step, cells.shift
    low = first >> shift
    keys = (last >> shift) - low + 1
    span = last - first + 1
    columns = min(keys, MAX_HEATMAP_COLUMNS)
    grid = np.full((len(names), columns), np.nan)
    bad = np.zeros((len(names), columns), dtype=bool)
    for i, name in enumerate(names):
        row = cells.cells[name]
        for key, norm in row.items():
            col = min((key - low) * columns // keys, columns - 1)
            if not math.isfinite(norm):
                bad[i, col] = True
            elif norm > 0:
                value = math.log10(norm)
                if not value <= grid[i, col]:  # NaN-safe max
                    grid[i, col] = value
    extent = (first - 0.5, last + 0.5, len(names) - 0.5, -0.5)
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        extent=extent,
    )
    if bad.any():
        overlay = np.ma.masked_where(~bad, np.ones_like(grid))
        ax.imshow(overlay, aspect="auto", interpolation="nearest", cmap="autumn", extent=extent)
    ax.set_yticks(range(len(names)), [label(n) for n in names], fontsize=8)
    ax.set_xlabel("step" + (f" (binned into {columns} columns)" if columns < span else ""))
    ax.set_title("Culprits: per-tensor gradient norm (log10); red = NaN/Inf")
    fig.colorbar(image, ax=ax, label="log10 gradient norm")
    return png_bytes(fig)


def clip_lr_figure(records: RunDigest | Sequence[StepRecord]) -> bytes:
    """Clip coefficient (top) and learning rate (bottom) per step."""
    digest = _digest(records)
    fig, (top, bottom) = _figure(rows=2, height=2.4)
    _draw(top, digest.clip_coef, color="#2ca02c", drawstyle="steps-post")
    coefs = digest.clip_coef.bounds()
    if coefs is not None and coefs[0] < 0.05:
        top.set_yscale("log")
    else:
        top.set_ylim(-0.05, 1.05)
    top.set_ylabel("clip coefficient")
    top.set_title("Clip coefficient (1 = not clipped) and learning rate")
    top.grid(True, alpha=0.3)
    if digest.lr.count:
        _draw(bottom, digest.lr, color="#9467bd", drawstyle="steps-post")
        _log_if_wide(bottom, digest.lr.bounds(), decades=1.0)
    else:
        bottom.text(
            0.5, 0.5, "no learning rate in the log", ha="center", transform=bottom.transAxes
        )
    _mark_interventions(bottom, digest.records())
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    bottom.grid(True, alpha=0.3)
    place_legend(bottom)
    return png_bytes(fig)


def series_figure(title: str, series: Sequence[tuple[str, Sequence[float]]]) -> bytes:
    """One panel per named numeric series, x = index: the generic plot for analysis results."""
    fig, axes = _figure(rows=len(series), height=2.6)
    for ax, (name, values) in zip(axes, series, strict=True):
        finite = _finite(values)
        ax.plot(range(len(finite)), finite, marker="." if len(finite) <= 60 else None)
        shown = [v for v in finite if math.isfinite(v)]
        _log_if_wide(ax, (min(shown), max(shown)) if shown else None)
        ax.set_ylabel(label(name, 32))
        ax.grid(True, alpha=0.3)
    axes[0].set_title(label(title, 80))
    axes[-1].set_xlabel("index")
    return png_bytes(fig)


def lines_figure(title: str, lines: Sequence[tuple[str, Sequence[float]]]) -> bytes:
    """One panel, one labelled line per series, x = index: e.g. a growth curve per radius."""
    fig, (ax,) = _figure(height=3.2)
    finite_values: list[float] = []
    for name, values in lines:
        finite = _finite(values)
        finite_values += [v for v in finite if math.isfinite(v)]
        ax.plot(range(len(finite)), finite, label=label(name, 32))
    bounds = (min(finite_values), max(finite_values)) if finite_values else None
    _log_if_wide(ax, bounds)
    ax.set_title(label(title, 80))
    ax.set_xlabel("index")
    ax.grid(True, alpha=0.3)
    place_legend(ax)
    return png_bytes(fig)


def _log_if_wide(ax: Any, bounds: tuple[float, float] | None, decades: float = 2.0) -> None:
    if bounds is not None and bounds[0] > 0 and math.log10(bounds[1] / bounds[0]) > decades:
        ax.set_yscale("log")
