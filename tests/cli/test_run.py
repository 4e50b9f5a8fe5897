"""``gradguard run``: an unmodified script under global hooks; exit codes; one-line errors."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradguard.cli import EXIT_OK, EXIT_USAGE, app
from gradguard.cli.run_cmd import EXIT_DIVERGED, EXIT_INTERRUPTED
from gradguard.records import ActionKind
from gradguard.sinks import read_jsonl
from tests.cli.test_cli import _assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "train_bad_batch.py"
runner = CliRunner()

SCRIPT = """
import math, sys
import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range({steps}):
    optimizer.zero_grad()
    nn.functional.mse_loss(model(torch.randn(8, 3)), torch.randn(8, 1)).backward()
    if step >= {nan_from}:
        model.weight.grad.fill_(math.nan)
    optimizer.step()
    if step == {stop_at}:
        {stop}
print("args", sys.argv[1:], "finite", bool(torch.isfinite(model.weight).all()))
"""


def _script(
    tmp_path: Path, steps: int = 6, nan_from: int = 99, stop_at: int = -1, stop: str = "pass"
) -> Path:
    path = tmp_path / "train.py"
    path.write_text(
        SCRIPT.format(steps=steps, nan_from=nan_from, stop_at=stop_at, stop=stop), encoding="utf-8"
    )
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["run", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def test_the_example_diverges_without_gradguard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE)])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert exited.value.code == 1


def test_the_example_finishes_under_gradguard_run(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from gradguard.cli import main; main()",
            "run",
            "--log",
            str(log),
            "--report",
            str(EXAMPLE),
            "--steps",
            "60",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "done: 60 steps" in proc.stdout
    assert "train_bad_batch.py finished" in proc.stderr
    records = read_jsonl(log).records
    assert len(records) == 60
    assert records[40].action is not ActionKind.PROCEED  # the corrupted batch
    assert records[40].alerts
    assert (tmp_path / "run-report" / "report.html").is_file()
    assert f"report: {tmp_path / 'run-report' / 'report.html'}" in proc.stderr


def test_script_arguments_and_summary(tmp_path: Path) -> None:
    script = _script(tmp_path, nan_from=3)
    code, out, err = _run("--log", str(tmp_path / "a.jsonl"), "--quiet", str(script), "--x", "1")
    assert code == EXIT_OK, err
    assert "args ['--x', '1'] finite True" in out
    assert "train.py finished" in err
    assert "Linear" in err
    assert f"log: {tmp_path / 'a.jsonl'}" in err
    assert "naming the parameters" not in err  # --quiet: no notes but warnings
    records = read_jsonl(tmp_path / "a.jsonl").records
    assert [r.applied for r in records][:3] == [True] * 3
    assert not any(r.applied for r in records[3:4])
    assert sys.argv[0] != str(script)  # restored


def test_default_log_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _run("--quiet", str(_script(tmp_path)))
    assert code == EXIT_OK, err
    (log,) = (tmp_path / "runs").glob("gradguard-*.jsonl")
    assert len(read_jsonl(log).records) == 6


@pytest.mark.parametrize(
    ("stop", "code", "ending"),
    [
        ("raise KeyboardInterrupt", EXIT_INTERRUPTED, "interrupted (Ctrl-C)"),
        ("raise ValueError('bad data')", 1, "raised ValueError"),
        ("sys.exit(4)", 4, "exited with code 4"),
        ("sys.exit('stopping')", 1, "exited with code 1"),
        ("sys.exit(0)", 0, "finished"),
    ],
)
def test_the_summary_is_printed_however_the_script_ends(
    tmp_path: Path, stop: str, code: int, ending: str
) -> None:
    script = _script(tmp_path, stop_at=2, stop=stop)
    got, _, err = _run("--log", str(tmp_path / "a.jsonl"), "--quiet", str(script))
    assert got == code, err
    assert f"train.py {ending}" in err
    assert "log:" in err
    if "ValueError" in stop:
        assert "Traceback" in err and "ValueError: bad data" in err
        assert "runpy" not in err and "gradguard" not in err.split("ValueError")[0]


def test_a_run_the_guard_cannot_rescue_exits_3(tmp_path: Path) -> None:
    script = _script(tmp_path, steps=300, nan_from=2)
    code, _, err = _run("--log", str(tmp_path / "a.jsonl"), "--quiet", str(script))
    assert code == EXIT_DIVERGED, err
    assert "stopped by gradguard" in err
    assert read_jsonl(tmp_path / "a.jsonl").records[-1].action is ActionKind.ABORT


def test_a_script_without_optimizer(tmp_path: Path) -> None:
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n", encoding="utf-8")
    code, out, err = _run(str(script))
    assert code == EXIT_OK
    assert "hello" in out
    assert "no optimizer stepped" in err


def test_bad_arguments(tmp_path: Path) -> None:
    script = _script(tmp_path)
    cases = [
        ((str(tmp_path / "missing.py"),), ("does not exist",)),
        ((str(tmp_path),), ("is not a file",)),
        (("--clip", "-1", str(script)), ("--clip must be", "--clip 1.0")),
        (("--clip", "big", str(script)), ("--clip must be",)),
        (("--preset", "loud", str(script)), ("--preset must be one of",)),
        (("--log", str(tmp_path), str(script)), ("is a folder",)),
        ((), ("Missing argument 'SCRIPT'",)),
    ]
    for args, fragments in cases:
        code, _, err = _run(*args)
        assert code == EXIT_USAGE, (args, err)
        _assert_one_line_error(err, *fragments)


MANUAL = """
import torch
net = torch.nn.Linear(4, 1)
for step in range(30):
    net.zero_grad()
    loss = torch.nn.functional.mse_loss(net(torch.randn(8, 4)), torch.randn(8, 1))
    if step == 20:
        loss = loss * float("inf")
    loss.backward()
    for p in net.parameters():
        p.data.add_(p.grad, alpha=-0.1)
    if step == 12:
        print("step 12", flush=True)
