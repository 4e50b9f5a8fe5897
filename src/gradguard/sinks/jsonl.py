"""The JSONL run log: a header line, then one StepRecord per line, append-only, flushed per write.

The log is the single source the report and ``gradguard report`` read back; it is written so that
a crash at any moment leaves every completed line intact. Layout::

    {"format": "gradguard-log", "schema_version": 1, "gradguard_version": ..., "started": ...,
     "metadata": {...}}
    {"step": 0, "action": "proceed", ...}
    {"step": 1, "action": "clip", ...}
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from gradguard.errors import ConfigError, LogFormatError, check_mapping, check_path
from gradguard.records import SCHEMA_VERSION, StepRecord, to_json_dict
from gradguard.sinks.base import IfExists, check_if_exists

__all__ = ["LOG_FORMAT", "JsonlSink", "jsonable", "make_header"]

LOG_FORMAT = "gradguard-log"
"""Value of the header's ``format`` key: how a reader recognises a gradguard log."""


def gradguard_version() -> str:
    """The installed gradguard version, or ``"unknown"`` when it runs from an uninstalled tree."""
    try:
        return importlib.metadata.version("gradguard")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def jsonable(value: Any, where: str = "metadata") -> Any:
    """Return ``value`` as plain JSON data: non-finite floats become ``"nan"``/``"inf"`` strings.

    Args:
        value: nested dicts (string keys), lists/tuples, strings, numbers, booleans and ``None``.
        where: where the value sits, for the error message.

    Returns:
        The same structure made of JSON types only, tuples as lists.

    Raises:
        ConfigError: a key is not a string or a value has no JSON form.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(
                    f"{where} keys must be strings, got {key!r}; convert it with str() first."
                )
            out[key] = jsonable(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict(), where)
    raise ConfigError(
        f"{where} must hold JSON data (dict, list, str, number, bool, None), got {value!r} of "
        f"type {type(value).__name__}; convert it (e.g. float(x), x.tolist(), x.to_dict())."
    )


def make_header(metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the first line of a log: format tag, schema version, gradguard version, start time."""
    return {
        "format": LOG_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "gradguard_version": gradguard_version(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metadata": jsonable(dict(metadata or {})),
    }


class JsonlSink:
    """Append one JSON line per :class:`StepRecord` to a file, after a header line.

    Every ``write`` is flushed to the operating system at once. The log exists to explain a run
    that crashed, and the lines just before a crash are the ones that matter; a flush costs a
    few microseconds (one ``write`` system call, no ``fsync``), which is small against any
    training step (``benchmarks/sinks.py`` measures it), so batching flushes would buy almost
    nothing and lose the most useful lines.

    Args:
        path: where the log goes; parent folders are created.
        metadata: JSON data about the run stored in the header (model, sequence length, config,
            analysis results as plain dicts); ``to_dict()`` results are accepted.
        if_exists: what to do when ``path`` already holds data: ``"error"`` (default) refuses,
            ``"overwrite"`` starts a new log, ``"append"`` continues a gradguard log (after a
            restart): its header is kept, a partial last line left by a crash is cut off.

    Raises:
        ConfigError: ``if_exists`` is not one of the three values, the path exists and
            ``if_exists="error"``, or ``metadata`` is not JSON data.
        LogFormatError: ``if_exists="append"`` on a file that is not a gradguard log.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, Any] | None = None,
        if_exists: IfExists = "error",
    ) -> None:
        check_path("path", path, what="file", fix="Pass the log file, e.g. 'run.jsonl'.")
        if metadata is not None:
            check_mapping("metadata", metadata, fix="Pass a dict, e.g. {'lr': 0.1, 'seed': 0}.")
        check_if_exists(if_exists, "a log")
        self.path = Path(path)
        header = make_header(metadata)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and if_exists == "error":
            raise ConfigError(
                f"log file {str(self.path)!r} already exists; pass if_exists='append' to continue "
                "it, if_exists='overwrite' to replace it, or choose another path."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if exists and if_exists == "append":
            _cut_partial_tail(self.path)
            self._file: IO[str] = self.path.open("a", encoding="utf-8")
        else:
            self._file = self.path.open("w", encoding="utf-8")
            self._file.write(json.dumps(header, allow_nan=False) + "\n")
            self._file.flush()

    def write(self, record: StepRecord) -> None:
        """Append ``record`` as one JSON line and flush it."""
        line = json.dumps(to_json_dict(record), separators=(",", ":"), allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file; further writes raise ``ValueError``."""
        if not self._file.closed:
            self._file.flush()
            self._file.close()

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_partial_tail(path: Path) -> None:
    """Check ``path`` is a gradguard log and drop a last line a crash left without its newline."""
    with path.open("rb+") as f:
        first = f.readline()
        if not _is_header(first):
            raise LogFormatError(
                f"{str(path)!r} is not a gradguard log (its first line is not a gradguard "
                "header); cannot append to it. Choose another path or if_exists='overwrite'."
            )
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return
        # Scan back for the last newline: everything after it is a half-written line.
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                f.truncate(start + cut + 1)
                return
            end = start
        raise LogFormatError(f"{str(path)!r} holds no complete line; cannot append to it.")


def _is_header(line: bytes) -> bool:
    try:
        data = json.loads(line)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("format") == LOG_FORMAT
