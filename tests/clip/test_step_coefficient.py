"""step_coefficient: one number per step from any clipper's coefficient, on the device."""

from __future__ import annotations

import math

import pytest
import torch

import gradguard as gg
from gradguard.clip import step_coefficient
from gradguard.errors import ConfigError
from tests.host_sync import no_host_sync


def _stats(*grads: list[float]) -> gg.GradStats:
    params = []
    for i, grad in enumerate(grads):
        t = torch.ones(len(grad), requires_grad=True)
        t.grad = torch.tensor(grad)
        params.append((f"p{i}", t))
    return gg.measure(params)


def test_a_global_coefficient_is_passed_through_as_a_0d_tensor() -> None:
    stats = _stats([3.0, 4.0], [12.0])
    with no_host_sync():
        coef = step_coefficient(stats, torch.tensor([0.25]))
    assert isinstance(coef, torch.Tensor) and coef.shape == () and coef.dtype == torch.float32
    assert coef.item() == 0.25


def test_per_tensor_coefficients_give_the_shrink_of_the_global_norm() -> None:
    stats = _stats([3.0, 4.0], [12.0])  # norms 5 and 12, global 13
    with no_host_sync():
        coef = step_coefficient(stats, torch.tensor([1.0, 0.5]))  # norms 5 and 6 after
    assert isinstance(coef, torch.Tensor) and coef.shape == ()
    assert coef.item() == pytest.approx(math.sqrt(25.0 + 36.0) / 13.0, rel=1e-6)
    untouched = step_coefficient(stats, torch.ones(2))
    assert isinstance(untouched, torch.Tensor) and untouched.item() == 1.0  # exactly


def test_a_zero_or_nonfinite_global_norm_reports_one() -> None:
    for grads in ([0.0], [math.nan]):
        stats = _stats([3.0, 4.0], grads)
        coef = step_coefficient(stats, torch.tensor([0.5, 1.0]))
        assert isinstance(coef, torch.Tensor) and coef.item() == (0.5 if grads == [0.0] else 1.0)
    zero = _stats([0.0], [0.0])
    coef = step_coefficient(zero, torch.tensor([0.5, 1.0]))
    assert isinstance(coef, torch.Tensor) and coef.item() == 1.0


def test_host_numbers_pass_and_a_missing_coefficient_is_nan() -> None:
    stats = _stats([1.0], [2.0])
    assert step_coefficient(stats, 0.5) == 0.5
    missing = step_coefficient(stats, None)
    assert isinstance(missing, float) and math.isnan(missing)


def test_a_coefficient_of_another_shape_teaches() -> None:
    stats = _stats([1.0], [2.0])
    with pytest.raises(ConfigError, match=r"shape \(3,\).*shape \(2,\)"):
        step_coefficient(stats, torch.ones(3))
