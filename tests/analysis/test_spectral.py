"""spectral_radius, largest_singular_value and recurrent_report against torch.linalg."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gradguard.analysis import (
    Verdict,
    critical_radius,
    largest_singular_value,
    recurrent_report,
    spectral_radius,
)
from gradguard.errors import ConfigError, UnsupportedModelError


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q


def _gapped(n: int, seed: int) -> torch.Tensor:
    """V diag(1.2, 1.1, U[0.8, 0.95]) Vᵀ, the seeds' matrix with one explosive direction."""
    generator = torch.Generator().manual_seed(seed)
    v = _orthogonal(n, seed)
    values = torch.empty(n, dtype=torch.float64).uniform_(0.8, 0.95, generator=generator)
    values[0], values[1] = 1.2, 1.1
    return v @ torch.diag(values) @ v.T


def test_exact_matches_torch_linalg() -> None:
    w = torch.randn(40, 40) * 0.3
    assert spectral_radius(w, method="exact") == pytest.approx(
        float(torch.linalg.eigvals(w.double()).abs().max()), rel=1e-12
    )
    assert largest_singular_value(w, method="exact") == pytest.approx(
        float(torch.linalg.matrix_norm(w.double(), ord=2)), rel=1e-12
    )


@pytest.mark.parametrize(
    ("name", "matrix"),
    [
        ("scaled orthogonal", 1.3 * _orthogonal(150, 1)),
        ("gapped symmetric", _gapped(150, 2)),
        ("gaussian", torch.randn(150, 150, generator=torch.Generator().manual_seed(3)) / 150**0.5),
        ("rotation pair", torch.tensor([[0.0, -1.1], [1.1, 0.0]])),
    ],
)
def test_power_iteration_matches_torch_linalg(name: str, matrix: torch.Tensor) -> None:
    exact = float(torch.linalg.eigvals(matrix.double()).abs().max())
    assert spectral_radius(matrix, method="power") == pytest.approx(exact, rel=5e-3), name
    sigma = float(torch.linalg.matrix_norm(matrix.double(), ord=2))
    assert largest_singular_value(matrix, method="power") == pytest.approx(sigma, rel=1e-5), name


def test_auto_switches_to_power_iteration_above_exact_max() -> None:
    matrix = 0.9 * _orthogonal(64, 4)
    assert spectral_radius(matrix, exact_max=32) == pytest.approx(0.9, rel=1e-9)
    assert largest_singular_value(torch.zeros(5, 3)) == 0.0
    assert spectral_radius(torch.triu(torch.ones(6, 6), 1), method="power") == 0.0  # nilpotent


@given(st.integers(min_value=1, max_value=12), st.integers(min_value=0, max_value=10_000))
def test_radius_never_exceeds_sigma_max(n: int, seed: int) -> None:
    w = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert spectral_radius(w) <= largest_singular_value(w) * (1 + 1e-9)


def test_rnn_report_per_layer_direction_and_gate() -> None:
    lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    report = recurrent_report(lstm, seq_len=50)
    assert len(report.blocks) == 2 * 2 * 4
    assert {(b.layer, b.direction) for b in report.blocks} == {
        (0, "forward"),
        (0, "reverse"),
        (1, "forward"),
        (1, "reverse"),
    }
    first = report.blocks[0]
    assert (first.name, first.gate, first.shape) == ("weight_hh_l0", "i", (5, 5))
    block = lstm.weight_hh_l0_reverse[10:15].detach().double()
    g_rev = next(b for b in report.blocks if b.name == "weight_hh_l0_reverse" and b.gate == "g")
    assert g_rev.radius == pytest.approx(float(torch.linalg.eigvals(block).abs().max()))
    assert g_rev.sigma_max == pytest.approx(float(torch.linalg.matrix_norm(block, ord=2)))
    assert g_rev.gain == 1.0
    assert report.critical_radius == pytest.approx(critical_radius(50))
    gru = recurrent_report(nn.GRU(3, 4, batch_first=True))
    assert [b.gate for b in gru.blocks] == ["r", "z", "n"]


