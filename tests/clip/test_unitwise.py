"""AdaptiveUnitClipper (AGC): a hand calculation, a slow per-unit twin, exclusions, NaN."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.clip import AdaptiveUnitClipper
from gradguard.errors import ConfigError


def _linear_with(weight: list[list[float]], grad: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    layer.weight.grad = torch.tensor(grad)
    return layer


def test_hand_calculation_per_row() -> None:
    # Row 0: ||W|| = 5, ||G|| = 50 -> bound 0.1 * 5 = 0.5 -> G scaled by 0.01.
    # Row 1: ||W|| = 1, ||G|| = 0.001 < 0.1 -> untouched.
    layer = _linear_with([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]], [[30.0, 40.0, 0.0], [0.0, 0.0, 1e-3]])
    coef = AdaptiveUnitClipper(0.1).clip_(gg.measure(layer))
    assert layer.weight.grad is not None
    torch.testing.assert_close(
        layer.weight.grad, torch.tensor([[0.3, 0.4, 0.0], [0.0, 0.0, 1e-3]]), rtol=1e-6, atol=0
    )
    expected = math.sqrt(0.5**2 + 1e-6) / math.sqrt(50.0**2 + 1e-6)
    assert coef.tolist() == pytest.approx([expected], rel=1e-6)


def test_zero_weights_use_eps_as_their_size() -> None:
    layer = _linear_with([[0.0, 0.0]], [[3.0, 4.0]])
    AdaptiveUnitClipper(0.5, eps=1e-2).clip_(gg.measure(layer))
    assert layer.weight.grad is not None
    assert layer.weight.grad.norm().item() == pytest.approx(0.5 * 1e-2, rel=1e-5)


def _slow_agc(model: nn.Module, clipping: float, eps: float) -> None:
    """Per-unit loops in plain Python: the slow twin of the clipper."""
    for p in model.parameters():
        assert p.grad is not None
        w = p.detach().reshape(p.shape[0], -1) if p.ndim > 1 else p.detach().reshape(1, -1)
        g = p.grad.reshape(w.shape)
        for i in range(w.shape[0]):
            allowed = clipping * max(float(w[i].norm()), eps)
            size = float(g[i].norm())
            if size > allowed:
                g[i] *= allowed / size


def test_matches_a_slow_per_unit_twin_on_conv_and_linear_layers() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.Tanh())
    twin = copy.deepcopy(model)
    x = torch.randn(4, 2, 6, 6)
    for m in (model, twin):
        (m(x) * 30).pow(2).sum().backward()
    AdaptiveUnitClipper(0.02).clip_(gg.measure(model))
    _slow_agc(twin, 0.02, 1e-3)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_excluded_tensors_are_left_alone() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    (model(torch.randn(2, 3)) * 100).sum().backward()
    head = model[1].weight.grad.clone()  # type: ignore[union-attr]
    coef = AdaptiveUnitClipper(1e-3, exclude=["1.weight"]).clip_(gg.measure(model))
    torch.testing.assert_close(model[1].weight.grad, head, rtol=0, atol=0)
    assert dict(zip(gg.measure(model).names, coef.tolist(), strict=True))["1.weight"] == 1.0


def test_nan_in_weights_or_gradient_leaves_that_tensor_alone() -> None:
    a = _linear_with([[math.nan, 1.0]], [[5.0, 5.0]])
    b = _linear_with([[1.0, 1.0]], [[math.nan, 5.0]])
    c = _linear_with([[1.0, 0.0]], [[50.0, 0.0]])
    before = [m.weight.grad.clone() for m in (a, b)]  # type: ignore[union-attr]
    coef = AdaptiveUnitClipper(0.1).clip_(gg.measure([a.weight, b.weight, c.weight]))
    torch.testing.assert_close(a.weight.grad, before[0], rtol=0, atol=0)
    torch.testing.assert_close(b.weight.grad, before[1], rtol=0, atol=0, equal_nan=True)
    assert c.weight.grad is not None and c.weight.grad.tolist() == [[pytest.approx(0.1), 0.0]]
    assert coef.tolist() == pytest.approx([1.0, 1.0, 0.1 / 50.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"clipping": 0.0}, "clipping"), ({"eps": -1.0}, "eps"), ({"exclude": "head"}, "exclude")],
)
def test_bad_settings_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AdaptiveUnitClipper(**kwargs)  # type: ignore[arg-type]
