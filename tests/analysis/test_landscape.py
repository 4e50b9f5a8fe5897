"""landscape_scan, find_cliffs and gradient_vs_cliff: the seeds' RNN cliff, exact restoration."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from gradguard.analysis import (
    find_cliffs,
    gradient_vs_cliff,
    landscape_scan,
    restored,
    spectral_radius,
)
from gradguard.errors import ConfigError, UnsupportedModelError


def w_hh(w: float) -> Tensor:
    """The seeds' two-unit recurrent matrix parameterised by the weight scale w."""
    return torch.tensor([[w, 0.1], [0.1, 0.9 * w]], dtype=torch.float64)


class TwoUnitRNN(nn.Module):
    """h_t = tanh(W(w) h_{t-1} + 0.1 x_t), h_0 = 0; output h_T (the seeds' example)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, 2, bias=False).double()
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(0.1 * torch.eye(2))
            self.rnn.weight_hh_l0.copy_(w_hh(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.rnn(x)[0][-1]


def set_scale(model: nn.Module, w: float) -> None:
    assert isinstance(model, TwoUnitRNN)
    with torch.no_grad():  # landscape_scan calls it under no_grad already
        model.rnn.weight_hh_l0.copy_(w_hh(w))


def _crossing() -> float:
    """The w at which rho(W(w)) = 1: 1.9 w + sqrt(0.01 w^2 + 0.04) = 2, by bisection."""
    lo, hi = 0.5, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if spectral_radius(w_hh(mid)) < 1 else (lo, mid)
    return lo


GRID = [round(0.8 + 0.01 * i, 2) for i in range(41)]  # w from 0.80 to 1.20, step 0.01


def squared_distance(h: Tensor, target: Tensor) -> Tensor:
    return ((h - target) ** 2).sum(-1).mean()


def test_the_cliff_sits_where_the_spectral_radius_crosses_one() -> None:
    # The seeds' RNN and inputs (seed 42, x ~ 0.1·randn), a sequence of T = 100 steps, target 0.
    # Below rho = 1 the state stays at the noise floor (loss ~1e-4); above it the origin is
    # unstable and h_T moves to the nonzero fixed point of tanh (loss ~0.1). On a finite
    # sequence the wall has width ~ ln(1/0.01) / T in rho around 1.
    torch.manual_seed(42)
    steps = 100
    x = 0.1 * torch.randn(steps, 1, 2, dtype=torch.float64)
    target = torch.zeros(1, 2, dtype=torch.float64)
    model = TwoUnitRNN()
    scan = landscape_scan(model, squared_distance, (x, target), set_scale, GRID, factor=5)
    assert scan.direction == "callable"
    crossing = _crossing()
    assert crossing == pytest.approx(0.9365, abs=1e-4)
    assert len(scan.cliffs) == 1, str(scan)
    cliff = scan.cliffs[0]
    assert cliff.alpha_before <= crossing <= cliff.alpha_after
    assert spectral_radius(w_hh(cliff.alpha_before)) > 1 - math.log(100) / steps
    assert spectral_radius(w_hh(cliff.alpha_after)) < 1 + math.log(100) / steps
    assert cliff.ratio > 100 and cliff.steps == 3
    assert torch.equal(model.rnn.weight_hh_l0, w_hh(0.5))  # restored


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_averaged_over_sequences_the_steepest_step_is_at_the_crossing(seed: int) -> None:
    torch.manual_seed(seed)
    x = 0.1 * torch.randn(100, 64, 2, dtype=torch.float64)
    scan = landscape_scan(TwoUnitRNN(), squared_distance, (x, torch.zeros(2)), set_scale, GRID)
    logs = [math.log(v) for v in scan.losses]
    steepest = max(range(40), key=lambda i: logs[i + 1] - logs[i])
    assert GRID[steepest] - 0.01 <= _crossing() <= GRID[steepest + 1]


def test_scale_direction_multiplies_the_weights() -> None:
    torch.manual_seed(42)
    x = 0.1 * torch.randn(100, 1, 2, dtype=torch.float64)
    model = TwoUnitRNN()
    set_scale(model, 1.0)
    scan = landscape_scan(
        model,
        squared_distance,
        (x, torch.zeros(2)),
        "scale",
        [0.85 + 0.01 * i for i in range(21)],
        params=["rnn.weight_hh_l0"],
        factor=5,
    )
    assert scan.params == ("rnn.weight_hh_l0",)
    (cliff,) = scan.cliffs
    # rho(alpha * W(1)) = alpha * rho(W(1)) crosses 1 at alpha = 1 / rho(W(1)) ≈ 0.9418.
    assert cliff.alpha_before <= 1 / spectral_radius(w_hh(1.0)) <= cliff.alpha_after
    assert scan.base_loss == pytest.approx(scan.losses[15])


class Theta(nn.Module):
    """One scalar parameter; the loss (θ-2)² + 1000·sigmoid(200(θ-1)) has a cliff at θ = 1."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, _x: object) -> Tensor:
        return self.theta


