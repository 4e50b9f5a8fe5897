"""Runs that train fine without protection, including deliberately noisy ones."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from gradguard.scenarios.base import Batch, Scenario, TrainingRun, generator, mse
from gradguard.scenarios.models import SequenceRegressor, mlp

__all__ = ["HEALTHY"]


def _mlp_adam(seed: int) -> TrainingRun:
    model = mlp(8, 64)

    def batch(step: int) -> Batch:
        x = torch.randn(32, 8, generator=generator(seed, step))
        return x, torch.sin(2.0 * x[:, :1]) * torch.cos(x[:, 1:2])

    return TrainingRun(model, torch.optim.Adam(model.parameters(), lr=1e-3), batch, mse)


def _rnn_orthogonal(seed: int) -> TrainingRun:
    rnn = nn.RNN(8, 64, batch_first=True)
    with torch.no_grad():
        nn.init.orthogonal_(rnn.get_parameter("weight_hh_l0"))
    model = SequenceRegressor(rnn, 64)

    def batch(step: int) -> Batch:
        x = torch.randn(16, 50, 8, generator=generator(seed, step))
        return x, torch.tanh(0.3 * torch.cumsum(x[..., :1], dim=1))

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.05), batch, mse)


def _lstm_adam(seed: int) -> TrainingRun:
    model = SequenceRegressor(nn.LSTM(4, 32, 2, batch_first=True), 32, last_only=True)

    def batch(step: int) -> Batch:
        x = torch.randn(16, 30, 4, generator=generator(seed, step))
        return x, 0.5 * x[:, :5, 0].sum(1, keepdim=True)

    return TrainingRun(model, torch.optim.Adam(model.parameters(), lr=3e-3), batch, mse)


def _noisy_tiny_batches(seed: int) -> TrainingRun:
    # Two samples per batch and heavy-tailed (Student-t, 3 dof) label noise: the gradient norm
    # jumps 3x above its recent median every twenty steps or so, sometimes 5-10x. Nothing is
    # wrong with this run.
    model = mlp(8, 32)
    w = torch.randn(8, 1, generator=generator(seed, -1))
    student = torch.distributions.StudentT(3.0)

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(2, 8, generator=g)
        # StudentT samples through the global RNG: draw them under a fixed seed per step.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + step)
            noise = 0.3 * student.sample((2, 1))
        return x, torch.tanh(x @ w) + noise

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.02), batch, mse)


def _sum_loss_large_norms(seed: int) -> TrainingRun:
    # A summed (not averaged) loss over 256 samples: gradient norms in the hundreds, all healthy.
    model = mlp(16, 128, 2, nn.ReLU)
    w = torch.randn(16, 1, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(256, 16, generator=g)
        return x, torch.relu(x @ w) + 0.1 * torch.randn(256, 1, generator=g)

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        return F.mse_loss(model(x), y, reduction="sum")

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=2e-5), batch, loss)


class _TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 32)
        self.encoder = nn.TransformerEncoderLayer(
            32, 4, dim_feedforward=64, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(32, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.encoder(self.embed(x)).mean(1))
        return out


def _transformer_warmup(seed: int) -> TrainingRun:
    # Warm-up then cosine decay: the gradient norm rises during warm-up, as in real pre-training.
    model = _TinyTransformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warmup = 200, 30

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def batch(step: int) -> Batch:
        x = torch.randn(16, 12, 4, generator=generator(seed, step))
        return x, x[..., 0].max(1, keepdim=True).values

    return TrainingRun(model, optimizer, batch, mse, schedule)


HEALTHY = [
    Scenario(
        "mlp_adam",
        "Tanh MLP on a smooth regression with Adam at lr 1e-3.",
        explodes=False,
        steps=300,
        kind="healthy",
        builder=_mlp_adam,
    ),
    Scenario(
        "rnn_orthogonal",
        "RNN (hidden 64) with orthogonal recurrent weights on length-50 sequences, SGD lr 0.05.",
        explodes=False,
        steps=200,
        kind="healthy",
        builder=_rnn_orthogonal,
    ),
    Scenario(
        "lstm_adam",
        "Two-layer LSTM regressor with Adam at lr 3e-3.",
        explodes=False,
        steps=200,
        kind="healthy",
        builder=_lstm_adam,
    ),
    Scenario(
        "noisy_tiny_batches",
        "MLP trained on batches of two samples with heavy-tailed label noise: natural 3-5x "
        "gradient-norm spikes every twenty steps or so, and nothing wrong.",
        explodes=False,
        steps=500,
        kind="healthy",
        builder=_noisy_tiny_batches,
    ),
    Scenario(
        "sum_loss_large_norms",
        "ReLU MLP with a summed loss over 256 samples: healthy gradient norms in the hundreds.",
        explodes=False,
        steps=200,
        kind="healthy",
        builder=_sum_loss_large_norms,
    ),
    Scenario(
        "transformer_warmup",
        "One-layer transformer encoder with AdamW, 30 warm-up steps then cosine decay.",
        explodes=False,
        steps=200,
        kind="healthy",
        builder=_transformer_warmup,
    ),
]
"""Scenarios whose unguarded run trains without diverging."""
