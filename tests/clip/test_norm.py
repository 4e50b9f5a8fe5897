"""clip_by_global_norm_: the seeds' numbers, equality with torch, NaN safety, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError
from tests.host_sync import no_host_sync


def _param(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.zeros(len(values), dtype=dtype, requires_grad=True)
    t.grad = torch.tensor(values, dtype=dtype)
    return t


def test_seed_example_16_12_minus8_clipped_to_5() -> None:
    p = _param([16.0, 12.0, -8.0])
    total = gg.clip_by_global_norm_([p], 5.0)
    assert total.item() == pytest.approx(math.sqrt(464.0))
    torch.testing.assert_close(p.grad, torch.tensor([3.714, 2.786, -1.857]), atol=1e-3, rtol=0)
    assert p.grad is not None and p.grad.norm().item() == pytest.approx(5.0, abs=1e-4)


def test_below_bound_is_untouched() -> None:
    p = _param([0.3, 0.4])
    gg.clip_by_global_norm_([p], 1.0)
    assert p.grad is not None and p.grad.tolist() == pytest.approx([0.3, 0.4])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e30])
def test_nonfinite_norm_leaves_gradients_exactly_as_they_were(bad: float) -> None:
    a, b = _param([1.0, bad]), _param([2.0, 3.0])
    before = [a.grad.clone(), b.grad.clone()]  # type: ignore[union-attr]
    total = gg.clip_by_global_norm_([a, b], 1.0)
    assert not math.isfinite(total.item())
    torch.testing.assert_close(a.grad, before[0], equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(b.grad, before[1], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "x"])
def test_bad_max_norm_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_norm"):
        gg.clip_by_global_norm_([_param([1.0])], bad)  # type: ignore[arg-type]


def test_reuses_stats_and_makes_no_host_sync() -> None:
    p = _param([16.0, 12.0, -8.0])
    stats = gg.measure([p])
    with no_host_sync():
        total = gg.clip_by_global_norm_(None, 5.0, stats=stats)
    assert total is stats.total_norm
    assert p.grad is not None and p.grad.norm().item() == pytest.approx(5.0, abs=1e-4)


_SHAPES = st.lists(st.lists(st.integers(1, 5), min_size=0, max_size=3), min_size=1, max_size=6)


@given(shapes=_SHAPES, max_norm=st.floats(1e-3, 1e3), scale=st.floats(1e-3, 1e3))
def test_bit_identical_to_torch_clip_grad_norm(
    shapes: list[list[int]], max_norm: float, scale: float
) -> None:
    ours = [torch.zeros(s, requires_grad=True) for s in shapes]
    theirs = [torch.zeros(s, requires_grad=True) for s in shapes]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn(a.shape) * scale
        b.grad = a.grad.clone()
    total = gg.clip_by_global_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=True)
    torch.testing.assert_close(total, expected, rtol=0, atol=0)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


@given(max_norm=st.floats(1e-2, 10.0), scale=st.floats(1e-2, 1e2), seed=st.integers(0, 2**16))
def test_properties_bound_direction_dtype_idempotent(
    max_norm: float, scale: float, seed: int
) -> None:
    torch.manual_seed(seed)  # per example, so that a failure replays
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(torch.float64)
    (model(torch.randn(5, 4, dtype=torch.float64)).sum() * scale).backward()
    before = torch.cat([p.grad.flatten() for p in model.parameters()])  # type: ignore[union-attr]
    gg.clip_by_global_norm_(model, max_norm)
    after = torch.cat([p.grad.flatten() for p in model.parameters()])  # type: ignore[union-attr]
    assert after.dtype == torch.float64
    assert after.norm().item() <= max_norm * (1 + 1e-5)
    cos = torch.nn.functional.cosine_similarity(before, after, dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-9)
    gg.clip_by_global_norm_(model, max_norm)
    again = torch.cat([p.grad.flatten() for p in model.parameters()])  # type: ignore[union-attr]
    # Idempotent up to the eps in the denominator (relative change <= eps / max_norm) and the
    # float32 rounding of the coefficient.
    torch.testing.assert_close(again, after, rtol=2e-6 / max_norm + 1e-6, atol=1e-12)
