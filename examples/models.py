"""Model factories for ``gradguard analyze``: zero-argument functions returning a model.

    gradguard analyze examples/models.py:exploding_rnn
    gradguard analyze examples/models.py:deep_lstm --seq-len 500 --json

A factory returns the model, or ``(model, example_inputs)`` to also get the depth profile.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SequenceRegressor(nn.Module):
    """A recurrent layer followed by a linear read-out at every time step."""

    def __init__(self, rnn: nn.RNNBase, hidden: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out)


def exploding_rnn() -> tuple[nn.Module, Tensor]:
    """The textbook RNN (hidden 50) with its recurrent weights scaled x3, on length-100 inputs."""
    torch.manual_seed(0)
    rnn = nn.RNN(10, 50)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(3.0)
    return SequenceRegressor(rnn, 50), torch.randn(100, 1, 10)


def deep_lstm() -> nn.Module:
    """A three-layer LSTM with PyTorch's default initialisation (no example inputs)."""
    torch.manual_seed(0)
    return SequenceRegressor(nn.LSTM(10, 32, num_layers=3), 32)


def deep_mlp() -> tuple[nn.Module, Tensor]:
    """Eight ReLU layers initialised 2.1x above He scale: the gradient grows toward the input."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(8):
        linear = nn.Linear(64, 64)
        nn.init.normal_(linear.weight, std=3.0 / 64**0.5)  # He: sqrt(2 / 64)
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 1)), torch.randn(32, 64)
