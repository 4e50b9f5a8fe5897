"""Read a JSONL run log back into records: what the report and the CLI work from."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gradguard.errors import LogFormatError
from gradguard.records import SCHEMA_VERSION, StepRecord, from_json_dict
from gradguard.sinks.jsonl import LOG_FORMAT

__all__ = ["LogHeader", "RunLog", "read_jsonl"]


@dataclasses.dataclass(frozen=True)
class LogHeader:
    """The first line of a log.

    Attributes:
        schema_version: layout version of the records (``gradguard.records.SCHEMA_VERSION``).
        gradguard_version: version of gradguard that wrote the log.
        started: ISO 8601 time (UTC) the log was opened.
        metadata: the run metadata given to the sink (plain JSON data).
    """

    schema_version: int
    gradguard_version: str
    started: str
    metadata: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class RunLog:
    """A log read back: its header, its records in file order, and what was skipped.

    Attributes:
        path: the file read.
        header: its first line.
        records: one :class:`StepRecord` per complete line.
        skipped_last_line: 1-based number of a final line that was cut off or garbled (a crash
            while writing) and therefore skipped, else ``None``.
    """

    path: Path
    header: LogHeader
    records: tuple[StepRecord, ...]
    skipped_last_line: int | None = None


def read_jsonl(path: str | os.PathLike[str]) -> RunLog:
    """Read a log written by :class:`~gradguard.sinks.JsonlSink`.

    A last line that is cut off or unreadable (the run crashed while writing it) is skipped
    without a warning and noted in :attr:`RunLog.skipped_last_line`; an unreadable line anywhere
    else means the file was damaged or is not a log, and raises.

    Args:
        path: the ``.jsonl`` file.

    Returns:
        The header and the records.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LogFormatError: the file is not a gradguard log, was written by a newer schema, or has an
            unreadable line before its last one.
    """
    file = Path(path)
    if not file.is_file():
        if file.exists():
            raise LogFormatError(f"{str(file)!r} is a directory, not a gradguard log file.")
        raise FileNotFoundError(f"log file {str(file)!r} does not exist")
    with file.open("rb") as f:
        lines = _numbered_lines(f)
        first = next(lines, None)
        if first is None:
            raise LogFormatError(
                f"{str(file)!r} is empty: not a gradguard log (expected a header line first)."
            )
        header = _parse_header(file, first[1])
        records: list[StepRecord] = []
        skipped: int | None = None
        pending = next(lines, None)
        while pending is not None:
            number, raw = pending
            following = next(lines, None)
            record = _parse_record(raw)
            if record is not None:
                records.append(record)
            elif following is None:
                skipped = number
            else:
                raise LogFormatError(
                    f"{str(file)!r} line {number} is not a step record: {_preview(raw)!r}; "
                    "only the last line may be damaged (a crash while writing). The file was "
                    "edited or corrupted; remove that line to read the rest."
                )
            pending = following
    return RunLog(path=file, header=header, records=tuple(records), skipped_last_line=skipped)


def _numbered_lines(f: Any) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(f, start=1):
        if raw.strip():
            yield number, raw


def _parse_header(file: Path, raw: bytes) -> LogHeader:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != LOG_FORMAT:
        raise LogFormatError(
            f"{str(file)!r} is not a gradguard log: its first line {_preview(raw)!r} is not a "
            "gradguard header. Pass the .jsonl file written by gradguard's JsonlSink."
        )
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise LogFormatError(
            f"{str(file)!r} uses log schema version {version!r}; this gradguard reads versions "
            f"up to {SCHEMA_VERSION}. Upgrade gradguard (pip install -U gradguard)."
        )
    metadata = data.get("metadata")
    return LogHeader(
        schema_version=version,
        gradguard_version=str(data.get("gradguard_version", "unknown")),
        started=str(data.get("started", "")),
        metadata=metadata if isinstance(metadata, dict) else {},
    )


def _parse_record(raw: bytes) -> StepRecord | None:
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or "step" not in data or "action" not in data:
            return None
        return from_json_dict(StepRecord, data)
    except (ValueError, TypeError, KeyError):
        return None


def _preview(raw: bytes, limit: int = 60) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."
