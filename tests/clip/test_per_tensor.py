"""clip_per_tensor_norm_: the seeds' global-versus-per-parameter exercises, properties, NaN."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gradguard as gg
from gradguard.clip import PerTensorNormClipper
from gradguard.errors import ConfigError
from tests.host_sync import no_host_sync


def _param(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.zeros(len(values), dtype=dtype, requires_grad=True)
    t.grad = torch.tensor(values, dtype=dtype)
    return t


def _grad(t: torch.Tensor) -> torch.Tensor:
    assert t.grad is not None
    return t.grad


def test_seed_exercise_one_huge_gradient_global_vs_per_tensor() -> None:
    # dL/dW1 = [100, 0], dL/dW2 = [0, 0.1], max_norm = 1.
    w1, w2 = _param([100.0, 0.0], torch.float64), _param([0.0, 0.1], torch.float64)
    total = gg.clip_by_global_norm_([w1, w2], 1.0)
    assert total.item() == pytest.approx(math.sqrt(100.0**2 + 0.1**2))
    coef = 1.0 / (math.sqrt(10000.01) + 1e-6)
    # Global clipping: the huge gradient squashes the small one by a factor ~100.
    torch.testing.assert_close(_grad(w1), torch.tensor([100 * coef, 0.0], dtype=torch.float64))
    torch.testing.assert_close(_grad(w2), torch.tensor([0.0, 0.1 * coef], dtype=torch.float64))
    assert _grad(w2)[1].item() == pytest.approx(0.001, rel=1e-6)

    v1, v2 = _param([100.0, 0.0], torch.float64), _param([0.0, 0.1], torch.float64)
    norms = gg.clip_per_tensor_norm_([v1, v2], 1.0)
    assert norms.tolist() == pytest.approx([100.0, 0.1])
    # Per tensor: W1 is clipped to norm 1, W2 keeps its gradient.
    assert _grad(v1).tolist() == pytest.approx([1.0, 0.0], abs=1e-7)
    assert _grad(v2).tolist() == [0.0, pytest.approx(0.1)]


def test_seed_exercise_same_direction_after_clipping_to_2() -> None:
    # g1 = [3, 4] and g2 = [6, 8], each clipped to norm 2, both become [1.2, 1.6].
    g1, g2 = _param([3.0, 4.0]), _param([6.0, 8.0])
    gg.clip_per_tensor_norm_([g1, g2], 2.0)
    for g in (g1, g2):
        torch.testing.assert_close(_grad(g), torch.tensor([1.2, 1.6]), rtol=1e-6, atol=0)
    # Globally (norm sqrt(125)), the two keep their ratio of 2 instead.
    h1, h2 = _param([3.0, 4.0]), _param([6.0, 8.0])
    gg.clip_by_global_norm_([h1, h2], 2.0)
    scale = 2.0 / math.sqrt(125.0)
    torch.testing.assert_close(_grad(h1), torch.tensor([3.0, 4.0]) * scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(_grad(h2), torch.tensor([6.0, 8.0]) * scale, rtol=1e-6, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e30])
def test_nonfinite_tensor_is_left_alone_and_the_others_are_clipped(bad: float) -> None:
    a, b = _param([bad, 1.0]), _param([30.0, 40.0])
    before = _grad(a).clone()
    gg.clip_per_tensor_norm_([a, b], 5.0)
    torch.testing.assert_close(_grad(a), before, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(_grad(b), torch.tensor([3.0, 4.0]), rtol=1e-6, atol=0)


def test_object_returns_per_tensor_coefficients_without_host_sync() -> None:
    a, b = _param([3.0, 4.0]), _param([0.3, 0.4])
    stats = gg.measure([a, b])
    with no_host_sync():
        coef = PerTensorNormClipper(1.0).clip_(stats)
    assert coef.tolist() == pytest.approx([1.0 / (5.0 + 1e-6), 1.0])


def test_mixed_dtypes_take_the_right_coefficients() -> None:
    a = _param([30.0, 40.0], torch.float64)
    b = _param([0.3, 0.4])
    c = _param([6.0, 8.0], torch.float16)
    gg.clip_per_tensor_norm_([a, b, c], 1.0)
    assert _grad(a).tolist() == pytest.approx([0.6, 0.8], rel=1e-6)
    assert _grad(b).tolist() == pytest.approx([0.3, 0.4])
    assert _grad(c).tolist() == pytest.approx([0.6, 0.8], rel=1e-3)
    assert (_grad(a).dtype, _grad(c).dtype) == (torch.float64, torch.float16)


@pytest.mark.parametrize("bad", [0.0, -2.0, math.inf, "x"])
def test_bad_max_norm_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_norm"):
        gg.clip_per_tensor_norm_([_param([1.0])], bad)  # type: ignore[arg-type]


_VALUES = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=6)


@given(st.lists(_VALUES, min_size=1, max_size=5), st.floats(1e-2, 1e2))
def test_properties_bound_direction_idempotent(values: list[list[float]], max_norm: float) -> None:
    params = [_param(v, torch.float64) for v in values]
    before = [_grad(p).clone() for p in params]
    gg.clip_per_tensor_norm_(params, max_norm)
    after = [_grad(p).clone() for p in params]
    for b, a in zip(before, after, strict=True):
        assert a.norm().item() <= max_norm * (1 + 1e-6)
        if b.norm() > 0:  # same direction: a is b times a non-negative scalar
            torch.testing.assert_close(a, b * (a.norm() / b.norm()), rtol=1e-9, atol=0)
    gg.clip_per_tensor_norm_(params, max_norm)
    # Idempotent up to eps / max_norm and the float32 rounding of norms and coefficients.
    for a, p in zip(after, params, strict=True):
        torch.testing.assert_close(_grad(p), a, rtol=2e-6 / max_norm + 3e-7, atol=1e-12)
