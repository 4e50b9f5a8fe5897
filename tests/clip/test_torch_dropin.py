"""gg.clip_grad_norm_ / gg.clip_grad_value_ as drop-ins for PyTorch's, checked three ways.

1. PyTorch's own tests (``test_clip_grad_norm``, ``test_clip_grad_value`` and
   ``test_clip_grad_norm_error_if_nonfinite`` of ``test/test_nn.py``), ported in our words with
   the same cases and expected numbers. Where gradguard differs on purpose, a comment says so
   and the test asserts gradguard's behaviour instead.
2. Bit-for-bit equality with ``torch.nn.utils`` on random finite gradients (hypothesis).
3. The float64 cases the old float32 norm got wrong.
"""

from __future__ import annotations

import inspect
import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError, NonFiniteError

INF, NAN = math.inf, math.nan
NORM_TYPES = [0.5, 1.5, 2, 4, "inf"]
FOREACH = [None, False, True]


def test_signatures_are_torchs() -> None:
    for ours, theirs in (
        (gg.clip_grad_norm_, torch.nn.utils.clip_grad_norm_),
        (gg.clip_grad_value_, torch.nn.utils.clip_grad_value_),
    ):
        mine = inspect.signature(ours).parameters
        torchs = inspect.signature(theirs).parameters
        assert list(mine) == list(torchs)
        assert [p.default for p in mine.values()] == [p.default for p in torchs.values()]
        assert [p.kind for p in mine.values()] == [p.kind for p in torchs.values()]


# ------------------------------------------------------------ ported: test_clip_grad_norm


def _norm_by_hand(module: nn.Module, norm_type: float | str) -> torch.Tensor:
    p = float(norm_type)
    grads = [param.grad for param in module.parameters()]
    assert all(g is not None for g in grads)
    if p == INF:
        return torch.stack([g.abs().max() for g in grads if g is not None]).max()
    total = sum(g.abs().pow(p).sum() for g in grads if g is not None)
    return torch.as_tensor(total).pow(1.0 / p)


