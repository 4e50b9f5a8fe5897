"""``gradguard demo``: both runs, the side-by-side outcome and the report."""

from __future__ import annotations

import math
from pathlib import Path

from typer.testing import CliRunner

from gradguard import scenarios
from gradguard.cli import EXIT_OK, EXIT_USAGE, app
from gradguard.cli.demo import run_demo
from gradguard.sinks import read_jsonl
from tests.cli.test_cli import _assert_one_line_error

runner = CliRunner()


def test_demo_outcomes_match_the_scenario(tmp_path: Path) -> None:
    result = run_demo(tmp_path, steps=30, build=False)
    plain = scenarios.train(scenarios.get("rnn_x3"), steps=30, stop_at_divergence=False)
    # The monitor only watches: the same losses, NaN included (compared as text).
    assert list(map(repr, result.unguarded.losses)) == list(map(repr, plain.losses))
    assert result.unguarded.divergence == plain.divergence_step == 5
    pairs = zip(plain.losses, plain.norms, strict=True)
    first_bad = next(i for i, (loss, norm) in enumerate(pairs) if not math.isfinite(loss * norm))
    assert result.unguarded.first_nonfinite == first_bad
    assert not result.unguarded.finite
    assert result.guarded.finite
    assert result.guarded.losses[0] == plain.losses[0]  # same weights, same first batch
    assert result.guarded.interventions  # it had to act
    assert result.unguarded.first_warning is not None
    assert result.lead == first_bad - result.unguarded.first_warning > 0
    records = read_jsonl(result.log).records
    assert len(records) == 30
    assert read_jsonl(result.log).header.metadata["scenario"] == "rnn_x3"


def test_demo_command_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--steps", "25", "-o", str(out)])
    assert result.exit_code == EXIT_OK, result.stderr
    text = " ".join(result.stdout.split())
    assert "unguarded" in text and "guarded: Guard() defaults" in text
    assert "NaN" in text and "finite" in text
    assert "steps before the unguarded run hit NaN" in text
    assert (out / "report.html").is_file()
    assert (out / "gradient-norm.png").is_file()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "recurrent_report" in page  # the spectral analysis travels with the report


def test_demo_bad_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    result = runner.invoke(app, ["demo", "-o", str(blocker)])
    assert result.exit_code == EXIT_USAGE
    _assert_one_line_error(result.stderr, "is not a folder", "-o DIR")
    result = runner.invoke(app, ["demo", "--steps", "3"])
    assert result.exit_code == EXIT_USAGE
    _assert_one_line_error(result.stderr, "--steps")
