"""``gradguard analyze``: factories, checkpoints, JSON output and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradguard.analysis import critical_radius, explosion_table, recurrent_report
from gradguard.cli import EXIT_OK, EXIT_USAGE, app
from tests.cli.test_cli import _assert_one_line_error

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models.py"
runner = CliRunner()


def _run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["analyze", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def _exploding_rnn() -> tuple[torch.nn.Module, torch.Tensor]:
    namespace: dict[str, object] = {"__name__": "models_for_test"}
    exec(compile(MODELS.read_text(encoding="utf-8"), str(MODELS), "exec"), namespace)
    made = namespace["exploding_rnn"]()  # type: ignore[operator]
    return made  # type: ignore[no-any-return]


def test_json_of_the_exploding_rnn_matches_the_analysis_functions() -> None:
    code, out, err = _run(f"{MODELS}:exploding_rnn", "--json")
    assert code == EXIT_OK, err
    data = json.loads(out)
    model, _ = _exploding_rnn()
    direct = recurrent_report(model, seq_len=100)
    (block,) = data["recurrent_report"]["blocks"]
    assert block["name"] == "rnn.weight_hh_l0"
    assert block["radius"] == pytest.approx(direct.blocks[0].radius, rel=1e-12)
    assert block["radius"] == pytest.approx(1.7936, abs=1e-4)  # x3 of PyTorch's init
    assert block["verdict"] == "explosive"
    assert (
        data["critical_radius"]
        == pytest.approx(critical_radius(100))
        == pytest.approx(1.1482, abs=1e-4)
    )
    assert data["model"] == "SequenceRegressor"
    assert data["parameters"] == sum(p.numel() for p in model.parameters()) == 3151
    assert [layer["name"] for layer in data["depth_profile"]["layers"]] == ["rnn", "head"]
    radii = [row["radius"] for row in data["explosion_table"]["rows"]]
    assert radii == [1.01, 1.1, 1.5, round(direct.blocks[0].radius, 4)]
    # rho = 1.5 crosses 1e6 at T = 35 and 1e10 at T = 57, as explosion_table says.
    row = data["explosion_table"]["rows"][2]
    expected = explosion_table([1.5], T_max=100).rows[0]
    assert [c["step"] for c in row["crossings"]] == [c.step for c in expected.crossings]
    assert [c["step"] for c in row["crossings"]][:2] == [35, 57]
    actions = [a["action"] for a in data["advice"]]
    assert actions == ["clip_gradients", "constrain_recurrent", "stable_init"]
    assert data["advice"][0]["params"] == {"max_norm": 1.0}


def test_tables_and_advice_on_the_terminal() -> None:
    code, out, _ = _run(f"{MODELS}:exploding_rnn", "--seq-len", "50")
    assert code == EXIT_OK
    assert "Critical spectral radius for T=50: 1.3183" in out  # 1e6 ** (1/50)
    assert "Recurrent weights, T=50: explosive" in out
    assert "1.794 (model)" in out
    assert "Advice" in out
    assert "constrain_recurrent_" in " ".join(out.split())


def test_depth_advice_for_a_deep_mlp() -> None:
    code, out, _ = _run(f"{MODELS}:deep_mlp", "--json")
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["recurrent_report"] is None
    assert data["depth_profile"]["growth_factor"] > 1.5
    assert {a["action"] for a in data["advice"]} == {
        "clip_gradients",
        "stable_init",
        "add_normalization",
    }
    assert "No nn.RNN/LSTM/GRU" in data["notes"][0]


def test_model_without_inputs_and_long_sequences() -> None:
    code, out, _ = _run(f"{MODELS}:deep_lstm", "--seq-len", "500", "--json")
    assert code == EXIT_OK
    data = json.loads(out)
    assert data["depth_profile"] is None
    assert "return (model, example_inputs)" in data["notes"][0]
    assert len(data["recurrent_report"]["blocks"]) == 12  # 3 layers x 4 gates
    assert [a["action"] for a in data["advice"]] == ["clip_gradients", "truncated_bptt"]
    assert data["advice"][0]["params"] == {"max_norm": 0.5}  # a deep RNN


def test_checkpoint_target(tmp_path: Path) -> None:
    model, _ = _exploding_rnn()
    path = tmp_path / "rnn.pt"
    torch.save({"model": model.state_dict(), "step": 3}, path)
    code, out, err = _run(str(path), "--json")
    assert code == EXIT_OK, err
    data = json.loads(out)
    assert data["model"] == "checkpoint"
    (block,) = data["recurrent_report"]["blocks"]
    assert block["name"] == "model.rnn.weight_hh_l0"
    assert block["radius"] == pytest.approx(1.7936, abs=1e-4)
    assert [a["action"] for a in data["advice"]] == [
        "clip_gradients",
        "constrain_recurrent",
        "stable_init",
    ]
    torch.save({"fc.weight": torch.ones(2, 2)}, path)
    code, out, _ = _run(str(path))
    assert code == EXIT_OK
    assert "No weight_hh tensor in the checkpoint" in out
    assert "nothing to change" in out


def test_module_factory_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mymodels_for_analyze.py").write_text(
        "import torch\n\ndef make():\n    print('building')\n    return torch.nn.GRU(3, 4)\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = _run("mymodels_for_analyze:make", "--json")
    assert code == EXIT_OK, err
    assert "building" in err  # the user's prints go to stderr: stdout is only the JSON
    data = json.loads(out)
    assert [b["gate"] for b in data["recurrent_report"]["blocks"]] == ["r", "z", "n"]


def test_bad_targets(tmp_path: Path) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('oops')\n", encoding="utf-8")
    factories = tmp_path / "factories.py"
    factories.write_text(
        "import torch\nVALUE = 3\n"
        "def fails():\n    raise ValueError('no data')\n"
        "def wrong():\n    return 'a string'\n"
        "def needs_args(n):\n    return torch.nn.Linear(n, n)\n",
        encoding="utf-8",
    )
    cases = [
        ((f"{tmp_path / 'missing.py'}:make",), ("does not exist",)),
        ((f"{broken}:make",), ("importing", "RuntimeError: oops", "fix the error")),
        ((f"{factories}:nothing",), ("has no attribute 'nothing'", "fails, needs_args, wrong")),
        ((f"{factories}:VALUE",), ("is a int, not a function",)),
        ((f"{factories}:fails",), ("fails() raised ValueError: no data",)),
        ((f"{factories}:wrong",), ("returned a str, not an nn.Module", "(model, example_inputs)")),
        ((f"{factories}:needs_args",), ("needs_args() raised TypeError",)),
        ((str(factories),), ("names no factory", "FILE.py:FACTORY")),
        (("no_such_module_xyz:make",), ("no module named 'no_such_module_xyz'",)),
        ((str(tmp_path / "missing.pt"),), ("does not exist",)),
        ((str(tmp_path),), ("is a folder",)),
        ((f"{MODELS}:exploding_rnn", "--seq-len", "0"), ("--seq-len", "--help")),
        ((f"{MODELS}:exploding_rnn", "--threshold", "x"), ("--threshold", "--help")),
    ]
    for args, fragments in cases:
        code, _, err = _run(*args)
        assert code == EXIT_USAGE, (args, err)
        _assert_one_line_error(err, *fragments)
