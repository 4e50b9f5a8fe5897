"""Generic analysis rendering by shape, and the figures on edge cases (no data, NaN, long runs)."""

from __future__ import annotations

import math

from gradguard.analysis import explosion_table
from gradguard.records import ActionKind, Reason, StepRecord
from gradguard.report import figures
from gradguard.report.analysis_view import analysis_blocks, format_value, slugify
from gradguard.report.blocks import Note, Plot, Table

PNG = b"\x89PNG\r\n\x1a\n"


def test_shapes_decide_the_form() -> None:
    blocks = analysis_blocks(
        {
            "profile": [1.0, 2.0, "inf"],
            "rows": [{"rho": 1.5, "T": 35}, {"rho": 0.9, "T": None, "note": "never"}],
            "report": {
                "verdict": "explosive",
                "radius": 1.25,
                "norms": [1, 2, 4, 8, 16],
                "growth": [2.0, 2.0, 2.0, 2.0, 2.0],
                "shape": [8, 8],
                "per_layer": [{"layer": 0, "rho": 1.1}],
                "nested": {"a": 1, "deep": {"b": 2, "deeper": {"c": 3}}},
            },
            "flag": True,
            "odd": [1, "a"],
        }
    )
    kinds = [(type(b).__name__, getattr(b, "title", "")) for b in blocks]
    assert kinds == [
        ("Plot", "profile"),
        ("Table", "rows"),
        ("Table", "report"),
        ("Plot", "report: norms, growth"),
        ("Table", "report: per_layer"),
        ("Table", "report / nested"),
        ("Table", "report / nested / deep"),
        ("Table", "flag"),
        ("Note", ""),
    ]
    rows = blocks[1]
    assert isinstance(rows, Table)
    assert rows.columns == ("rho", "T", "note")
    assert rows.rows == (("1.5", "35", "-"), ("0.9", "-", "never"))
    report = blocks[2]
    assert isinstance(report, Table)
    assert report.rows == (("verdict", "explosive"), ("radius", "1.25"), ("shape", "8, 8"))
    deep = blocks[6]
    assert isinstance(deep, Table)
    assert deep.rows == (("b", "2"), ("deeper", "c=3"))  # depth limit: text, not JSON
    note = blocks[8]
    assert isinstance(note, Note)
    assert note.text == "odd: 1, a"
    for block in blocks:
        if isinstance(block, Plot):
            assert block.png.startswith(PNG)


def test_many_series_split_into_figures_with_unique_slugs() -> None:
    series = {f"s{i}": [float(i + k) for k in range(5)] for i in range(8)}
    blocks = analysis_blocks({"x y": series, "x-y": [1, 2]})
    plots = [b for b in blocks if isinstance(b, Plot)]
    assert [p.slug for p in plots] == ["analysis-x-y-1", "analysis-x-y-2", "analysis-x-y"]
    blocks = analysis_blocks({"a!": [1, 2], "a?": [1, 2]})
    assert [b.slug for b in blocks if isinstance(b, Plot)] == ["analysis-a", "analysis-a-2"]


def test_long_row_lists_are_cut() -> None:
    (table,) = analysis_blocks({"t": [{"i": i} for i in range(250)]})
    assert isinstance(table, Table)
    assert (len(table.rows), table.omitted) == (200, 50)


def test_an_explosion_table_reads_as_tables_and_plots_not_json() -> None:
    result = explosion_table([1.1, 1.5], T_max=60).to_dict()
    blocks = analysis_blocks({"explosion_table": result})
    kinds = [(type(b).__name__, getattr(b, "title", "")) for b in blocks]
    assert kinds == [
        ("Table", "explosion_table"),
        ("Table", "explosion_table: rows"),
        ("Plot", "explosion_table: rows: curve"),
        ("Table", "explosion_table: rows: crossings"),
    ]
    quantities, rows, _, crossings = blocks
    assert isinstance(quantities, Table) and isinstance(rows, Table)
    assert ("thresholds", "1e+06, 1e+10") in quantities.rows  # a short list: text
    assert rows.columns[:2] == ("radius", "at_50")  # the curves went to the plot
    assert rows.rows[1][:2] == ("1.5", format_value(1.5**50))
    assert isinstance(crossings, Table)
    assert crossings.columns == ("radius", "threshold", "step", "eventually")
    assert crossings.rows[3] == ("1.5", "1e+06", "35", "35")  # 1.5^35 > 1e6 > 1.5^34
    for block in blocks:
        if isinstance(block, Table):
            assert not any(cell.startswith(("[", "{")) for row in block.rows for cell in row)


def test_slugify_and_format_value() -> None:
    assert slugify("BPTT profile (layer 0)") == "bptt-profile-layer-0"
    assert slugify("<script>") == "script"
    assert slugify("???") == "figure"
    assert format_value(None) == "-"
    assert format_value(False) == "no"
    assert format_value(1 / 3) == "0.3333"
    assert format_value(math.inf) == "inf"
    assert format_value({"k": "v" * 200}).endswith("...")


def _records(norms: list[float], **kw: object) -> list[StepRecord]:
    return [
        StepRecord(i, ActionKind.PROCEED, Reason.HEALTHY, total_norm=n, **kw)  # type: ignore[arg-type]
        for i, n in enumerate(norms)
    ]


def test_figures_survive_degenerate_runs() -> None:
    cases = [
        [],
        _records([math.nan, math.inf]),  # nothing finite to draw on a log axis
        _records([0.0, 0.0]),
        _records([1.0], top=(("$x^$", math.inf),)),  # mathtext-looking name, inf norm
    ]
    for records in cases:
        for draw in (
            figures.norm_figure,
            figures.loss_figure,
            figures.culprit_heatmap,
            figures.clip_lr_figure,
        ):
            assert draw(records).startswith(PNG)


def test_heatmap_bins_long_runs() -> None:
    records = [
        StepRecord(
            i,
            ActionKind.PROCEED,
            Reason.HEALTHY,
            total_norm=1.0,
            top=tuple((f"layer{j}", float(j + 1)) for j in range(20)),
        )
        for i in range(2000)
    ]
    assert figures.culprit_heatmap(records).startswith(PNG)


def test_label_is_safe_for_matplotlib() -> None:
    assert figures.label("a$b") == r"a\$b"
    long = "x" * 100
    assert figures.label(long, 10) == "..." + "x" * 7


def test_the_legend_sits_outside_the_plot_and_hides_no_early_spike() -> None:
    fig, (ax,) = figures._figure(height=4.2)
    steps = list(range(100))
    ax.plot(steps, [1e4 if s == 2 else 1.0 for s in steps], label="gradient norm")  # spike at 2
    for name in ("after clipping", "warning alert (3)", "critical alert (1)", "skip", "rollback"):
        ax.plot(steps, [0.5] * 100, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    figures.place_legend(ax)
    fig.draw_without_rendering()
    legend = ax.get_legend().get_window_extent()
    plot = ax.get_window_extent()
    label = ax.xaxis.label.get_window_extent()
    assert legend.y1 <= plot.y0  # wholly under the axes: no data point is covered
    assert not legend.overlaps(label)  # and under the x label, not on it
    assert fig.get_window_extent().contains(legend.x0, legend.y0)  # still inside the image
