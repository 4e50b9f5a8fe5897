"""A CSV table with one row per step, for spreadsheets and pandas."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO

from gradguard.errors import ConfigError, LogFormatError, check_path
from gradguard.records import StepRecord
from gradguard.sinks.base import IfExists, check_if_exists

__all__ = ["CSV_COLUMNS", "CsvSink"]

CSV_COLUMNS = (
    "step",
    "action",
    "reason",
    "applied",
    "loss",
    "total_norm",
    "clip_coef",
    "lr",
    "alerts",
    "top_tensor",
    "top_norm",
    "rolled_back_to",
    "steps_lost",
    "message",
)
"""Columns of the table, in order. ``alerts`` lists ``severity:kind`` pairs joined by ``;``."""


class CsvSink:
    """Write one CSV row per :class:`StepRecord` (header row first), flushed per row.

    Missing values are empty cells; non-finite floats are written as ``nan``/``inf``, which
    pandas and spreadsheets read back as numbers. Rows are flushed for the same reason as in
    :class:`~gradguard.sinks.JsonlSink`: the rows before a crash matter most.

    Args:
        path: the ``.csv`` file; parent folders are created.
        if_exists: what to do when ``path`` already holds data: ``"error"`` (default) refuses,
            so an earlier run's table is never lost by accident; ``"overwrite"`` replaces it;
            ``"append"`` adds rows to a table with the same columns (after a restart).

    Raises:
        ConfigError: ``if_exists`` is not one of the three values, or the file exists and
            ``if_exists="error"``.
        LogFormatError: ``if_exists="append"`` on a file whose first row is not this header.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        if_exists: IfExists = "error",
    ) -> None:
        check_if_exists(if_exists, "a table")
        check_path("path", path, what="file", fix="Pass the .csv file to write, e.g. 'run.csv'.")
        self.path = Path(path)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and if_exists == "error":
            raise ConfigError(
                f"CSV file {str(self.path)!r} already exists; pass if_exists='append' to add "
                "rows to it, if_exists='overwrite' to replace it, or choose another path."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        append = exists and if_exists == "append"
        if append:
            _check_header(self.path)
        self._file: IO[str] = self.path.open("a" if append else "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
        if not append:
            self._writer.writerow(CSV_COLUMNS)
        self._file.flush()

    def write(self, record: StepRecord) -> None:
        """Append the row of ``record`` and flush it."""
        top_name, top_norm = record.top[0] if record.top else ("", None)
        self._writer.writerow(
            (
                record.step,
                record.action.value,
                record.reason.value,
                int(record.applied),
                _cell(record.loss),
                _cell(record.total_norm),
                _cell(record.clip_coef),
                _cell(record.lr),
                ";".join(f"{a.severity.value}:{a.kind.value}" for a in record.alerts),
                top_name,
                _cell(top_norm),
                _cell(record.rolled_back_to),
                record.steps_lost,
                record.message,
            )
        )
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        if not self._file.closed:
            self._file.close()


def _check_header(path: Path) -> None:
    """Refuse to append to a file that is not a table with :data:`CSV_COLUMNS`, or that ends
    inside a row (a crash while writing it)."""
    with path.open(encoding="utf-8", newline="", errors="replace") as f:
        first = next(csv.reader(f), [])
    if tuple(first) != CSV_COLUMNS:
        raise LogFormatError(
            f"{str(path)!r} is not a gradguard CSV table (its first row is {first[:4]!r}...); "
            "cannot append to it. Choose another path or if_exists='overwrite'."
        )
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            raise LogFormatError(
                f"{str(path)!r} ends inside a row (a crash while writing it?); cannot append "
                "to it. Remove the partial last row, or choose another path."
            )


def _cell(value: float | int | None) -> str:
    return "" if value is None else repr(value)
