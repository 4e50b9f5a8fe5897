"""Generic rendering of analysis results given as plain dicts (e.g. ``to_dict()`` outputs).

Results arrive by name, from ``build_report(analysis=...)`` or the log header's
``metadata["analysis"]``. Their shape decides their form, so new analyses need no code here:

- a list of numbers (``"inf"``/``"nan"`` strings allowed) -> a line plot against the index;
- a list of dicts (rows, e.g. an explosion table) -> a table of its scalar columns; a column of
  numeric series (a growth curve per row) -> one plot with a line per row, labelled by the
  row's first column; a column of row lists (the crossings of each row) -> a table of its own,
  each line led by its parent row's first column;
- a dict -> its scalar entries as a two-column table (``kind``, the result's type, left out),
  its numeric lists of 5 or more points plotted (one panel each; shorter ones, a shape or three
  thresholds, are text), its row lists as tables, its nested dicts recursively (three levels);
- anything else -> a short text: lists joined by commas, dicts as ``key=value`` pairs.

No cell shows raw JSON: the page reads as tables and plots.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gradguard.report.blocks import Block, Note, Plot, Table
from gradguard.report.figures import label, lines_figure, series_figure

__all__ = ["analysis_blocks", "format_value", "slugify"]

MAX_ROWS = 200
MAX_PANELS = 6
MAX_DEPTH = 3
MIN_POINTS = 5
"""Shorter numeric lists inside a result (a shape, three thresholds) are shown as text."""
MAX_LINES = 12
"""Rows drawn as lines in one plot of a series column; more rows are left out of the plot."""
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def slugify(text: str) -> str:
    """A file-name-safe stem: lower-case ``[a-z0-9-]``, never empty."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:60] or "figure"


def format_value(value: Any) -> str:
    """A short plain-text form of a JSON value for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


def analysis_blocks(analysis: Mapping[str, Any]) -> list[Block]:
    """Turn named analysis results into tables, plots and notes (see the module docstring)."""
    blocks: list[Block] = []
    for name, value in analysis.items():
        blocks.extend(_blocks(str(name), value, 0))
    _unique_slugs(blocks)
    return blocks


def _blocks(name: str, value: Any, depth: int) -> list[Block]:
    series = _numbers(value)
    if series is not None:
        return [Plot(f"analysis-{slugify(name)}", name, series_figure(name, [(name, series)]))]
    rows = _rows(value)
    if rows is not None:
        return _row_blocks(name, rows)
    if isinstance(value, Mapping):
        return _dict_blocks(name, value, depth)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return [Table(name, ("quantity", "value"), ((name, format_value(value)),))]
    return [Note(f"{name}: {format_value(value)}")]


def _dict_blocks(name: str, value: Mapping[str, Any], depth: int) -> list[Block]:
    scalars: list[tuple[str, str]] = []
    panels: list[tuple[str, list[float]]] = []
    rest: list[Block] = []
    for key, item in value.items():
        key = str(key)
        numbers = _numbers(item)
        if numbers is not None and len(numbers) >= MIN_POINTS:
            panels.append((key, numbers))
            continue
        rows = _rows(item)
        if rows is not None:
            rest.extend(_row_blocks(f"{name}: {key}", rows))
        elif key == "kind" and depth == 0 and isinstance(item, str):
            continue  # the result's type: the section title already names it
        elif isinstance(item, Mapping) and depth + 1 < MAX_DEPTH:
            rest.extend(_dict_blocks(f"{name} / {key}", item, depth + 1))
        else:
            scalars.append((key, format_value(item)))
    blocks: list[Block] = []
    if scalars:
        blocks.append(Table(name, ("quantity", "value"), tuple(scalars)))
    for start in range(0, len(panels), MAX_PANELS):
        group = panels[start : start + MAX_PANELS]
        part = start // MAX_PANELS + 1
        suffix = f" ({part})" if len(panels) > MAX_PANELS else ""
        slug = f"analysis-{slugify(name)}" + (f"-{part}" if suffix else "")
        title = f"{name}{suffix}: " + ", ".join(k for k, _ in group)
        blocks.append(Plot(slug, title, series_figure(name, group)))
    return blocks + rest


def _row_blocks(name: str, rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    """A table of the rows' scalar columns, a plot per series column, a table per nested rows."""
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(str(key))
    series = [c for c in columns if all(_series(r.get(c)) for r in rows if c in r)]
    nested = [c for c in columns if c not in series and any(_rows(r.get(c)) for r in rows)]
    plain = [c for c in columns if c not in series and c not in nested]
    lead = plain[0] if plain else None
    blocks: list[Block] = []
    if plain:
        cells = tuple(tuple(format_value(row.get(c)) for c in plain) for row in rows[:MAX_ROWS])
        blocks.append(Table(name, tuple(plain), cells, omitted=max(0, len(rows) - MAX_ROWS)))
    for column in series:
        lines = [
            (_row_label(row, lead, i), _numbers(row.get(column)) or [])
            for i, row in enumerate(rows[:MAX_LINES])
        ]
        png = lines_figure(f"{name}: {column}", lines)
        blocks.append(Plot(f"analysis-{slugify(name)}-{slugify(column)}", f"{name}: {column}", png))
    for column in nested:
        children: list[Mapping[str, Any]] = []
        for i, row in enumerate(rows):
            for child in _rows(row.get(column)) or []:
                parent = {lead: row.get(lead)} if lead is not None else {"row": i}
                children.append({**parent, **child})
        blocks.extend(_row_blocks(f"{name}: {column}", children))
    return blocks


def _row_label(row: Mapping[str, Any], lead: str | None, index: int) -> str:
    if lead is None:
        return f"row {index}"
    return label(f"{lead}={format_value(row.get(lead))}", 32)


def _numbers(value: Any) -> list[float] | None:
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        return None
    out = []
    for item in value:
        if isinstance(item, bool):
            return None
        if isinstance(item, (int, float)):
            out.append(float(item))
        elif isinstance(item, str) and item in _NONFINITE:
            out.append(_NONFINITE[item])
        else:
            return None
    return out


def _series(value: Any) -> bool:
    numbers = _numbers(value)
    return numbers is not None and len(numbers) >= MIN_POINTS


def _rows(value: Any) -> list[Mapping[str, Any]] | None:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
        return list(value)
    return None


def _unique_slugs(blocks: list[Block]) -> None:
    used: set[str] = set()
    for i, block in enumerate(blocks):
        if isinstance(block, Plot):
            slug, n = block.slug, 2
            while slug in used:
                slug, n = f"{block.slug}-{n}", n + 1
            used.add(slug)
            if slug != block.slug:
                blocks[i] = Plot(slug, block.title, block.png)
