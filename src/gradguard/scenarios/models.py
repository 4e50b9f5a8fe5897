"""The small models the scenarios train (CPU-sized: each run takes well under two seconds)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ScalarChain", "SequenceRegressor", "deep_mlp", "mlp"]


class ScalarChain(nn.Module):
    """``y = w_n * ... * w_1 * x`` with scalar weights: the textbook picture of depth explosion."""

    def __init__(self, depth: int, weight: float) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.tensor(float(weight))) for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        for w in self.weights:
            x = w * x
        return x


class SequenceRegressor(nn.Module):
    """A recurrent layer (RNN or LSTM) and a linear head on its outputs.

    Args:
        rnn: the recurrent layer.
        hidden: its hidden size.
        last_only: apply the head to the last time step only (else to every step).
    """

    def __init__(self, rnn: nn.RNNBase, hidden: int, *, last_only: bool = False) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, 1)
        self.last_only = last_only

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        if self.last_only:
            out = out[:, -1] if self.rnn.batch_first else out[-1]
        result: Tensor = self.head(out)
        return result


def mlp(
    inputs: int, width: int, depth: int = 2, activation: type[nn.Module] = nn.Tanh
) -> nn.Sequential:
    """A plain multilayer perceptron with ``depth`` hidden layers and one output."""
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), activation()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, 1))


def deep_mlp(inputs: int, width: int, depth: int, gain: float) -> nn.Sequential:
    """A deep ReLU MLP whose hidden weights are He-initialised times ``gain / sqrt(2)``.

    He initialisation keeps activations at a constant scale through ReLU layers; a gain above
    ``sqrt(2)`` makes every layer amplify the signal (and the gradient) by about
    ``gain / sqrt(2)``.
    """
    model = mlp(inputs, width, depth, nn.ReLU)
    with torch.no_grad():
        for layer in list(model)[2:-1]:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                layer.weight.mul_(gain / math.sqrt(2.0))
    return model
