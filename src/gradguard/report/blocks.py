"""Plain content blocks of the report (tables, plots, notes); the page renders and escapes them."""

from __future__ import annotations

import dataclasses

__all__ = ["Block", "Note", "Plot", "Table"]


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of plain-text cells (escaped when rendered).

    Attributes:
        title: caption above the table.
        columns: header cells.
        rows: body cells, one tuple per row.
        omitted: rows left out for length, mentioned under the table.
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    omitted: int = 0


@dataclasses.dataclass(frozen=True)
class Plot:
    """A PNG figure: written as ``<slug>.png`` beside the page and embedded in it.

    Attributes:
        slug: file stem made of ``[a-z0-9-]`` only.
        title: caption (plain text).
        png: the image bytes.
    """

    slug: str
    title: str
    png: bytes


@dataclasses.dataclass(frozen=True)
class Note:
    """A paragraph of plain text, or preformatted text when ``pre`` is set."""

    text: str
    pre: bool = False


Block = Table | Plot | Note
