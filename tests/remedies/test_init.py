"""init_for_stability: orthogonal gate blocks, Xavier/He, forget bias 1, the seeds' RNN tamed."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from gradguard.analysis import bptt_profile, recurrent_report
from gradguard.errors import ConfigError
from gradguard.remedies import constrain_recurrent_, init_for_stability


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.RNN(4, 6, num_layers=2, bidirectional=True),
        lambda: nn.LSTM(4, 6, num_layers=2, batch_first=True),
        lambda: nn.LSTM(4, 6, proj_size=3, bidirectional=True),
        lambda: nn.GRU(4, 6, bidirectional=True),
        lambda: nn.ModuleList([nn.RNNCell(4, 6), nn.LSTMCell(6, 5), nn.GRUCell(5, 4)]),
    ],
)
def test_every_recurrent_block_has_radius_and_sigma_one(make: object) -> None:
    model = make()  # type: ignore[operator]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(7.0)  # start far from stable
    init_for_stability(model)
    report = recurrent_report(model)
    for block in report.blocks:
        assert block.radius == pytest.approx(1.0, abs=1e-5), block.name
        assert block.sigma_max == pytest.approx(1.0, abs=1e-5), block.name


def test_biases_forget_gate_and_feedforward_scaling() -> None:
    model = nn.ModuleDict(
        {"lstm": nn.LSTM(3, 5), "head": nn.Linear(5, 7), "conv": nn.Conv1d(2, 4, 3)}
    ).requires_grad_(False)
    summary = init_for_stability(model, feedforward="xavier")
    lstm = model["lstm"]
    assert isinstance(lstm, nn.LSTM)
    assert torch.equal(lstm.bias_ih_l0[5:10], torch.ones(5))
    assert float(lstm.bias_ih_l0[:5].abs().sum() + lstm.bias_ih_l0[10:].abs().sum()) == 0.0
    assert float(lstm.bias_hh_l0.abs().sum()) == 0.0
    head = model["head"]
    assert isinstance(head, nn.Linear)
    assert float(head.weight.abs().max()) <= math.sqrt(6 / (5 + 7))
    assert float(head.bias.abs().sum()) == 0.0
    names = dict(summary.entries)
    assert names["lstm.weight_hh_l0"] == "orthogonal per gate block"
    assert names["lstm.bias_ih_l0"] == "zeros, forget gate 1"
    assert names["conv.weight"] == "xavier_uniform"
    assert summary.to_dict()["kind"] == "init_summary"
    torch.manual_seed(0)
    wide = nn.Linear(2000, 500).requires_grad_(False)
    init_for_stability(wide, feedforward="he")
    assert float(wide.weight.std()) == pytest.approx(math.sqrt(2 / 2000), rel=0.02)


def test_identity_recurrence_for_relu_rnns() -> None:
    rnn = nn.RNN(3, 4, nonlinearity="relu")
    init_for_stability(rnn, recurrent="identity")
    assert torch.equal(rnn.weight_hh_l0, torch.eye(4))
    init_for_stability(nn.LSTM(3, 4, proj_size=2), recurrent="identity")  # W_hr^T @ I works
    with pytest.raises(ConfigError):
        init_for_stability(rnn, recurrent="zeros")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        init_for_stability(rnn, feedforward="lecun")  # type: ignore[arg-type]


def test_initialise_before_constraining() -> None:
    rnn = nn.RNN(3, 4)
    constrain_recurrent_(rnn)
    with pytest.raises(ConfigError, match="before constraining"):
        init_for_stability(rnn)


class SeedDemo(nn.Module):
    """The seeds' demo: nn.RNN(10, 50) with weight_hh multiplied by 3, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(10, 50)
        with torch.no_grad():
            self.rnn.weight_hh_l0.mul_(3.0)
        self.head = nn.Linear(50, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][-1])


def train(model: nn.Module, steps: int = 20) -> list[float]:
    """SGD(lr=0.01), MSE to a random target, sequences of length 100, as the seeds' demo."""
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    norms = []
    for _ in range(steps):
        x = torch.randn(100, 1, 10, generator=generator)
        y = torch.randn(1, 1, generator=generator)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), math.inf)))
        optimizer.step()
    return norms


def test_the_seeds_rnn_demo_no_longer_explodes() -> None:
    torch.manual_seed(0)
    x = torch.randn(100, 1, 10)
    y = torch.randn(1, 1)
    exploding = SeedDemo()
    tamed = SeedDemo()
    tamed.load_state_dict(exploding.state_dict())
    init_for_stability(tamed)
    before = bptt_profile(exploding, x, y, nn.functional.mse_loss)
    after = bptt_profile(tamed, x, y, nn.functional.mse_loss)
    assert before.ratio > 100 and before.growth_factor > 1  # dL/dh_0 >> dL/dh_T: it explodes
    assert after.ratio < 1 and after.growth_factor < 1
    norms_before, norms_after = train(exploding), train(tamed)
    assert all(math.isfinite(n) for n in norms_before + norms_after)
    assert norms_before[0] > 100 > 10 > norms_after[0]
    assert max(norms_after) < max(norms_before) / 10
