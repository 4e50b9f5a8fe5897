"""JsonlSink and read_jsonl: header, round trip, flushing, crash tolerance, clear errors."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradguard.errors import ConfigError, LogFormatError
from gradguard.records import (
    SCHEMA_VERSION,
    ActionKind,
    Alert,
    AlertKind,
    Reason,
    Severity,
    StepRecord,
)
from gradguard.sinks import LOG_FORMAT, JsonlSink, Sink, read_jsonl


def _record(step: int, **kw: object) -> StepRecord:
    base: dict[str, object] = {
        "step": step,
        "action": ActionKind.PROCEED,
        "reason": Reason.HEALTHY,
        "loss": 1.0 / (step + 1),
        "total_norm": 0.5 + step,
        "lr": 0.01,
    }
    base.update(kw)
    return StepRecord(**base)  # type: ignore[arg-type]


RICH = StepRecord(
    step=7,
    action=ActionKind.ROLLBACK,
    reason=Reason.DIVERGENCE,
    message="restored step 3",
    applied=False,
    loss=math.inf,
    total_norm=math.nan,
    clip_coef=0.25,
    lr=1e-3,
    alerts=(
        Alert(7, Severity.CRITICAL, AlertKind.NONFINITE_GRAD, "NaN in w", "nf", ("w",), math.nan),
    ),
    top=(("w", math.nan), ("b", 2.5)),
    rolled_back_to=3,
    steps_lost=4,
)


def _same(a: StepRecord, b: StepRecord) -> bool:
    """Equality that treats NaN as equal to NaN (records hold floats)."""
    return json.dumps(_plain(a), sort_keys=True) == json.dumps(_plain(b), sort_keys=True)


def _plain(record: StepRecord) -> object:
    from gradguard.records import to_json_dict

    return to_json_dict(record)


def test_header_then_one_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with JsonlSink(path, metadata={"model": {"cell": "LSTM"}, "seq_len": 100}) as sink:
        assert isinstance(sink, Sink)
        sink.write(_record(0))
        sink.write(RICH)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    header = json.loads(lines[0])
    assert header["format"] == LOG_FORMAT
    assert header["schema_version"] == SCHEMA_VERSION
    assert header["gradguard_version"] == "0.1.0"
    started = datetime.datetime.fromisoformat(header["started"])
    assert started.tzinfo is not None
    assert header["metadata"] == {"model": {"cell": "LSTM"}, "seq_len": 100}
    strict = json.loads(lines[2], parse_constant=_no_constant)  # strict JSON: no NaN token
    assert strict["total_norm"] == "nan"
    assert strict["loss"] == "inf"


def _no_constant(name: str) -> object:
    raise AssertionError(f"non-standard JSON constant {name!r} in the log")


def test_round_trip_through_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    records = [_record(i) for i in range(5)] + [RICH]
    with JsonlSink(path, metadata={"note": "x"}) as sink:
        for record in records:
            sink.write(record)
    log = read_jsonl(path)
    assert log.header.schema_version == SCHEMA_VERSION
    assert log.header.metadata == {"note": "x"}
    assert log.skipped_last_line is None
    assert len(log.records) == 6
    assert log.records[:5] == tuple(records[:5])
    assert _same(log.records[5], RICH)
    assert math.isnan(log.records[5].total_norm or 0.0)
    assert log.records[5].alerts[0].kind is AlertKind.NONFINITE_GRAD


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)


@given(
    loss=st.none() | finite_or_not,
    norm=st.none() | finite_or_not,
    coef=st.floats(0.0, 1.0),
    action=st.sampled_from(list(ActionKind)),
    name=st.text(max_size=20),
)
def test_any_record_survives_the_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    loss: float | None,
    norm: float | None,
    coef: float,
    action: ActionKind,
    name: str,
) -> None:
    path = tmp_path_factory.mktemp("rt") / "run.jsonl"
    record = StepRecord(
        step=3,
        action=action,
        reason=Reason.SPIKE,
        message=name,
        loss=loss,
        total_norm=norm,
        clip_coef=coef,
        top=((name, 1.0),),
    )
    with JsonlSink(path) as sink:
        sink.write(record)
    (back,) = read_jsonl(path).records
    assert _same(back, record)


def test_every_write_is_flushed_before_close(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    sink = JsonlSink(path)
    try:
        for i in range(3):
            sink.write(_record(i))
            # Another reader sees the line at once, as after a crash.
            assert len(read_jsonl(path).records) == i + 1
    finally:
        sink.close()
    sink.close()  # closing twice is harmless


def test_every_cut_inside_the_last_line_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as sink:
        for i in range(4):
            sink.write(_record(i, message="héllo ünïcode"))
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut_path = tmp_path / "cut.jsonl"
    for cut in range(last_start + 1, len(data) - 1):
        cut_path.write_bytes(data[:cut])
        log = read_jsonl(cut_path)
        assert len(log.records) == 3, cut
        assert log.skipped_last_line == 5, cut
    # Cut exactly after the last newline but one: a complete file with 3 records.
    cut_path.write_bytes(data[:last_start])
    assert read_jsonl(cut_path).skipped_last_line is None
    # A complete last line that only lacks its newline is kept.
    cut_path.write_bytes(data[:-1])
    assert len(read_jsonl(cut_path).records) == 4


def test_a_garbled_line_before_the_last_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as sink:
        for i in range(3):
            sink.write(_record(i))
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][:10]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log = read_jsonl(path)
    assert [r.step for r in log.records] == [0, 2]
    assert log.skipped_count == 1
    assert log.skipped_last_line is None
    assert log.skipped_summary() == f"1 line skipped: line 3: not JSON: {lines[2]!r}"
    with pytest.raises(LogFormatError, match=r"line 3 is not a step record: not JSON"):
        read_jsonl(path, strict=True)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is empty"),
        (b'{"step": 0, "action": "proceed"}\n', "not a gradguard log"),
        (b"hello world\n", "not a gradguard log"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not a gradguard log"),
        (b'{"format": "gradguard-log", "schema_version": 99}\n', "schema version 99"),
        (b'{"format": "gradguard-log"}\n', "schema version None"),
    ],
)
def test_files_that_are_not_gradguard_logs(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(content)
    with pytest.raises(LogFormatError, match=match):
        read_jsonl(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(LogFormatError, match="is a directory"):
        read_jsonl(tmp_path)


def test_existing_file_needs_an_explicit_choice(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as sink:
        sink.write(_record(0))
    with pytest.raises(ConfigError, match=r"already exists; pass if_exists='append'"):
        JsonlSink(path)
    with pytest.raises(ConfigError, match=r"if_exists must be one of .* got 'replace'"):
        JsonlSink(path, if_exists="replace")  # type: ignore[arg-type]
    with JsonlSink(path, if_exists="overwrite", metadata={"run": 2}) as sink:
        sink.write(_record(5))
    log = read_jsonl(path)
    assert [r.step for r in log.records] == [5]
    assert log.header.metadata == {"run": 2}


def test_append_continues_after_a_crash_and_drops_the_half_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with JsonlSink(path, metadata={"run": 1}) as sink:
        sink.write(_record(0))
        sink.write(_record(1))
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the crash cut the last line
    with JsonlSink(path, if_exists="append", metadata={"ignored": True}) as sink:
        sink.write(_record(2))
    log = read_jsonl(path)
    assert [r.step for r in log.records] == [0, 2]
    assert log.header.metadata == {"run": 1}
    assert log.skipped_last_line is None


def test_append_refuses_a_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes\n", encoding="utf-8")
    with pytest.raises(LogFormatError, match="not a gradguard log"):
        JsonlSink(path, if_exists="append")
    assert path.read_text(encoding="utf-8") == "my notes\n"


def test_metadata_must_be_json_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"metadata\['model'\] must hold JSON data"):
        JsonlSink(tmp_path / "a.jsonl", metadata={"model": object()})
    with pytest.raises(ConfigError, match="keys must be strings, got 3"):
        JsonlSink(tmp_path / "b.jsonl", metadata={"m": {3: 1}})

    class Result:
        def to_dict(self) -> dict[str, object]:
            return {"rho": math.inf, "rows": (1, 2)}

    with JsonlSink(tmp_path / "c.jsonl", metadata={"analysis": Result(), "x": math.nan}):
        pass
    meta = read_jsonl(tmp_path / "c.jsonl").header.metadata
    assert meta == {"analysis": {"rho": "inf", "rows": [1, 2]}, "x": "nan"}
