"""Read a JSONL run log back into records: what the report and the CLI work from.

Two ways in: :func:`read_jsonl` returns every record at once (fine up to a few hundred thousand
steps), :class:`LogStream` yields them one by one so a million-step log is read in one pass with
flat memory (the report does this). Both check every field's type while parsing: a line that is
not a valid step record (hand-edited, written by another tool, half-written by a crash) is
skipped and counted, with its line number and what was wrong, instead of stopping the read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from gradguard.errors import LogFormatError
from gradguard.records import (
    SCHEMA_VERSION,
    ActionKind,
    Alert,
    AlertKind,
    Reason,
    Severity,
    StepRecord,
)
from gradguard.sinks.jsonl import LOG_FORMAT

__all__ = ["LogHeader", "LogStream", "RunLog", "SkippedLine", "parse_record", "read_jsonl"]

MAX_SKIPPED_KEPT = 20
"""How many skipped lines keep their details; further ones are only counted."""


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
class SkippedLine:
    """A line of the log that is not a valid step record: where it is and what is wrong."""

    number: int
    why: str

    def __str__(self) -> str:
        return f"line {self.number}: {self.why}"


def describe_skipped(count: int, details: tuple[SkippedLine, ...], shown: int = 3) -> str:
    """One sentence for people: ``"3 lines skipped: line 17: ...; line 18: ...; ..."``."""
    noun = "line" if count == 1 else "lines"
    text = "; ".join(str(s) for s in details[:shown])
    more = f"; and {count - shown} more" if count > shown else ""
    return f"{count} {noun} skipped: {text}{more}"


@dataclasses.dataclass(frozen=True)
class RunLog:
    """A log read back: its header, its records in file order, and what was skipped.

    Attributes:
        path: the file read.
        header: its first line.
        records: one :class:`StepRecord` per valid line.
        skipped_last_line: 1-based number of a final line that was cut off (a crash while
            writing) and therefore skipped, else ``None``; not counted in ``skipped_count``.
        skipped: the first :data:`MAX_SKIPPED_KEPT` other lines that were not valid records.
        skipped_count: how many such lines there were in all.
    """

    path: Path
    header: LogHeader
    records: tuple[StepRecord, ...]
    skipped_last_line: int | None = None
    skipped: tuple[SkippedLine, ...] = ()
    skipped_count: int = 0

    def skipped_summary(self) -> str | None:
        """``"3 lines skipped: line 17: ..."``, or ``None`` when no line was skipped."""
        if not self.skipped_count:
            return None
        return describe_skipped(self.skipped_count, self.skipped)


class LogStream:
    """A log opened for one pass: the header at once, then the records as they are read.

    Use it as a context manager and iterate it once; afterwards :attr:`skipped`,
    :attr:`skipped_count` and :attr:`skipped_last_line` say which lines were not records.
    Memory stays flat however long the log is.

    Args:
        path: the ``.jsonl`` file.
        strict: raise :class:`LogFormatError` at the first invalid line (other than a cut-off
            last line) instead of skipping it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LogFormatError: the file is not a gradguard log or was written by a newer schema.
    """

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = False) -> None:
        self.path = Path(path)
        self.strict = strict
        if not self.path.is_file():
            if self.path.exists():
                raise LogFormatError(
                    f"{str(self.path)!r} is a directory, not a gradguard log file."
                )
            raise FileNotFoundError(f"log file {str(self.path)!r} does not exist")
        self._file: IO[bytes] = self.path.open("rb")
        try:
            self._lines = _numbered_lines(self._file)
            first = next(self._lines, None)
            if first is None:
                raise LogFormatError(
                    f"{str(self.path)!r} is empty: not a gradguard log (expected a header line "
                    "first)."
                )
            self.header = _parse_header(self.path, first[1])
        except BaseException:
            self._file.close()
            raise
        self.skipped: list[SkippedLine] = []
        self.skipped_count = 0
        self.skipped_last_line: int | None = None
        self._started = False

    def __iter__(self) -> Iterator[StepRecord]:
        if self._started:
            raise RuntimeError(
                f"the log stream of {str(self.path)!r} was already iterated; open a new "
                "LogStream (or use read_jsonl) to read it again."
            )
        self._started = True
        return self._records()

    def _records(self) -> Iterator[StepRecord]:
        parser = _Parser()
        lines = self._lines
        decode = json.JSONDecoder().raw_decode  # skips json.loads' per-call wrappers
        try:
            pending = next(lines, None)
            while pending is not None:
                number, raw = pending
                following = next(lines, None)
                try:
                    text = raw.decode("utf-8").strip()
                    data, end = decode(text)
                    if end != len(text):
                        raise ValueError("extra data after the JSON value")
                except (ValueError, RecursionError):
                    if following is None:  # a crash while writing the last line
                        self.skipped_last_line = number
                        break
                    self._skip(number, f"not JSON: {_preview(raw)!r}")
                else:
                    try:
                        record = parser.record(data)
                    except _BadRecordError as exc:
                        self._skip(number, str(exc))
                    else:
                        yield record
                pending = following
        finally:
            self.close()

    def _skip(self, number: int, why: str) -> None:
        if self.strict:
            self.close()
            raise LogFormatError(
                f"{str(self.path)!r} line {number} is not a step record: {why}. Remove or fix "
                "that line, or read with strict=False to skip such lines."
            )
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_KEPT:
            self.skipped.append(SkippedLine(number, why))

    def skipped_summary(self) -> str | None:
        """``"3 lines skipped: line 17: ..."`` once iterated, or ``None`` when none was."""
        if not self.skipped_count:
            return None
        return describe_skipped(self.skipped_count, tuple(self.skipped))

    def run_log(self, records: tuple[StepRecord, ...]) -> RunLog:
        """What this stream read, as a :class:`RunLog` holding ``records`` (all, or those kept).

        Call it once the stream is iterated: only then are the skipped lines all counted.
        """
        return RunLog(
            path=self.path,
            header=self.header,
            records=records,
            skipped_last_line=self.skipped_last_line,
            skipped=tuple(self.skipped),
            skipped_count=self.skipped_count,
        )

    def close(self) -> None:
        """Close the file (iteration ends); closing twice is harmless."""
        self._file.close()

    def __enter__(self) -> LogStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike[str], *, strict: bool = False) -> RunLog:
    """Read a whole log written by :class:`~gradguard.sinks.JsonlSink` into memory.

    A last line that is cut off (the run crashed while writing it) is skipped without a warning
    and noted in :attr:`RunLog.skipped_last_line`. Any other line that is not a valid step record
    is skipped and listed in :attr:`RunLog.skipped` (``strict=True`` raises instead). For logs
    of millions of steps iterate a :class:`LogStream` instead of holding every record.

    Args:
        path: the ``.jsonl`` file.
        strict: raise on the first invalid line instead of skipping it.

    Returns:
        The header, the records and what was skipped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LogFormatError: the file is not a gradguard log, was written by a newer schema, or (with
            ``strict=True``) holds an invalid line before its last one.
    """
    with LogStream(path, strict=strict) as stream:
        return stream.run_log(tuple(stream))


def parse_record(data: Any) -> StepRecord:
    """Build a :class:`StepRecord` from one decoded log line, checking every field's type.

    Unknown keys are ignored (a newer gradguard may add some); missing optional keys take their
    defaults. ``nan``/``inf``/``-inf`` strings (how the log stores non-finite floats) and JSON's
    ``NaN``/``Infinity`` tokens are accepted where a float is expected.

    Raises:
        ValueError: a field is missing or of the wrong type; the message names it and its value.
    """
    return _Parser().record(data)


# ------------------------------------------------------------------------------------------------
# Parsing: plain type checks on the decoded dict, no typing introspection (a few microseconds a
# record, so a million-step log reads in seconds).


class _BadRecordError(ValueError):
    """A decoded line is not a valid step record; the message says which field and why."""


_ACTIONS = {kind.value: kind for kind in ActionKind}
_REASONS = {reason.value: reason for reason in Reason}
_SEVERITIES = {severity.value: severity for severity in Severity}
_KINDS = {kind.value: kind for kind in AlertKind}
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MAX_INTERNED = 4096


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any, what: str) -> float:
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    if kind is str:
        special = _NONFINITE.get(value)
        if special is not None:
            return special
    raise _BadRecordError(f"{what} must be a number, got {_show(value)}")


def _optional_number(value: Any, what: str) -> float | None:
    return None if value is None else _number(value, what)


def _whole(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _BadRecordError(f"{what} must be a whole number >= 0, got {_show(value)}")
    return value


def _optional_whole(value: Any, what: str) -> int | None:
    return None if value is None else _whole(value, what)


def _text(value: Any, what: str) -> str:
    if type(value) is not str:
        raise _BadRecordError(f"{what} must be a string, got {_show(value)}")
    return value


def _choice(value: Any, table: Mapping[str, Any], what: str) -> Any:
    found = table.get(value) if type(value) is str else None
    if found is None:
        names = sorted(table)
        known = (
            ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:4])}, ... ({len(names)})"
        )
        raise _BadRecordError(f"{what} must be one of {known}, got {_show(value)}")
    return found


class _Parser:
    """Turns decoded lines into records; shares repeated tensor names between records."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def _name(self, value: Any, what: str) -> str:
        name = _text(value, what)
        shared = self._names.get(name)
        if shared is not None:
            return shared
        if len(self._names) < _MAX_INTERNED:
            self._names[name] = name
        return name

    def record(self, data: Any) -> StepRecord:
        if type(data) is not dict:
            raise _BadRecordError(f"a step record is a JSON object, got {_show(data)}")
        get = data.get
        if "step" not in data or "action" not in data or "reason" not in data:
            missing = [k for k in ("step", "action", "reason") if k not in data]
            raise _BadRecordError(f"missing {', '.join(missing)} in {_show(data)}")
        step = _whole(data["step"], "step")
        applied = get("applied", True)
        if type(applied) is not bool:
            raise _BadRecordError(f"applied must be true or false, got {_show(applied)}")
        alerts = get("alerts", ())
        top = get("top", ())
        loss, norm, coef, lr = get("loss"), get("total_norm"), get("clip_coef", 1.0), get("lr")
        return StepRecord(
            step=step,
            action=_choice(data["action"], _ACTIONS, "action"),
            reason=_choice(data["reason"], _REASONS, "reason"),
            message=_text(get("message", ""), "message"),
            applied=applied,
            loss=loss if type(loss) is float else _optional_number(loss, "loss"),
            total_norm=norm if type(norm) is float else _optional_number(norm, "total_norm"),
            clip_coef=coef if type(coef) is float else _number(coef, "clip_coef"),
            lr=lr if type(lr) is float else _optional_number(lr, "lr"),
            alerts=self._alerts(alerts) if alerts else (),
            top=self._top(top) if top else (),
            rolled_back_to=_optional_whole(get("rolled_back_to"), "rolled_back_to"),
            steps_lost=_whole(get("steps_lost", 0), "steps_lost"),
        )

    def _top(self, top: Any) -> tuple[tuple[str, float], ...]:
        if type(top) is not list:
            raise _BadRecordError(f"top must be a list of [name, norm] pairs, got {_show(top)}")
        names = self._names
        out = []
        for pair in top:
            if type(pair) is not list or len(pair) != 2:
                raise _BadRecordError(f"top must hold [name, norm] pairs, got {_show(pair)}")
            name, norm = pair
            shared = names.get(name) if type(name) is str else None
            if shared is not None and type(norm) is float:  # the usual case, checked inline
                out.append((shared, norm))
            else:
                out.append((self._name(name, "a top tensor name"), _number(norm, "a top norm")))
        return tuple(out)

    def _alerts(self, alerts: Any) -> tuple[Alert, ...]:
        if type(alerts) is not list:
            raise _BadRecordError(f"alerts must be a list, got {_show(alerts)}")
        return tuple(self._alert(a) for a in alerts)

    def _alert(self, data: Any) -> Alert:
        if type(data) is not dict:
            raise _BadRecordError(f"an alert must be a JSON object, got {_show(data)}")
        get = data.get
        culprits = get("culprits", ())
        if type(culprits) not in (list, tuple):
            raise _BadRecordError(f"alert culprits must be a list of names, got {_show(culprits)}")
        return Alert(
            step=_whole(get("step"), "alert step"),
            severity=_choice(get("severity"), _SEVERITIES, "alert severity"),
            kind=_choice(get("kind"), _KINDS, "alert kind"),
            message=_text(get("message", ""), "alert message"),
            detector=_text(get("detector", ""), "alert detector"),
            culprits=tuple(self._name(c, "an alert culprit") for c in culprits),
            value=_optional_number(get("value"), "alert value"),
            threshold=_optional_number(get("threshold"), "alert threshold"),
            steps_to_overflow=_optional_number(get("steps_to_overflow"), "steps_to_overflow"),
            since=_optional_whole(get("since"), "alert since"),
            repeat=get("repeat", False) is True,
        )


def _numbered_lines(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(f, start=1):
        if raw.strip():
            yield number, raw


def _parse_header(file: Path, raw: bytes) -> LogHeader:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict) or data.get("format") != LOG_FORMAT:
        raise LogFormatError(
            f"{str(file)!r} is not a gradguard log: its first line {_preview(raw)!r} is not a "
            "gradguard header. Pass the .jsonl file written by gradguard's JsonlSink."
        )
    version = data.get("schema_version")
    if type(version) is not int or version > SCHEMA_VERSION:
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


def _preview(raw: bytes, limit: int = 60) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."