def test_verdicts_follow_the_critical_radius() -> None:
    rnn = nn.RNN(2, 8)
    q = _orthogonal(8, 5).float()
    cases = [(0.5, Verdict.STABLE), (0.99, Verdict.NEAR_CRITICAL), (1.1, Verdict.NEAR_CRITICAL)]
    for radius, expected in cases:
        with torch.no_grad():
            rnn.weight_hh_l0.copy_(radius * q)
        assert recurrent_report(rnn, seq_len=100).verdict == expected, radius
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(1.2 * q)
    assert recurrent_report(rnn, seq_len=100).verdict == Verdict.EXPLOSIVE  # 1.2 > 1.1482
    assert recurrent_report(rnn, seq_len=50).verdict == Verdict.NEAR_CRITICAL  # 1.2 < 1.3183


def test_sigmoid_gates_count_a_quarter() -> None:
    lstm = nn.LSTM(2, 6)
    with torch.no_grad():
        lstm.weight_hh_l0.copy_(torch.cat([2.0 * _orthogonal(6, k).float() for k in range(4)]))
    report = recurrent_report(lstm, seq_len=100)
    by_gate = {b.gate: b for b in report.blocks}
    assert by_gate["f"].effective_radius == pytest.approx(0.5)
    assert by_gate["f"].verdict == Verdict.STABLE
    assert by_gate["g"].verdict == Verdict.EXPLOSIVE
    assert report.worst.gate == "g"
    assert report.max_radius == pytest.approx(2.0)


def test_projection_loop_and_cells_and_mappings() -> None:
    lstm = nn.LSTM(3, 6, proj_size=2)
    report = recurrent_report(lstm)
    block = lstm.weight_hr_l0.detach().double() @ lstm.weight_hh_l0[:6].detach().double()
    assert report.blocks[0].shape == (2, 2)
    assert report.blocks[0].radius == pytest.approx(float(torch.linalg.eigvals(block).abs().max()))
    cells = recurrent_report(nn.ModuleDict({"a": nn.RNNCell(2, 3), "b": nn.LSTMCell(3, 4)}))
    assert [b.name for b in cells.blocks] == ["a.weight_hh"] + ["b.weight_hh"] * 4
    custom = recurrent_report({"W_hh": 1.5 * torch.eye(3)}, seq_len=100)
    assert custom.blocks[0].radius == pytest.approx(1.5)
    assert custom.verdict == Verdict.EXPLOSIVE


def test_progress_and_json_and_text() -> None:
    calls: list[tuple[int, int]] = []
    report = recurrent_report(
        nn.GRU(2, 3, num_layers=2), progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(i, 6) for i in range(1, 7)]
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["kind"] == "recurrent_report"
    assert data["blocks"][0]["verdict"] in ("stable", "near-critical", "explosive")
    assert "weight_hh_l1" in str(report)


def test_errors_name_the_fix() -> None:
    with pytest.raises(UnsupportedModelError, match="depth_profile"):
        recurrent_report(nn.Linear(3, 3))
    with pytest.raises(ConfigError, match=r"\(2, 3\)"):
        recurrent_report({"W": torch.zeros(2, 3)})
    with pytest.raises(ConfigError, match="'fast'"):
        spectral_radius(torch.eye(2), method="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        recurrent_report(nn.RNN(2, 2), seq_len=0)
    with pytest.raises(ConfigError):
        recurrent_report(nn.RNN(2, 2), margin=1.5)


def test_a_state_dict_from_a_checkpoint_gives_the_same_report() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "enc": nn.LSTM(3, 5, num_layers=2, bidirectional=True),
            "dec": nn.GRU(4, 6),
            "proj": nn.LSTM(3, 6, proj_size=2),
            "head": nn.Linear(6, 1),
        }
    )
    live = recurrent_report(model)
    saved = recurrent_report(model.state_dict())
    assert len(saved.blocks) == len(live.blocks)
    for a, b in zip(saved.blocks, live.blocks, strict=True):
        assert (a.name, a.kind, a.layer, a.direction, a.gate, a.shape) == (
            b.name,
            b.kind,
            b.layer,
            b.direction,
            b.gate,
            b.shape,
        )
        assert a.radius == pytest.approx(b.radius) and a.sigma_max == pytest.approx(b.sigma_max)
    with pytest.raises(ConfigError, match="stack of"):
        recurrent_report({"x.weight_hh_l0": torch.zeros(10, 4)})
