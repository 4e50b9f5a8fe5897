"""A CSV table with one row per step, for spreadsheets and pandas."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import IO

from gradguard.errors import ConfigError, check_bool, check_path
from gradguard.records import StepRecord

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
        overwrite: replace a non-empty file at ``path``; by default such a file (perhaps
            someone's results table) is refused, as :class:`~gradguard.sinks.JsonlSink` does.

    Raises:
        ConfigError: ``path`` names a non-empty file and ``overwrite`` is False.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        check_path("path", path, what="file", fix="Pass the .csv file to write, e.g. 'run.csv'.")
        check_bool("overwrite", overwrite)
        self.path = Path(path)
        if not overwrite and self.path.exists() and self.path.stat().st_size > 0:
            raise ConfigError(
                f"{str(self.path)!r} already exists and is not empty; CsvSink would replace "
                "it. Pass overwrite=True to replace it, or choose another path."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file)
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


def _cell(value: float | int | None) -> str:
    return "" if value is None else repr(value)
