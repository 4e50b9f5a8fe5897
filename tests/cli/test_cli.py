"""The gradguard command line through typer's CliRunner (and one real subprocess)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradguard.analysis import recurrent_report
from gradguard.cli import EXIT_NONFINITE, EXIT_OK, EXIT_USAGE, app
from gradguard.cli.checkpoint import CheckpointSpectra, recurrent_spectra
from gradguard.records import AlertKind
from gradguard.sinks import JsonlSink
from tests.report.synthetic import synthetic_records, write_synthetic_log

runner = CliRunner()


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith("error: ")
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr


COMMANDS = ("demo", "run", "analyze", "inspect", "report")


def test_help_lists_the_five_commands_and_exit_codes() -> None:
    code, out, _ = _invoke("--help")
    assert code == EXIT_OK
    commands = out[out.index("Commands:") :].splitlines()[1:6]
    assert tuple(line.split()[0] for line in commands) == COMMANDS
    assert not any(line.rstrip().endswith("...") for line in commands)  # short help fits
    assert "Exit codes" in out
    for command in COMMANDS:
        code, out, _ = _invoke(command, "--help")
        assert code == EXIT_OK
        assert "Exit code" in " ".join(out.split()), command


def test_help_shows_the_defaults() -> None:
    def help_of(command: str) -> str:
        code, out, _ = _invoke(command, "--help")
        assert code == EXIT_OK
        return " ".join(out.split())

    assert "[default: 100; x>=1]" in help_of("inspect")  # --seq-len
    assert "[default: <log name>-report beside it]" in help_of("report")
    assert "[default: runs/gradguard-<time>-<pid>.jsonl]" in help_of("run")
    assert "[env var: GRADGUARD_CLIP; default: auto]" in help_of("run")


def test_bare_gradguard_prints_its_help_once() -> None:
    code, out, err = _invoke()
    assert code == EXIT_USAGE
    assert out.count("Usage: gradguard") == 1 and out.count("Commands:") == 1
    assert err == ""


def test_version() -> None:
    from gradguard import __version__

    code, out, _ = _invoke("--version")
    assert code == EXIT_OK
    assert out == f"gradguard {__version__} (torch {torch.__version__})\n"


def test_entry_point_runs_in_a_subprocess() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from gradguard.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert all(command in proc.stdout for command in COMMANDS)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((), None),
        (("bogus",), "No such command 'bogus'"),
        (("report",), "Missing argument 'LOG.jsonl'"),
        (("inspect",), "Missing argument 'CHECKPOINT'"),
        (("report", "--xx", "a"), "No such option: --xx"),
        (("report", "a", "b"), "unexpected extra argument"),
    ],
)
def test_usage_errors(args: tuple[str, ...], fragment: str | None) -> None:
    code, out, err = _invoke(*args)
    assert code == EXIT_USAGE
    if fragment is None:  # no arguments at all: the help
        assert "Usage" in out
    else:
        _assert_one_line_error(err, fragment, "--help")


# ------------------------------------------------------------------------------------------------
# report


def test_report_writes_the_page(tmp_path: Path) -> None:
    log = write_synthetic_log(tmp_path / "run.jsonl")
    code, out, err = _invoke("report", str(log), "-o", str(tmp_path / "out"))
    assert code == EXIT_OK, err
    page = tmp_path / "out" / "report.html"
    assert page.is_file()
    first, verdict = out.strip().splitlines()
    assert first == f"report: {page} (60 steps, 14 interventions, 9 alerts)"
    assert verdict.startswith("Rescued: gradguard intervened on 14 of 60 steps")


def test_report_counts_an_incident_once_and_its_repeats_apart(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    with JsonlSink(log) as sink:  # the growth-trend warnings at 28-33: told at 28, then repeats
        for record in synthetic_records():
            alerts = tuple(
                dataclasses.replace(a, repeat=a.kind is AlertKind.GROWTH_TREND and a.step > 28)
                for a in record.alerts
            )
            sink.write(dataclasses.replace(record, alerts=alerts))
    code, out, err = _invoke("report", str(log), "-o", str(tmp_path / "out"))
    assert code == EXIT_OK, err
    first, verdict = out.strip().splitlines()
    assert first.endswith("(60 steps, 14 interventions, 4 alerts, 9 with repeats)")
    assert "14 of 60 steps, 4 warning(s)" in verdict
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<b>4</b><span>alerts (9 with repeats)</span>" in page
    assert "<td>warning alerts</td><td>2</td>" in page
    assert "<td>alerts with repeats (every alert raised)</td><td>9</td>" in page


def test_report_default_folder(tmp_path: Path) -> None:
    log = write_synthetic_log(tmp_path / "run.jsonl", metadata={})
    code, _, err = _invoke("report", str(log))
    assert code == EXIT_OK, err
    assert (tmp_path / "run-report" / "report.html").is_file()


def test_report_bad_paths(tmp_path: Path) -> None:
    code, _, err = _invoke("report", str(tmp_path / "missing.jsonl"))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "does not exist")

    code, _, err = _invoke("report", str(tmp_path))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "is a folder")

    foreign = tmp_path / "notes.jsonl"
    foreign.write_text('{"hello": 1}\n', encoding="utf-8")
    code, _, err = _invoke("report", str(foreign))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "is not a gradguard log", "JsonlSink")

    log = write_synthetic_log(tmp_path / "run.jsonl", metadata={})
    blocker = tmp_path / "file.txt"
    blocker.write_text("", encoding="utf-8")
    code, _, err = _invoke("report", str(log), "-o", str(blocker))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "is not a folder", "-o DIR")


# ------------------------------------------------------------------------------------------------
# inspect


@pytest.fixture
def lstm_state() -> dict[str, torch.Tensor]:
    return torch.nn.LSTM(3, 5, num_layers=2).state_dict()


def test_inspect_healthy_checkpoint(tmp_path: Path, lstm_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "ok.pt"
    torch.save(lstm_state, path)
    code, out, _ = _invoke("inspect", str(path))
    assert code == EXIT_OK
    assert "ok.pt: 8 tensors" in out
    assert "OK: all 8 tensors are finite" in out
    norm = torch.linalg.vector_norm(lstm_state["weight_hh_l1"].double()).item()
    assert f"{norm:.4g}" in out
    for gate, block in zip(
        "ifgo", lstm_state["weight_hh_l0"].double().reshape(4, 5, 5), strict=True
    ):
        rho = torch.linalg.eigvals(block).abs().max().item()
        assert f"{rho:.4g}" in out, gate


def test_inspect_nested_checkpoint(tmp_path: Path) -> None:
    model = torch.nn.GRU(2, 3)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 1, 2))[0].sum().backward()
    optimizer.step()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3}, path)
    code, out, _ = _invoke("inspect", str(path), "--all")
    assert code == EXIT_OK
    assert "model.weight_hh_l0" in out
    assert "optimizer.state.0.exp_avg" in out
    # GRU gate blocks r, z, n.
    spectral = out[out.index("spectral radius") :]
    assert [
        line.split("│")[2].strip() for line in spectral.splitlines() if "weight_hh" in line
    ] == [
        "r",
        "z",
        "n",
    ]


def test_inspect_finds_nan_and_inf(tmp_path: Path, lstm_state: dict[str, torch.Tensor]) -> None:
    lstm_state["weight_hh_l1"][0, 0] = float("nan")
    lstm_state["bias_ih_l0"][2] = float("-inf")
    path = tmp_path / "bad.pt"
    torch.save({"model": lstm_state}, path)
    code, out, _ = _invoke("inspect", str(path))
    assert code == EXIT_NONFINITE
    assert "FAIL: 2 of 8 tensors hold NaN/Inf" in " ".join(out.split())
    assert "model.bias_ih_l0 (0 NaN, 1 Inf)" in " ".join(out.split())
    assert "non-finite" in out  # the NaN gate block has no radius


def _lightning_checkpoint(model: torch.nn.Module) -> dict[str, object]:
    """The shape of a default Lightning checkpoint, with its inf placeholders in callback state."""
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 1, 2))[0].sum().backward()
    optimizer.step()
    inf = torch.tensor(float("inf"))
    return {
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 1}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0}": {
                "monitor": None,
                "best_model_score": None,
                "best_model_path": "",
                "kth_value": inf,
                "best_k_models": {},
            },
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {
                "wait_count": 0,
                "best_score": inf,
                "patience": 3,
            },
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
    }


def test_inspect_passes_a_healthy_lightning_checkpoint(tmp_path: Path) -> None:
    model = torch.nn.GRU(2, 3)
    path = tmp_path / "epoch=0-step=1.ckpt"
    torch.save(_lightning_checkpoint(model), path)
    code, out, _ = _invoke("inspect", str(path), "--all")
    text = " ".join(out.split())
    assert code == EXIT_OK, out
    # 4 weights + step, exp_avg, exp_avg_sq for each of them; the two inf placeholders aside.
    assert "OK: all 16 weight and optimizer tensors (optimizer_states, state_dict) are finite" in (
        text
    )
    assert "note: 2 bookkeeping tensor(s) outside the weights hold NaN/Inf" in text
    assert "0 NaN, 1 Inf (bookkeeping, not judged)" in text


def test_inspect_fails_a_lightning_checkpoint_with_a_nan_weight(tmp_path: Path) -> None:
    model = torch.nn.GRU(2, 3)
    checkpoint = _lightning_checkpoint(model)
    states = checkpoint["state_dict"]
    assert isinstance(states, dict)
    states["model.weight_hh_l0"][0, 0] = float("nan")
    path = tmp_path / "bad.ckpt"
    torch.save(checkpoint, path)
    code, out, _ = _invoke("inspect", str(path))
    assert code == EXIT_NONFINITE
    assert "FAIL: 1 of 16 tensors hold NaN/Inf: state_dict.model.weight_hh_l0 (1 NaN, 0 Inf)" in (
        " ".join(out.split())
    )


def test_inspect_lists_at_most_40_rows_unless_all(tmp_path: Path) -> None:
    state = {f"t{i}": torch.ones(2) for i in range(45)}
    state["t44"][0] = float("nan")
    path = tmp_path / "many.pt"
    torch.save(state, path)
    code, out, _ = _invoke("inspect", str(path))
    assert code == EXIT_NONFINITE
    assert "... 5 more tensors (use --all to list them)" in out
    assert "t44" in out  # non-finite tensors are listed first
    code, out, _ = _invoke("inspect", str(path), "--all")
    assert "more tensors" not in out


class Opaque:
    """A Python object that weights_only loading refuses."""


def test_inspect_bad_files(tmp_path: Path) -> None:
    code, _, err = _invoke("inspect", str(tmp_path / "missing.pt"))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "does not exist")

    code, _, err = _invoke("inspect", str(tmp_path))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "is a folder")

    junk = tmp_path / "junk.pt"
    junk.write_text("hello", encoding="utf-8")
    code, _, err = _invoke("inspect", str(junk))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "is not a readable PyTorch checkpoint", "torch.save")

    pickled = tmp_path / "pickled.pt"
    torch.save({"obj": Opaque()}, pickled)
    code, _, err = _invoke("inspect", str(pickled))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "weights_only=True", "state_dict()")

    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 1}, empty)
    code, _, err = _invoke("inspect", str(empty))
    assert code == EXIT_USAGE
    _assert_one_line_error(err, "holds no tensors")


def test_checkpoint_spectra_match_recurrent_report() -> None:
    state = torch.nn.LSTM(3, 5, num_layers=2).state_dict()
    nested = [(f"model.{k}", v) for k, v in state.items()]
    spectra = recurrent_spectra(nested, seq_len=50)
    assert spectra.skipped == ()
    assert spectra.report is not None
    direct = recurrent_report(state, seq_len=50)
    assert [(b.gate, b.radius) for b in spectra.report.blocks] == [
        (b.gate, b.radius) for b in direct.blocks
    ]
    assert [b.name for b in spectra.report.blocks][:4] == ["model.weight_hh_l0"] * 4
    assert spectra.report.critical_radius == pytest.approx(1e6 ** (1 / 50))
    assert spectra.report.verdict is direct.verdict


def test_checkpoint_spectra_skip_what_they_cannot_analyse() -> None:
    blocks = torch.cat([k * torch.eye(3) for k in (1, 2, 3, 4)])  # an LSTM's 4 gate blocks
    bad = torch.eye(3)
    bad[0, 0] = float("nan")
    odd = torch.ones(5, 3)
    spectra = recurrent_spectra(
        [("a.weight_hh_l0", blocks), ("b.weight_hh_l0", bad), ("c.weight_hh_l0", odd)]
    )
    assert spectra.report is not None
    assert [(b.gate, round(b.radius, 6)) for b in spectra.report.blocks] == [
        ("i", 1.0),
        ("f", 2.0),
        ("g", 3.0),
        ("o", 4.0),
    ]
    # The cell block g (gain 1) with radius 3 > 1e6 ** (1/100): explosive.
    assert spectra.report.verdict.value == "explosive"
    assert spectra.skipped == (
        ("b.weight_hh_l0", "non-finite"),
        ("c.weight_hh_l0", "shape 5x3: not square gate blocks"),
    )
    proj = torch.nn.LSTM(3, 6, proj_size=2).state_dict()
    with_projection = recurrent_spectra(list(proj.items()))
    assert with_projection.report is not None
    assert [b.shape for b in with_projection.report.blocks] == [(2, 2)] * 4
    assert recurrent_spectra([("fc.weight", torch.eye(2))]) == CheckpointSpectra(None, ())