"""


# Turns shared/repro/training/repro_manual_sgd.py into a test.
def test_a_script_that_updates_weights_by_hand_is_told_early(tmp_path: Path) -> None:
    script = tmp_path / "manual.py"
    script.write_text(MANUAL, encoding="utf-8")
    code, out, err = _run("--log", str(tmp_path / "m.jsonl"), str(script))
    assert code == EXIT_OK, err
    assert "step 12" in out
    note = "gradguard: 10 backward() calls and no optimizer.step() yet"
    assert note in err and "are NOT protected" in err
    assert err.index(note) < err.index("manual.py finished")
    assert "backward() ran 30 times: weights updated by the script itself are not protected" in (
        " ".join(err.split())
    )
    code, _, err = _run("--quiet", "--log", str(tmp_path / "q.jsonl"), str(script))
    assert code == EXIT_OK and note in err  # a warning, not a note: --quiet keeps it


def test_options_from_the_environment_where_torchrun_takes_the_command_line(
    tmp_path: Path,
) -> None:
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    with pytest.raises(SystemExit):  # torchrun's parser reads --log as an abbreviation of its own
        parser.parse_args(["--nproc-per-node", "2", "gradguard", "run", "--log", "x", "t.py"])
    parsed = parser.parse_args(["--nproc-per-node", "2", "gradguard", "run", "t.py", "--lr", "1"])
    assert parsed.training_script_args == ["run", "t.py", "--lr", "1"]
    env = {"GRADGUARD_LOG": str(tmp_path / "env.jsonl"), "GRADGUARD_CLIP": "0.5"}
    result = runner.invoke(
        app, ["run", str(_script(tmp_path))], env={**env, "GRADGUARD_QUIET": "1"}
    )
    assert result.exit_code == EXIT_OK, result.stderr
    assert "naming the parameters" not in result.stderr  # GRADGUARD_QUIET=1
    records = read_jsonl(tmp_path / "env.jsonl").records
    assert len(records) == 6
    assert all(
        r.clip_coef == pytest.approx(min(1.0, 0.5 / r.total_norm), rel=1e-5) for r in records
    )
    # The command line wins over the environment.
    result = runner.invoke(
        app, ["run", "--log", str(tmp_path / "cli.jsonl"), str(_script(tmp_path))], env=env
    )
    assert result.exit_code == EXIT_OK, result.stderr
    assert (tmp_path / "cli.jsonl").is_file()
    help_text = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "120"}).stdout
    for name in ("GRADGUARD_LOG", "GRADGUARD_CLIP", "GRADGUARD_QUIET", "torchrun"):
        assert name in help_text


def test_only_rank_zero_prints_alerts_notes_and_the_summary(tmp_path: Path) -> None:
    script = _script(tmp_path, nan_from=3)
    outputs = {}
    for rank in ("0", "1"):
        log = tmp_path / f"rank{rank}.jsonl"
        result = runner.invoke(app, ["run", "--log", str(log), str(script)], env={"RANK": rank})
        assert result.exit_code == EXIT_OK, result.stderr
        outputs[rank] = (result.stderr, log.exists())
    err, wrote = outputs["0"]
    assert wrote and "SKIP (nonfinite_grad)" in err
    assert (
        "gradguard: naming the parameters of SGD from model Linear found in train.py as `model`"
        in err
    )
    assert "train.py finished" in err
    assert outputs["1"] == ("", False)