def _uniform_scale(module: nn.Module, grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The factor every gradient was multiplied by; asserts it is the same for all elements."""
    ratios = torch.cat(
        [p.grad.div(g).view(-1) for p, g in zip(module.parameters(), grads, strict=True)]  # type: ignore[union-attr]
    )
    torch.testing.assert_close(ratios.std(), torch.tensor(0.0), atol=1e-6, rtol=0)
    return ratios[0]


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_scales_large_gradients_to_max_norm(
    norm_type: float | str, foreach: bool | None
) -> None:
    torch.manual_seed(0)
    layer, max_norm = nn.Linear(10, 10), 2.0
    grads = (torch.arange(1.0, 101).view(10, 10), torch.ones(10).div(1000))
    for p, g in zip(layer.parameters(), grads, strict=True):
        p.grad = g.clone().view_as(p)
    before = _norm_by_hand(layer, norm_type)
    returned = gg.clip_grad_norm_(
        layer.parameters(), max_norm, norm_type=norm_type, foreach=foreach
    )
    after = _norm_by_hand(layer, norm_type)
    torch.testing.assert_close(returned, before)
    torch.testing.assert_close(after, torch.tensor(max_norm))
    assert after <= before
    _uniform_scale(layer, grads)


@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_leaves_small_gradients_unchanged(
    norm_type: float | str, foreach: bool | None
) -> None:
    torch.manual_seed(1)
    layer, max_norm = nn.Linear(10, 10), 2.0
    grads = (torch.rand(10, 10).div(10000), torch.ones(10).div(500))
    for p, g in zip(layer.parameters(), grads, strict=True):
        p.grad = g.clone().view_as(p)
    before = _norm_by_hand(layer, norm_type)
    returned = gg.clip_grad_norm_(
        layer.parameters(), max_norm, norm_type=norm_type, foreach=foreach
    )
    after = _norm_by_hand(layer, norm_type)
    torch.testing.assert_close(returned, before)
    torch.testing.assert_close(after, before)
    assert after <= max_norm
    assert _uniform_scale(layer, grads) == 1.0


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_grad_norm_takes_a_single_tensor_as_a_list_of_one(norm_type: float | str) -> None:
    torch.manual_seed(2)
    p1, p2 = torch.randn(10, 10), torch.randn(10, 10)
    g = torch.arange(1.0, 101).view(10, 10)
    p1.grad, p2.grad = g.clone(), g.clone()
    gg.clip_grad_norm_(p1, 2.0, norm_type=norm_type)
    gg.clip_grad_norm_([p2], 2.0, norm_type=norm_type)
    assert torch.equal(p1.grad, p2.grad)


# ----------------------------------------------------------- ported: test_clip_grad_value


@pytest.mark.parametrize("foreach", FOREACH)
def test_clip_grad_value_bounds_every_element(foreach: bool | None) -> None:
    layer, clip_value = nn.Linear(10, 10), 2.5
    grad_w, grad_b = torch.arange(-50.0, 50).view(10, 10).div_(5), torch.ones(10).mul_(2)
    for grad_list in ([grad_w, grad_b], [grad_w, None]):
        for p, g in zip(layer.parameters(), grad_list, strict=True):
            p.grad = g.clone().view_as(p) if g is not None else None
        gg.clip_grad_value_(layer.parameters(), clip_value, foreach=foreach)
        for p in layer.parameters():
            if p.grad is not None:
                assert p.grad.max() <= clip_value
                assert p.grad.min() >= -clip_value
    # Our addition: the numbers are PyTorch's exactly.
    expected = torch.arange(-50.0, 50).view(10, 10).div_(5).clamp(-clip_value, clip_value)
    assert layer.weight.grad is not None and torch.equal(layer.weight.grad, expected)


def test_clip_grad_value_takes_a_single_tensor_as_a_list_of_one() -> None:
    torch.manual_seed(3)
    p1, p2 = torch.randn(10, 10), torch.randn(10, 10)
    g = torch.arange(-50.0, 50).view(10, 10).div_(5)
    p1.grad, p2.grad = g.clone(), g.clone()
    gg.clip_grad_value_(p1, 2.5)
    gg.clip_grad_value_([p2], 2.5)
    assert torch.equal(p1.grad, p2.grad)


# ------------------------------------------- ported: test_clip_grad_norm_error_if_nonfinite

_POS = [0.1, 1, 2, 3.5, INF]
_NEG = [-0.1, -1, -2, -3.5]
_EXCEPT_0 = _POS + _NEG
_ALL = [*_EXCEPT_0, 0]

# (grad_only_one_elem, prefix_finite_grad_param, scalars, norms giving a non-finite total,
#  norms giving a finite one), PyTorch's table.
_NONFINITE_CASES = [
    (False, False, [INF, -INF], _EXCEPT_0, [0]),
    (False, True, [INF, -INF], _POS, [*_NEG, 0]),
    (True, False, [INF, -INF], _POS, [*_NEG, 0]),
    (True, True, [INF, -INF], _POS, [*_NEG, 0]),
    (False, False, [NAN], _EXCEPT_0, [0]),
    (False, True, [NAN], _EXCEPT_0, [0]),
    (True, False, [NAN], _EXCEPT_0, [0]),
    (True, True, [NAN], _EXCEPT_0, [0]),
    (False, False, [2e22, -2e22], [], _ALL),
    (False, True, [2e22, -2e22], [], _ALL),
    (True, False, [2e22, -2e22], [], _ALL),
    (True, True, [2e22, -2e22], [], _ALL),
    (False, False, [2e200, -2e200], [3.5, 2, -2, -3.5], [INF, 1, 0.1, 0, -1, -0.1]),
    (False, True, [2e200, -2e200], [3.5, 2], [*_NEG, INF, 1, 0.1, 0]),
    (True, False, [2e200, -2e200], [3.5, 2], [*_NEG, INF, 1, 0.1, 0]),
    (True, True, [2e200, -2e200], [3.5, 2], [*_NEG, INF, 1, 0.1, 0]),
]


def _float64_params(scalar: float, one_elem: bool, prefix: bool) -> list[torch.Tensor]:
    param = torch.ones(10, dtype=torch.float64, requires_grad=True)
    (param[1] if one_elem else param).mul(scalar).sum().backward()
    if not prefix:
        return [param]
    first = torch.ones(1, dtype=torch.float64, requires_grad=True)
    first.mul(1).sum().backward()
    return [first, param]


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]  # type: ignore[union-attr]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(
        torch.equal(x, y) or torch.allclose(x, y, equal_nan=True) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("case", range(len(_NONFINITE_CASES)))
def test_clip_grad_norm_error_if_nonfinite(case: int, foreach: bool) -> None:
    one_elem, prefix, scalars, norms_nonfinite, norms_finite = _NONFINITE_CASES[case]
    runs = [(n, True) for n in norms_nonfinite] + [(n, False) for n in norms_finite]
    for (norm_type, nonfinite), scalar, raise_ in itertools.product(runs, scalars, [False, True]):
        params = _float64_params(scalar, one_elem, prefix)
        before = _grads(params)
        where = f"norm_type={norm_type} scalar={scalar} error_if_nonfinite={raise_}"
        if norm_type <= 0:
            # DELIBERATE DIFFERENCE: orders <= 0 (PyTorch accepts them: 0 counts the non-zero
            # entries, negative orders weigh the smallest) cannot bound a gradient, so gradguard
            # refuses them before touching anything.
            with pytest.raises(ConfigError, match="norm_type must be a number > 0"):
                gg.clip_grad_norm_(params, 1, norm_type, raise_, foreach)
            assert _same(_grads(params), before), where
            continue
        if nonfinite and raise_:  # as in PyTorch: a RuntimeError, and nothing changed
            with pytest.raises(RuntimeError, match=f"total norm of order {float(norm_type)}"):
                gg.clip_grad_norm_(params, 1, norm_type, raise_, foreach)
            with pytest.raises(NonFiniteError):
                gg.clip_grad_norm_(params, 1, norm_type, raise_, foreach)
            assert _same(_grads(params), before), where
            continue
        total = gg.clip_grad_norm_(params, 1, norm_type, raise_, foreach)
        if nonfinite:
            # DELIBERATE DIFFERENCE: PyTorch multiplies every gradient by a NaN (or zero)
            # coefficient here; gradguard leaves them as they were, so the step can be skipped.
            assert not math.isfinite(total.item()), where
            assert _same(_grads(params), before), where
        else:
            twins = _float64_params(scalar, one_elem, prefix)
            expected = torch.nn.utils.clip_grad_norm_(twins, 1, norm_type, raise_, foreach)
            assert torch.equal(total, expected), where
            assert _same(_grads(params), _grads(twins)), where


# -------------------------------------------------------------- equality on random inputs

_SHAPES = st.lists(st.lists(st.integers(1, 5), max_size=3), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    shapes=_SHAPES,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    norm_type=st.sampled_from([1.0, 2.0, 3.5, INF, "inf"]),
    max_norm=st.floats(1e-3, 1e3),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_clip_grad_norm_equals_torch_bit_for_bit(
    shapes: list[list[int]],
    dtype: torch.dtype,
    norm_type: float | str,
    max_norm: float,
    scale: float,
    seed: int,
) -> None:
    torch.manual_seed(seed)
    grads = [torch.randn(shape, dtype=dtype) * scale for shape in shapes]
    ours = [torch.zeros_like(g, requires_grad=True) for g in grads]
    theirs = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for a, b, g in zip(ours, theirs, grads, strict=True):
        a.grad, b.grad = g.clone(), g.clone()
    total = gg.clip_grad_norm_(ours, max_norm, norm_type)  # torch's positional order
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert total.dtype == expected.dtype
    assert torch.equal(total, expected)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(
    shapes=_SHAPES,
    clip_value=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
)
def test_clip_grad_value_equals_torch(
    shapes: list[list[int]], clip_value: float, seed: int
) -> None:
    torch.manual_seed(seed)
    grads = [torch.randn(shape) * 5 for shape in shapes]
    grads[0].view(-1)[:1] = INF  # infinities become the bound in both
    ours = [torch.zeros_like(g, requires_grad=True) for g in grads]
    theirs = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for a, b, g in zip(ours, theirs, grads, strict=True):
        a.grad, b.grad = g.clone(), g.clone()
    assert gg.clip_grad_value_(ours, clip_value) is None
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ float64 beyond float32


def _grad64(values: list[float]) -> torch.Tensor:
    p = torch.zeros(len(values), dtype=torch.float64, requires_grad=True)
    p.grad = torch.tensor(values, dtype=torch.float64)
    return p


@pytest.mark.parametrize("norm_type", [1.0, INF])
def test_a_float64_norm_beyond_float32_is_finite_and_clipped_like_torch(norm_type: float) -> None:
    ours, theirs = _grad64([2e200, -2e200, 1.0]), _grad64([2e200, -2e200, 1.0])
    stats = gg.measure([ours], norm_type)
    assert bool(stats.finite) and stats.total_norm.dtype == torch.float64
    assert stats.total_norm.item() == (4e200 + 1.0 if norm_type == 1.0 else 2e200)
    total = gg.clip_grad_norm_([ours], 1.0, norm_type)
    expected = torch.nn.utils.clip_grad_norm_([theirs], 1.0, norm_type)
    assert torch.equal(total, expected)
    assert ours.grad is not None and torch.equal(ours.grad, theirs.grad)  # type: ignore[arg-type]
    assert torch.linalg.vector_norm(ours.grad, norm_type).item() == pytest.approx(1.0, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    max_norm=st.floats(1e-3, 1e3),
    exponent=st.integers(-30, 150),  # 17 values of 1e150: squares stay below 1e308
    seed=st.integers(0, 2**16),
)
def test_float64_clipped_norm_never_exceeds_max_norm(
    max_norm: float, exponent: int, seed: int
) -> None:
    """The coefficient is float64 for float64 gradients: no float32 rounding above the bound."""
    torch.manual_seed(seed)
    p = _grad64((torch.randn(17, dtype=torch.float64) * 10.0**exponent).tolist())
    gg.clip_by_global_norm_([p], max_norm)
    after = torch.linalg.vector_norm(p.grad).item()  # type: ignore[arg-type]
    assert after <= max_norm * (1 + 4 * 2**-52)


def test_clip_by_global_norm_takes_norm_type_positionally() -> None:
    p, q = _grad64([3.0, 4.0]), _grad64([3.0, 4.0])
    assert gg.clip_by_global_norm_([p], 1.0, 1.0).item() == 7.0
    assert gg.clip_per_tensor_norm_([q], 1.0, INF).tolist() == [4.0]


# ------------------------------------------------------------- the documented differences


def test_nonfinite_gradients_are_left_untouched_where_torch_spreads_nan() -> None:
    ours = [_grad64([NAN, 1.0]), _grad64([3.0, 4.0])]
    theirs = [_grad64([NAN, 1.0]), _grad64([3.0, 4.0])]
    assert math.isnan(gg.clip_grad_norm_(ours, 1.0).item())
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert ours[1].grad is not None and ours[1].grad.tolist() == [3.0, 4.0]
    assert theirs[1].grad is not None and torch.isnan(theirs[1].grad).all()


def test_half_precision_norm_is_returned_in_float32() -> None:
    p = torch.zeros(3, dtype=torch.float16, requires_grad=True)
    p.grad = torch.tensor([300.0, 400.0, 0.0], dtype=torch.float16)
    total = gg.clip_grad_norm_(p, 1.0)
    assert total.dtype == torch.float32 and total.item() == 500.0


def test_a_tensor_listed_twice_counts_once() -> None:
    p = _grad64([30.0, 40.0])
    assert gg.clip_grad_norm_([p, p], 1.0).item() == 50.0
    assert torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_norm", [0.0, -1.0, NAN, INF, "1.0", True])
def test_max_norm_must_be_a_finite_positive_number(max_norm: object) -> None:
    p = _grad64([3.0, 4.0])
    with pytest.raises(ConfigError, match=f"max_norm must be .*got {max_norm!r}"):
        gg.clip_grad_norm_([p], max_norm)  # type: ignore[arg-type]
    assert p.grad is not None and p.grad.tolist() == [3.0, 4.0]


def test_no_gradient_returns_zero_as_torch_does() -> None:
    layer = nn.Linear(2, 2)
    assert torch.equal(gg.clip_grad_norm_(layer.parameters(), 1.0), torch.tensor(0.0))
    assert torch.equal(torch.nn.utils.clip_grad_norm_(layer.parameters(), 1.0), torch.tensor(0.0))
    assert gg.clip_grad_value_(layer.parameters(), 1.0) is None
