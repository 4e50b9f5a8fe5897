"""No run loses another's log, and no name from a checkpoint or model can drive the terminal."""

from __future__ import annotations

import datetime
import types
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradguard.cli import EXIT_OK, EXIT_USAGE, app, run_cmd
from gradguard.sinks import read_jsonl
from tests.cli.test_cli import _assert_one_line_error
from tests.cli.test_run import _script

runner = CliRunner()


def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run starts in the same second, as in a sweep launched by a script."""
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5)
    clock = types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: moment))
    monkeypatch.setattr(run_cmd, "datetime", clock)


# Turns shared/repro/reliability/repro_run_default_log_clash.py into a test.
def test_runs_started_in_the_same_second_get_their_own_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _frozen_clock(monkeypatch)
    logs = []
    for steps in (6, 4):
        result = runner.invoke(app, ["run", "--quiet", str(_script(tmp_path, steps=steps))])
        assert result.exit_code == EXIT_OK, result.stderr
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("log: ")]
        logs.append(Path(line.removeprefix("log: ")))
    assert logs[0] != logs[1]
    assert [len(read_jsonl(log).records) for log in logs] == [6, 4]  # neither run was lost
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(p.name for p in logs)


def test_the_default_name_carries_the_process_and_skips_taken_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _frozen_clock(monkeypatch)
    monkeypatch.setattr(run_cmd.os, "getpid", lambda: 4242)
    first = run_cmd.default_log()
    assert first == Path("runs") / "gradguard-20260102-030405-4242.jsonl"
    assert not first.exists()  # nothing is created before the run's first step
    first.parent.mkdir()
    first.touch()
    assert run_cmd.default_log().name == "gradguard-20260102-030405-4242-2.jsonl"
    monkeypatch.setattr(run_cmd.os, "getpid", lambda: 4243)
    assert run_cmd.default_log().name == "gradguard-20260102-030405-4243.jsonl"


def test_log_refuses_to_overwrite_an_earlier_run_without_force(tmp_path: Path) -> None:
    log = tmp_path / "a.jsonl"
    script = _script(tmp_path, steps=6)
    assert runner.invoke(app, ["run", "--log", str(log), "--quiet", str(script)]).exit_code == 0
    before = log.read_bytes()
    short = _script(tmp_path, steps=3)
    result = runner.invoke(app, ["run", "--log", str(log), "--quiet", str(short)])
    assert result.exit_code == EXIT_USAGE
    _assert_one_line_error(result.stderr, "already exists", "--force")
    assert log.read_bytes() == before
    result = runner.invoke(app, ["run", "--log", str(log), "--force", "--quiet", str(short)])
    assert result.exit_code == EXIT_OK, result.stderr
    assert len(read_jsonl(log).records) == 3


def test_inspect_shows_control_characters_in_tensor_names_escaped(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(
        {
            "\x1b]0;TITLE-SET-BY-CHECKPOINT\x07a": torch.ones(2),
            "\x1b[2J\x1b[Hb": torch.ones(2),
            "c\nOK: all 3 tensors are finite": torch.tensor([float("nan"), 1.0]),
        },
        path,
    )
    result = runner.invoke(app, ["inspect", str(path)])
    out = result.stdout
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;TITLE-SET-BY-CHECKPOINT\\x07a" in out
    assert "\\x1b[2J\\x1b[Hb" in out
    assert "c\\nOK: all 3 tensors are finite" in out
    assert not any(line.startswith("OK: all 3") for line in out.splitlines())
    assert "FAIL: 1 of 3 tensors hold NaN/Inf: c\\nOK" in out
