"""The report's plots, drawn from records with matplotlib (Agg, no pyplot, imported lazily).

Each function returns PNG bytes. Figures are built with ``matplotlib.figure.Figure`` directly, so
drawing a report never switches the backend or touches pyplot state of the calling process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from gradguard.records import ActionKind, Severity, StepRecord
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


def _mark_nonfinite(ax: Any, steps: Sequence[int], values: Sequence[float | None]) -> None:
    bad = [s for s, v in zip(steps, values, strict=True) if v is not None and not math.isfinite(v)]
    if bad:
        ax.scatter(
            bad,
            [0.97] * len(bad),
            transform=ax.get_xaxis_transform(),
            marker="x",
            color="#d62728",
            s=40,
            zorder=5,
            label=f"NaN/Inf ({len(bad)})",
        )


def _mark_interventions(ax: Any, records: Sequence[StepRecord]) -> None:
    seen: set[ActionKind] = set()
    for record in records:
        style = ACTION_STYLE.get(record.action)
        if style is None:
            continue
        color, linestyle = style
        name = record.action.value
        ax.axvline(
            record.step,
            color=color,
            linestyle=linestyle,
            linewidth=1.0,
            alpha=0.7,
            label=None if record.action in seen else name,
        )
        seen.add(record.action)


def norm_figure(records: Sequence[StepRecord]) -> bytes:
    """Gradient norm per step on a log scale, with alerts and interventions marked.

    Non-finite norms are drawn as red crosses at the top edge (a log axis cannot show them);
    the norm after clipping is drawn where it differs; alerts are triangles coloured by
    severity at the norm of their step (just under the top edge when that norm is NaN/Inf);
    skips, back-offs, rollbacks, resets and aborts are vertical lines.
    """
    fig, (ax,) = _figure(height=4.2)
    steps = [r.step for r in records]
    norms = [r.total_norm for r in records]
    finite = _finite(norms)
    ax.plot(steps, finite, color="#1f77b4", linewidth=1.2, label="gradient norm")
    clipped = [
        n * r.clip_coef if r.clip_coef < 1.0 else math.nan
        for n, r in zip(finite, records, strict=True)
    ]
    if any(math.isfinite(c) for c in clipped):
        ax.plot(steps, clipped, color="#2ca02c", linewidth=1.0, label="after clipping")
    _mark_nonfinite(ax, steps, norms)
    by_step = dict(zip(steps, finite, strict=True))
    for severity in (Severity.INFO, Severity.WARNING, Severity.CRITICAL):
        xs = [a.step for r in records for a in r.alerts if shown_severity(r, a) is severity]
        if not xs:
            continue
        ys = [by_step.get(x, math.nan) for x in xs]
        drawable = [y > 0 for y in ys]  # False for NaN too: those go to the top edge
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
    _mark_interventions(ax, records)
    if any(math.isfinite(v) and v > 0 for v in finite):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.set_title("Gradient norm")
    ax.grid(True, which="major", alpha=0.3)
    place_legend(ax)
    return png_bytes(fig)


def loss_figure(records: Sequence[StepRecord]) -> bytes:
    """Loss per step (log scale when positive and spanning more than two decades)."""
    fig, (ax,) = _figure()
    steps = [r.step for r in records]
    losses = [r.loss for r in records]
    finite = _finite(losses)
    ax.plot(steps, finite, color="#ff7f0e", linewidth=1.2, label="loss")
    _mark_nonfinite(ax, steps, losses)
    _mark_interventions(ax, records)
    _log_if_wide(ax, finite)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    place_legend(ax)
    return png_bytes(fig)


def culprit_heatmap(records: Sequence[StepRecord]) -> bytes:
    """Per-tensor gradient norms (the logged top-k) over steps, log10 colour scale.

    Rows are the tensors that reached the top-k, largest peak first (at most 16); columns are
    steps, binned (maximum per bin) when the run has more than 400 of them. A blank cell means
    the tensor was not among the top-k that step; a red cell means its norm was NaN/Inf.
    """
    import numpy as np

    peaks: dict[str, float] = {}
    for record in records:
        for name, norm in record.top:
            value = norm if math.isfinite(norm) else math.inf
            peaks[name] = max(peaks.get(name, -math.inf), value)
    names = sorted(peaks, key=lambda n: -peaks[n])[:MAX_HEATMAP_ROWS]
    fig, (ax,) = _figure(height=max(2.6, 0.4 * len(names) + 1.4))
    if not names or not records:
        ax.text(0.5, 0.5, "no per-tensor norms in the log", ha="center", transform=ax.transAxes)
        ax.set_axis_off()
        return png_bytes(fig)
    row = {name: i for i, name in enumerate(names)}
    first, last = records[0].step, max(r.step for r in records)
    span = max(last - first + 1, 1)
    columns = min(span, MAX_HEATMAP_COLUMNS)
    grid = np.full((len(names), columns), np.nan)
    bad = np.zeros((len(names), columns), dtype=bool)
    for record in records:
        col = min(int((record.step - first) * columns / span), columns - 1)
        for name, norm in record.top:
            i = row.get(name)
            if i is None:
                continue
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


def clip_lr_figure(records: Sequence[StepRecord]) -> bytes:
    """Clip coefficient (top) and learning rate (bottom) per step."""
    fig, (top, bottom) = _figure(rows=2, height=2.4)
    steps = [r.step for r in records]
    coefs = [r.clip_coef for r in records]
    top.step(steps, coefs, where="post", color="#2ca02c")
    if min(coefs, default=1.0) < 0.05:
        top.set_yscale("log")
    else:
        top.set_ylim(-0.05, 1.05)
    top.set_ylabel("clip coefficient")
    top.set_title("Clip coefficient (1 = not clipped) and learning rate")
    top.grid(True, alpha=0.3)
    lrs = [r.lr for r in records]
    if any(v is not None for v in lrs):
        finite = _finite(lrs)
        bottom.step(steps, finite, where="post", color="#9467bd")
        _log_if_wide(bottom, finite, decades=1.0)
    else:
        bottom.text(
            0.5, 0.5, "no learning rate in the log", ha="center", transform=bottom.transAxes
        )
    _mark_interventions(bottom, records)
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
        _log_if_wide(ax, finite)
        ax.set_ylabel(label(name, 32))
        ax.grid(True, alpha=0.3)
    axes[0].set_title(label(title, 80))
    axes[-1].set_xlabel("index")
    return png_bytes(fig)


def lines_figure(title: str, lines: Sequence[tuple[str, Sequence[float]]]) -> bytes:
    """One panel, one labelled line per series, x = index: e.g. a growth curve per radius."""
    fig, (ax,) = _figure(height=3.2)
    everything: list[float] = []
    for name, values in lines:
        finite = _finite(values)
        everything += finite
        ax.plot(range(len(finite)), finite, label=label(name, 32))
    _log_if_wide(ax, everything)
    ax.set_title(label(title, 80))
    ax.set_xlabel("index")
    ax.grid(True, alpha=0.3)
    place_legend(ax)
    return png_bytes(fig)


def _log_if_wide(ax: Any, values: Sequence[float], decades: float = 2.0) -> None:
    positive = [v for v in values if math.isfinite(v)]
    if positive and min(positive) > 0 and math.log10(max(positive) / min(positive)) > decades:
        ax.set_yscale("log")
