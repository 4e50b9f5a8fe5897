"""clip_by_global_norm_ against torch.nn.utils.clip_grad_norm_ on many shapes, dtypes and models."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import gradguard as gg

_SHAPES = st.lists(st.lists(st.integers(1, 6), min_size=0, max_size=3), min_size=1, max_size=7)

# Relative tolerance per dtype. float32 and float64: torch and gradguard run the same kernels in
# the same precision (float64 norms and coefficient for float64 gradients), so the results are
# bit-identical. Half precision: torch rounds the norms to half, while gradguard accumulates and
# keeps them in float32 (a documented difference).
_RTOL = {torch.float32: 0.0, torch.float64: 0.0, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _pairs(shapes: list[list[int]], dtype: torch.dtype, scale: float) -> tuple[list, list]:
    ours, theirs = [], []
    for shape in shapes:
        grad = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype)
        a = torch.zeros(shape, dtype=dtype, requires_grad=True)
        b = torch.zeros(shape, dtype=dtype, requires_grad=True)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.append(a)
        theirs.append(b)
    return ours, theirs


@given(
    shapes=_SHAPES,
    dtype=st.sampled_from(list(_RTOL)),
    max_norm=st.floats(1e-2, 1e2),
    scale=st.floats(1e-2, 20.0),
    seed=st.integers(0, 2**16),
)
def test_matches_clip_grad_norm_for_every_dtype(
    shapes: list[list[int]], dtype: torch.dtype, max_norm: float, scale: float, seed: int
) -> None:
    torch.manual_seed(seed)  # per example, so that a failure replays
    ours, theirs = _pairs(shapes, dtype, scale)
    total = gg.clip_by_global_norm_(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=True)
    rtol = _RTOL[dtype]
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert total.dtype == want_dtype
    torch.testing.assert_close(total, expected.to(want_dtype), rtol=max(rtol, 1e-7), atol=0)
    for a, b in zip(ours, theirs, strict=True):
        assert a.grad is not None and a.grad.dtype == dtype
        torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=rtol * 1e-3)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(7, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))


def _conv() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))


class _Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True)
        self.head = nn.Linear(8, 11)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(out)


_MODELS = {
    "mlp": (_mlp, lambda: torch.randn(5, 7)),
    "conv": (_conv, lambda: torch.randn(3, 2, 5, 5)),
    "lstm": (_Recurrent, lambda: torch.randint(0, 11, (2, 9))),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", sorted(_MODELS))
@pytest.mark.parametrize("max_norm", [0.05, 1.0, 1e3])
def test_matches_clip_grad_norm_on_real_models(
    kind: str, dtype: torch.dtype, max_norm: float
) -> None:
    build, make_input = _MODELS[kind]
    torch.manual_seed(3)
    model = build().to(dtype)
    twin = copy.deepcopy(model)
    x = make_input()
    x = x.to(dtype) if x.is_floating_point() else x
    for m in (model, twin):
        m(x).pow(2).sum().backward()
    total = gg.clip_by_global_norm_(model, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), max_norm, foreach=True)
    rtol = _RTOL[dtype]
    want_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert total.dtype == want_dtype
    torch.testing.assert_close(total, expected.to(want_dtype), rtol=max(rtol, 1e-7), atol=0)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=0)
