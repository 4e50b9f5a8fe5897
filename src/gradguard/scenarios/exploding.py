"""Runs that explode when trained without protection, each for a different textbook reason."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from gradguard.scenarios.base import Batch, Scenario, TrainingRun, generator, mse
from gradguard.scenarios.models import ScalarChain, SequenceRegressor, deep_mlp, mlp

__all__ = ["EXPLODING"]


def _rnn_x3(seed: int) -> TrainingRun:
    # The textbook demo: an RNN whose recurrent weights are scaled x3 (spectral radius ~1.7),
    # length-100 sequences, SGD at lr 0.01. The loss sums the error over all 100 time steps,
    # so every step back-propagates through up to 100 multiplications by W_hh.
    rnn = nn.RNN(10, 50)
    with torch.no_grad():
        rnn.get_parameter("weight_hh_l0").mul_(3.0)
    model = SequenceRegressor(rnn, 50)

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(100, 1, 10, generator=g)
        return x, 0.1 * torch.cumsum(x[..., :1], dim=0)

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        x, y = batch
        out: Tensor = model(x)
        return (out - y).pow(2).sum(0).mean()

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.01), batch, loss)


def _chain5(seed: int) -> TrainingRun:
    # Five scalar weights of 2.0 on input 1.0: output 32, every weight's gradient 16 times the
    # output error. The target 31 makes dL/d(output) = 1, as in the textbook; SGD at lr 0.1.
    model = ScalarChain(5, 2.0)
    x, y = torch.ones(1, 1), torch.full((1, 1), 31.0)

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        inputs, targets = batch
        out: Tensor = model(inputs)
        return 0.5 * (out - targets).pow(2).mean()

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda _: (x, y), loss)


def _lstm_high_lr(seed: int) -> TrainingRun:
    model = SequenceRegressor(nn.LSTM(4, 64, 2, batch_first=True), 64, last_only=True)

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(16, 30, 4, generator=g)
        return x, 0.5 * x[:, :5, 0].sum(1, keepdim=True)

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, mse)


def _deep_mlp_gain(seed: int) -> TrainingRun:
    model = deep_mlp(8, 64, 16, gain=1.8)

    def batch(step: int) -> Batch:
        x = torch.randn(32, 8, generator=generator(seed, step))
        return x, torch.sin(x[:, :1])

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=1e-3), batch, mse)


CORRUPT_STEP = 150
"""The step at which :func:`_corrupted_batch` feeds its one corrupted batch."""


def _corrupted_batch(seed: int, corrupt_step: int | None = CORRUPT_STEP) -> TrainingRun:
    model = mlp(8, 64)
    w = torch.randn(8, 1, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(32, 8, generator=g)
        y = torch.tanh(x @ w) + 0.1 * torch.randn(32, 1, generator=g)
        if step == corrupt_step:  # a unit mix-up in the data pipeline: values 1000x too large
            return 1e3 * x, 1e3 * y
        return x, y

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.05), batch, mse)


def _feature_drift(seed: int) -> TrainingRun:
    # The inputs' scale creeps up 0.4 % per step (an unnormalised, accumulating feature). The
    # loss curvature grows with the scale squared until the fixed learning rate is past its
    # stability limit; from there the gradient grows geometrically for tens of steps.
    model = nn.Linear(16, 1)
    w = torch.randn(16, 1, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(32, 16, generator=g)
        y = 0.3 * (x @ w) + 0.1 * torch.randn(32, 1, generator=g)
        return x * 1.004**step, y

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.05), batch, mse)


def _lr_warmup_overshoot(seed: int) -> TrainingRun:
    # A linear warm-up whose peak (1.0) is far above the stability limit (~0.6 here): the
    # learning rate crosses the limit around step 120 and the oscillation then grows.
    model = nn.Linear(16, 1)
    w = torch.randn(16, 1, generator=generator(seed, -1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 200))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(32, 16, generator=g)
        return x, 0.3 * (x @ w) + 0.1 * torch.randn(32, 1, generator=g)

    return TrainingRun(model, optimizer, batch, mse, schedule)


def _momentum_overshoot(seed: int) -> TrainingRun:
    # Heavy-ball momentum 0.99 with a learning rate a little too high for it: the oscillation
    # along the sharpest direction is amplified a little every step, so the gradient norm grows
    # for tens of steps before the loss explodes.
    model = mlp(8, 64)
    w = torch.randn(8, 1, generator=generator(seed, -1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.99)

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(32, 8, generator=g)
        return x, torch.tanh(x @ w) + 0.1 * torch.randn(32, 1, generator=g)

    return TrainingRun(model, optimizer, batch, mse)


EXPLODING = [
    Scenario(
        "rnn_x3",
        "Textbook RNN (hidden 50) with recurrent weights scaled x3, length-100 sequences, SGD "
        "lr 0.01: back-propagation through time multiplies the gradient by W_hh 100 times.",
        explodes=True,
        steps=40,
        kind="sudden",
        builder=_rnn_x3,
    ),
    Scenario(
        "chain5_w2",
        "Five-layer scalar chain with every weight 2.0 (gradients 16x the output error), SGD "
        "lr 0.1: the first update overshoots and the product of weights runs away.",
        explodes=True,
        steps=20,
        kind="sudden",
        builder=_chain5,
    ),
    Scenario(
        "lstm_high_lr",
        "Two-layer LSTM regressor trained with SGD at lr 1.0, far above what it tolerates.",
        explodes=True,
        steps=30,
        kind="sudden",
        builder=_lstm_high_lr,
    ),
    Scenario(
        "deep_mlp_gain",
        "16-layer ReLU MLP (width 64) initialised at 1.27x the He scale per layer (gain 1.8): "
        "activations and gradients grow ~40x through depth, and SGD at lr 1e-3 diverges at once.",
        explodes=True,
        steps=30,
        kind="sudden",
        builder=_deep_mlp_gain,
    ),
    Scenario(
        "corrupted_batch",
        f"Healthy tanh MLP until step {CORRUPT_STEP}, when one batch arrives 1000x too large "
        "(a unit mix-up): one huge update wrecks the weights.",
        explodes=True,
        steps=200,
        kind="sudden",
        builder=_corrupted_batch,
        fault_free=functools.partial(_corrupted_batch, corrupt_step=None),
    ),
    Scenario(
        "feature_drift",
        "Linear regression whose input scale creeps up 0.4 % per step at a fixed SGD learning "
        "rate: past the stability limit the gradient grows geometrically for tens of steps.",
        explodes=True,
        steps=400,
        kind="gradual",
        builder=_feature_drift,
    ),
    Scenario(
        "lr_warmup_overshoot",
        "Linear model with a learning-rate warm-up to a peak above the stability limit: the "
        "oscillation starts small and grows for tens of steps before the loss blows up.",
        explodes=True,
        steps=220,
        kind="gradual",
        builder=_lr_warmup_overshoot,
    ),
    Scenario(
        "momentum_overshoot",
        "Tanh MLP with SGD momentum 0.99 at lr 0.1: each step amplifies the oscillation a "
        "little, and the gradient norm grows for tens of steps before the loss explodes.",
        explodes=True,
        steps=150,
        kind="gradual",
        builder=_momentum_overshoot,
    ),
]
"""Scenarios whose unguarded run diverges."""
