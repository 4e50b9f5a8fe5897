"""Generic rendering of analysis results given as plain dicts (e.g. ``to_dict()`` outputs).

Results arrive by name, from ``build_report(analysis=...)`` or the log header's
``metadata["analysis"]``. Their shape decides their form, so new analyses need no code here:

- a list of numbers (``"inf"``/``"nan"`` strings allowed) -> a line plot against the index;
- a list of dicts (rows, e.g. an explosion table) -> a table;
- a dict -> its scalar entries as a two-column table, its numeric lists plotted (one panel
  each), its row lists as tables, its nested dicts recursively (three levels);
- anything else -> its JSON text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gradguard.report.blocks import Block, Note, Plot, Table
from gradguard.report.figures import series_figure

__all__ = ["analysis_blocks", "format_value", "slugify"]

MAX_ROWS = 200
MAX_PANELS = 6
MAX_DEPTH = 3
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
    text = json.dumps(value, default=str)
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
        return [_table(name, rows)]
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
        if numbers is not None:
            panels.append((key, numbers))
            continue
        rows = _rows(item)
        if rows is not None:
            rest.append(_table(f"{name}: {key}", rows))
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


def _table(name: str, rows: Sequence[Mapping[str, Any]]) -> Table:
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(str(key))
    cells = tuple(tuple(format_value(row.get(c)) for c in columns) for row in rows[:MAX_ROWS])
    return Table(name, tuple(columns), cells, omitted=max(0, len(rows) - MAX_ROWS))


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
