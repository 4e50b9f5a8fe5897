"""Finding recurrent weights and their gate blocks in any module."""

from __future__ import annotations

import torch
from torch import nn

from gradguard.stats.recurrent import recurrent_kind, recurrent_weights


def test_finds_every_layer_and_direction_with_gate_blocks() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 5, num_layers=2, bidirectional=True))
    found = recurrent_weights(model)
    assert [w.name for w in found] == [
        "1.weight_hh_l0",
        "1.weight_hh_l0_reverse",
        "1.weight_hh_l1",
        "1.weight_hh_l1_reverse",
    ]
    assert [(w.layer, w.direction) for w in found] == [
        (0, "forward"),
        (0, "reverse"),
        (1, "forward"),
        (1, "reverse"),
    ]
    blocks = found[0].blocks()
    assert [g for g, _, _ in blocks] == ["i", "f", "g", "o"]
    assert [gain for _, gain, _ in blocks] == [0.25, 0.25, 1.0, 0.25]
    lstm = model[1]
    assert isinstance(lstm, nn.LSTM)
    assert torch.equal(blocks[2][2], lstm.weight_hh_l0[10:15])


def test_kinds_of_modules_and_cells() -> None:
    assert recurrent_kind(nn.RNN(2, 3, nonlinearity="relu")) == "RNN_RELU"
    assert recurrent_kind(nn.GRU(2, 3)) == "GRU"
    assert recurrent_kind(nn.RNNCell(2, 3)) == "RNN_TANH"
    assert recurrent_kind(nn.LSTMCell(2, 3)) == "LSTM"
    assert recurrent_kind(nn.GRUCell(2, 3)) == "GRU"
    assert recurrent_kind(nn.Linear(2, 3)) is None
    cell = recurrent_weights(nn.GRUCell(2, 3))
    assert [(w.name, w.gates) for w in cell] == [("weight_hh", ("r", "z", "n"))]


def test_lstm_projection_is_found() -> None:
    found = recurrent_weights(nn.LSTM(3, 6, proj_size=2))
    assert found[0].projection_attr == "weight_hr_l0"
    projection = found[0].projection
    assert projection is not None and projection.shape == (2, 6)
    assert found[0].weight.shape == (24, 2)
    assert recurrent_weights(nn.Linear(2, 2)) == []
