"""Damaged logs: every line that is not a valid record is skipped, counted and named, never a crash.

The cases are those of a hand-edited log, a log written by another tool, and a log appended
after resuming from an older snapshot (steps that go back), at the reader, the report and the
``gradguard report`` command. Turns shared/repro/reliability/repro_report_malformed_log.py
into tests.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gradguard.cli import EXIT_OK, app
from gradguard.errors import LogFormatError
from gradguard.records import ActionKind, Reason, StepRecord, to_json_dict
from gradguard.report import figures
from gradguard.report.digest import RunDigest
from gradguard.sinks import LogStream, read_jsonl
from gradguard.sinks.read import MAX_SKIPPED_KEPT, parse_record

HEADER = {"format": "gradguard-log", "schema_version": 1, "gradguard_version": "t", "metadata": {}}


def _rec(step: Any, **kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "step": step,
        "action": "proceed",
        "reason": "healthy",
        "message": "ok",
        "applied": True,
        "loss": 1.0,
        "total_norm": 1.0,
        "top": [["w", 1.0]],
    }
    data.update(kw)
    return data


def _alert(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"step": 5, "severity": "critical", "kind": "nonfinite_grad"}
    data.update(kw)
    return data


def _write(path: Path, lines: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps(HEADER) + "\n")
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path


# (name, the bad line, words its reason must hold)
DAMAGE: list[tuple[str, Any, str]] = [
    ("step as string", _rec("5"), "step must be a whole number >= 0, got '5'"),
    ("step 5.5", _rec(5.5), "step must be a whole number >= 0, got 5.5"),
    ("step -1", _rec(-1), "got -1"),
    ("step true", _rec(True), "got True"),
    ("NaN step token", '{"step": NaN, "action": "proceed", "reason": "healthy"}', "got nan"),
    ("message is a number", _rec(5, message=404), "message must be a string, got 404"),
    ("culprits are numbers", _rec(5, alerts=[_alert(culprits=[3])]), "culprit must be a string"),
    ("alerts not a list", _rec(5, alerts={"a": 1}), "alerts must be a list"),
    ("alert kind unknown", _rec(5, alerts=[_alert(kind="boom")]), "alert kind must be one of"),
    ("alert without step", _rec(5, alerts=[_alert(step=None)]), "alert step must be"),
    ("applied is a string", _rec(5, applied="no"), "applied must be true or false, got 'no'"),
    ("rolled_back_to string", _rec(5, rolled_back_to="3"), "rolled_back_to must be a whole"),
    ("steps_lost string", _rec(5, steps_lost="2"), "steps_lost must be a whole number"),
    ("top name null", _rec(5, top=[[None, 2.0]]), "top tensor name must be a string, got None"),
    ("top pair of three", _rec(5, top=[["w", 1.0, 2.0]]), "top must hold [name, norm] pairs"),
    ("loss is a word", _rec(5, loss="big"), "loss must be a number, got 'big'"),
    ("unknown action", _rec(5, action="explode"), "action must be one of"),
    ("reason missing", {"step": 5, "action": "proceed"}, "missing reason"),
    ("a list, not an object", [1, 2, 3], "a step record is a JSON object"),
    ("deeply nested JSON", "[" * 100_000 + "]" * 100_000, "not JSON"),
    ("not JSON at all", "garbage {", "not JSON: 'garbage {'"),
]


@pytest.mark.parametrize(("name", "bad", "why"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_line_is_skipped_with_its_number_and_reason(
    tmp_path: Path, name: str, bad: Any, why: str
) -> None:
    path = _write(tmp_path / "log.jsonl", [_rec(i) for i in range(5)] + [bad, _rec(6)])
    log = read_jsonl(path)
    assert [r.step for r in log.records] == [0, 1, 2, 3, 4, 6]
    assert log.skipped_count == 1
    (skipped,) = log.skipped
    assert skipped.number == 7  # the header is line 1
    assert why in skipped.why
    summary = log.skipped_summary()
    assert summary is not None and summary.startswith("1 line skipped: line 7: ")
    assert len(summary) < 300  # a huge line is previewed, not echoed
    with pytest.raises(LogFormatError, match="line 7 is not a step record"):
        read_jsonl(path, strict=True)


def test_many_bad_lines_are_all_counted_and_the_first_ones_named(tmp_path: Path) -> None:
    lines: list[Any] = []
    for i in range(100):
        lines += [_rec(i), _rec(str(i))]
    log = read_jsonl(_write(tmp_path / "log.jsonl", lines))
    assert len(log.records) == 100
    assert log.skipped_count == 100
    assert len(log.skipped) == MAX_SKIPPED_KEPT
    assert log.skipped[0].number == 3
    assert log.skipped_summary() == (
        "100 lines skipped: line 3: step must be a whole number >= 0, got '0'; line 5: step must "
        "be a whole number >= 0, got '1'; line 7: step must be a whole number >= 0, got '2'; and "
        "97 more"
    )


def test_unknown_keys_and_missing_optional_fields_are_accepted(tmp_path: Path) -> None:
    full = StepRecord(3, ActionKind.CLIP, Reason.NORM_ABOVE_BOUND, clip_coef=0.5, lr=0.1)
    data = {**to_json_dict(full), "added_by_a_newer_version": [1, 2]}
    assert parse_record(data) == full
    bare = parse_record({"step": 1, "action": "skip", "reason": "spike"})
    assert bare == StepRecord(1, ActionKind.SKIP, Reason.SPIKE)
    assert parse_record(_rec(2, loss=3, total_norm="inf")).loss == 3.0  # int is a number


def test_a_stream_is_read_once_and_closes_its_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.jsonl", [_rec(i) for i in range(3)])
    with LogStream(path) as stream:
        assert [r.step for r in stream] == [0, 1, 2]
        with pytest.raises(RuntimeError, match="already iterated"):
            iter(stream)
    assert stream._file.closed


def test_a_log_appended_after_resuming_from_an_older_snapshot(tmp_path: Path) -> None:
    """Steps 100-119, then 40-59 again: the heat map used to index a negative column."""
    lines = [_rec(i, top=[["w", float(i)]]) for i in range(100, 120)]
    lines += [_rec(i, top=[["w", 1000.0 + i]]) for i in range(40, 60)]
    records = read_jsonl(_write(tmp_path / "log.jsonl", lines)).records
    digest = RunDigest.of(records)
    assert (digest.culprits.first_step, digest.culprits.last_step) == (40, 119)
    assert figures.culprit_heatmap(digest).startswith(b"\x89PNG")
    xs, _ = digest.norm.points()
    assert xs == sorted(xs) and (xs[0], xs[-1]) == (40, 119)


def test_gradguard_report_warns_about_skipped_lines_and_succeeds(tmp_path: Path) -> None:
    bad = [_rec("5"), _rec(6, applied="no"), "x" * 10]
    resumed = [_rec(3), _rec(4)]  # continued after resuming from the snapshot of step 3
    path = _write(tmp_path / "log.jsonl", [_rec(i) for i in range(5)] + bad + [_rec(9), *resumed])
    result = CliRunner().invoke(app, ["report", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == EXIT_OK, result.output
    assert "Traceback" not in result.stderr
    warning, *_ = result.stderr.splitlines()
    assert warning.startswith("warning: 3 lines skipped: line 7: step must be a whole number")
    assert "line 8: applied must be true or false" in warning
    assert "report: " in result.stdout and "(8 steps," in result.stdout
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "3 lines skipped: line 7:" in html


def test_a_stream_hands_what_it_read_to_a_run_log_with_the_records_kept(tmp_path: Path) -> None:
    path = _write(tmp_path / "kept.jsonl", [_rec(0), "not json", _rec(1), _rec(2), '{"step": 3'])
    with LogStream(path) as stream:
        kept = tuple(r for r in stream if r.step != 1)
    log = stream.run_log(kept)
    assert [r.step for r in log.records] == [0, 2]
    assert (log.path, log.header) == (path, stream.header)
    assert (log.skipped_count, log.skipped_last_line) == (1, 6)  # the header is line 1
    assert [s.number for s in log.skipped] == [3]
    assert log == dataclasses.replace(read_jsonl(path), records=kept)  # read_jsonl keeps all
