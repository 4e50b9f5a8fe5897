"""The small models the scenarios train (CPU-sized: each run takes well under two seconds)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "CharGPT",
    "ScalarChain",
    "SequenceRegressor",
    "SmallCNN",
    "TinyTransformer",
    "deep_mlp",
    "mlp",
]


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


class SmallCNN(nn.Module):
    """Two 3x3 convolutions, 2x2 average pooling and a linear classifier, for 8x8 images."""

    def __init__(self, channels: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x))
        return out


class TinyTransformer(nn.Module):
    """One transformer encoder layer on a sequence of features, mean-pooled into one output."""

    def __init__(self, features: int = 4, width: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.encoder = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(self.embed(x)).mean(1))
        return out


class CharGPT(nn.Module):
    """A character-level GPT: token and position embeddings, causal pre-norm blocks, a head.

    Args:
        vocab: number of distinct tokens.
        context: longest sequence it reads.
        width: embedding size.
        layers: number of transformer blocks.
        heads: attention heads per block.
    """

    def __init__(
        self, vocab: int = 16, context: int = 16, width: int = 32, layers: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        block = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        mask = torch.triu(torch.full((context, context), float("-inf")), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, idx: Tensor) -> Tensor:
        """Next-token logits of shape ``(batch, time, vocab)`` for token ids ``(batch, time)``."""
        t = idx.shape[1]
        h = self.tokens(idx) + self.positions(torch.arange(t, device=idx.device))
        mask: Tensor = self.mask[:t, :t]  # type: ignore[index]
        out: Tensor = self.head(self.norm(self.blocks(h, mask=mask, is_causal=True)))
        return out