def cliff_loss(theta: Tensor, _y: object) -> Tensor:
    return (theta - 2) ** 2 + 1000 * torch.sigmoid(200 * (theta - 1))


def test_gradient_step_falls_off_the_cliff_and_clipping_keeps_it_short() -> None:
    model = Theta()
    check = gradient_vs_cliff(model, cliff_loss, (None, None), lr=0.5)
    # ∇L(0) = -4, so θ - α∇L = 4α reaches the cliff at α = 0.25.
    assert check.grad_norm == pytest.approx(4.0)
    assert check.falls_off
    assert check.cliff is not None
    assert (check.cliff.alpha_before, check.cliff.alpha_after) == pytest.approx((0.24, 0.25))
    assert check.safe_lr == pytest.approx(0.24)
    assert check.safe_clip == pytest.approx(0.24 * 4.0 / 0.5)
    assert check.step_loss == pytest.approx(1000.0, rel=1e-3)
    assert "falls off" in str(check)
    small = gradient_vs_cliff(model, cliff_loss, (None, None), lr=0.1)
    assert not small.falls_off and small.cliff is None and small.safe_clip is None
    assert small.step_loss == pytest.approx((0.4 - 2) ** 2, rel=1e-6)
    assert model.theta.item() == 0.0 and model.theta.grad is None
    data = json.loads(json.dumps(check.to_dict(), allow_nan=False))
    assert data["kind"] == "cliff_check" and data["scan"]["alphas"][-1] == 0.5


def test_find_cliffs_rules() -> None:
    cliffs = find_cliffs([0, 1, 2, 3, 4], [1.0, 1.5, 20.0, math.inf, math.nan], factor=10)
    # 1.5 -> 20 -> inf climbs twice in a row: one cliff over two steps.
    assert [(c.index, c.steps, c.ratio) for c in cliffs] == [(1, 2, math.inf)]
    down = find_cliffs([0, 1, 2, 3], [100.0, 5.0, 200.0, 210.0])
    assert [(c.index, c.steps, c.ratio) for c in down] == [(0, 1, 20.0), (1, 1, 40.0)]
    assert find_cliffs([0, 1], [0.0, 0.0]) == ()
    assert find_cliffs([0, 1], [-5.0, 100.0])[0].ratio == 20.0
    with pytest.raises(ConfigError):
        find_cliffs([0, 1], [1.0])
    with pytest.raises(ConfigError):
        find_cliffs([0, 1], [1.0, 2.0], factor=1.0)


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), scale=st.floats(-3, 3))
def test_weights_and_buffers_are_restored_bitwise(seed: int, scale: float) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randn(8, 3), torch.randn(8, 1))
    direction = {"0.weight": scale * torch.randn(4, 3), "3.bias": torch.ones(1)}
    for how in ("gradient", "scale", direction):
        landscape_scan(model, nn.functional.mse_loss, batch, how, [-1.0, 0.0, 0.5], train=True)  # type: ignore[arg-type]
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_restored_even_after_an_error() -> None:
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()

    def scale_then_fail() -> None:
        with restored(model), torch.no_grad():
            model.weight.mul_(3)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        scale_then_fail()
    assert torch.equal(model.weight, before)


def test_progress_and_errors() -> None:
    model = Theta()
    calls: list[tuple[int, int]] = []
    landscape_scan(
        model,
        cliff_loss,
        (None, None),
        alphas=[0.0, 0.1, 0.2],
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(UnsupportedModelError):
        landscape_scan(lambda x: x, cliff_loss, (None, None))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pair"):
        landscape_scan(model, cliff_loss, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="increasing"):
        landscape_scan(model, cliff_loss, (None, None), alphas=[0.2, 0.1])
    with pytest.raises(ConfigError, match="explicit alphas"):
        landscape_scan(model, cliff_loss, (None, None), set_scale)
    with pytest.raises(ConfigError, match="'nope'"):
        landscape_scan(model, cliff_loss, (None, None), params=["nope"])
    with pytest.raises(ConfigError, match="shape"):
        landscape_scan(model, cliff_loss, (None, None), {"theta": torch.ones(2)})
    with pytest.raises(ConfigError):
        landscape_scan(model, cliff_loss, (None, None), "sideways")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        gradient_vs_cliff(model, cliff_loss, (None, None), lr=0.0)
