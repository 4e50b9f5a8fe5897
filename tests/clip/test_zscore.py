"""ZScoreClipper (ZClip on log-norms): warm-up, a hand-computed spike, NaN invariance, state."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

import gradguard as gg
from gradguard.clip import ZScoreClipper
from gradguard.errors import ConfigError
from tests.clip._steps import param_with_norm, run

EPS = 1e-6
E = math.e


def test_warm_up_collects_plain_mean_and_variance_of_log_norms() -> None:
    clipper = ZScoreClipper(warmup_steps=3)
    assert run(clipper, [1.0, E, E**2]) == [1.0, 1.0, 1.0]
    state = clipper.state_dict()
    assert state["seen"].item() == 3
    assert state["mean"].item() == pytest.approx(1.0, abs=1e-6)
    assert state["var"].item() == pytest.approx(statistics.pvariance([0.0, 1.0, 2.0]), rel=1e-6)


def test_spike_is_clipped_by_the_reciprocal_rule_and_the_ema_takes_the_clipped_value() -> None:
    clipper = ZScoreClipper(z_threshold=2.5, alpha=0.97, warmup_steps=3)
    run(clipper, [1.0, E, E**2])  # log-norms 0, 1, 2: mean 1, variance 2/3
    mean, std = 1.0, math.sqrt(2.0 / 3.0)
    x = 5.0  # a spike: norm e**5
    z = (x - mean) / (std + EPS)
    clipped = mean + 2.5**2 * std / z
    p = param_with_norm(E**x)
    coef = clipper.clip_(gg.measure([p])).item()
    assert z > 2.5
    assert coef == pytest.approx(math.exp(clipped) / (E**x + EPS), rel=1e-5)
    assert p.grad is not None
    assert p.grad.norm().item() == pytest.approx(math.exp(clipped), rel=1e-5)
    new_mean = 0.97 * mean + 0.03 * clipped
    new_var = 0.97 * std**2 + 0.03 * (clipped - new_mean) ** 2
    state = clipper.state_dict()
    assert state["mean"].item() == pytest.approx(new_mean, rel=1e-6)
    assert state["var"].item() == pytest.approx(new_var, rel=1e-5)


def test_ordinary_norm_is_not_clipped_and_updates_the_ema() -> None:
    clipper = ZScoreClipper(warmup_steps=3)
    run(clipper, [1.0, E, E**2])
    assert run(clipper, [E**1.5]) == [1.0]
    assert clipper.state_dict()["mean"].item() == pytest.approx(0.97 + 0.03 * 1.5, rel=1e-6)


def test_max_norm_is_a_ceiling_during_and_after_warm_up() -> None:
    clipper = ZScoreClipper(warmup_steps=2, max_norm=2.0)
    coefs = run(clipper, [4.0, 1.0, 8.0])
    assert coefs[0] == pytest.approx(2.0 / (4.0 + EPS))
    assert coefs[1] == 1.0
    assert coefs[2] <= 2.0 / 8.0 + 1e-7


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e30, 0.0])
def test_nonfinite_or_zero_norm_changes_nothing(bad: float) -> None:
    norms = [1.0, 1.5, 1.2, 0.9, 1.1, 30.0, 1.3]
    with_bad, without = ZScoreClipper(warmup_steps=3), ZScoreClipper(warmup_steps=3)
    run(with_bad, norms)
    run(without, norms)
    p = param_with_norm(1.0)
    p.grad[:] = bad  # type: ignore[index]
    before = p.grad.clone()  # type: ignore[union-attr]
    assert with_bad.clip_(gg.measure([p])).item() == 1.0
    torch.testing.assert_close(p.grad, before, rtol=0, atol=0, equal_nan=True)
    for key, value in with_bad.state_dict().items():
        assert torch.equal(value, without.state_dict()[key]), key
    assert run(with_bad, [40.0, 1.0]) == run(without, [40.0, 1.0])


def test_nonfinite_norm_during_warm_up_does_not_count() -> None:
    clipper = ZScoreClipper(warmup_steps=3)
    run(clipper, [1.0, math.nan, E])
    assert clipper.state_dict()["seen"].item() == 2
    assert clipper.state_dict()["mean"].item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z_threshold": 0.0}, "z_threshold"),
        ({"alpha": 1.0}, "alpha"),
        ({"alpha": 0.0}, "alpha"),
        ({"warmup_steps": 0}, "warmup_steps"),
        ({"max_norm": -1.0}, "max_norm"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ZScoreClipper(**kwargs)  # type: ignore[arg-type]
