"""gg.measure: reference values, dtypes, bad input, and zero host syncs."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError, EmptyParametersError, NoGradientsError
from tests.host_sync import no_host_sync


def _with_grad(*values: list[float], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    out = []
    for v in values:
        t = torch.zeros(len(v), dtype=dtype, requires_grad=True)
        t.grad = torch.tensor(v, dtype=dtype)
        out.append(t)
    return out


def test_norms_match_hand_calculation() -> None:
    params = _with_grad([3.0, 4.0], [12.0])
    stats = gg.measure(params)
    assert stats.norms.tolist() == [5.0, 12.0]
    assert stats.total_norm.item() == 13.0
    assert stats.total_norm.dtype == torch.float32 and stats.total_norm.dim() == 0
    assert bool(stats.finite)
    assert stats.names == ("[0]", "[1]")


def test_accepts_module_named_pairs_and_skips_tensors_without_grad() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    model[1](torch.randn(2, 4)).sum().backward()  # only the second layer gets gradients
    by_module = gg.measure(model)
    by_pairs = gg.measure(model.named_parameters())
    assert by_module.names == by_pairs.names == ("1.weight", "1.bias")
    expected = torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model[1].parameters()])  # type: ignore[union-attr]
    )
    torch.testing.assert_close(by_module.total_norm, expected)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf, "inf"])
def test_norm_types_match_torch(p: float | str) -> None:
    params = _with_grad([1.0, -2.0, 3.0], [-4.0, 0.5])
    flat = torch.cat([t.grad for t in params])  # type: ignore[misc]
    ord_ = math.inf if p == "inf" else float(p)
    torch.testing.assert_close(
        gg.measure(params, p).total_norm, torch.linalg.vector_norm(flat, ord_)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_accumulated_in_float32(dtype: torch.dtype) -> None:
    # 300^2 * 4 = 360000 overflows float16 (max 65504) but not float32.
    params = _with_grad([300.0, 300.0, 300.0, 300.0], dtype=dtype)
    stats = gg.measure(params)
    assert stats.norms.dtype == torch.float32
    assert stats.total_norm.item() == pytest.approx(600.0, rel=1e-2)
    assert bool(stats.finite)


def test_mixed_dtypes_are_grouped_and_names_follow_norms() -> None:
    params = _with_grad([3.0, 4.0]) + _with_grad([6.0, 8.0], dtype=torch.float64)
    params += _with_grad([1.0])
    stats = gg.measure(params)
    by_name = dict(zip(stats.names, stats.norms.tolist(), strict=True))
    assert by_name == {"[0]": 5.0, "[1]": 10.0, "[2]": 1.0}
    assert stats.total_norm.item() == pytest.approx(math.sqrt(126.0))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_values_make_the_norm_nonfinite(bad: float) -> None:
    stats = gg.measure(_with_grad([1.0, bad], [2.0]))
    assert not bool(stats.finite)
    assert not math.isfinite(stats.norms[0].item())
    assert stats.norms[1].item() == 2.0


def test_finite_values_that_overflow_the_norm_count_as_explosion() -> None:
    stats = gg.measure(_with_grad([1e30, 1e30]))
    assert not bool(stats.finite)
    assert stats.total_norm.item() == math.inf


def test_complex_gradients_use_their_modulus() -> None:
    t = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    t.grad = torch.tensor([3 + 4j, 0j], dtype=torch.complex64)
    assert gg.measure([t]).total_norm.item() == pytest.approx(5.0)


def test_empty_list_gives_zero_norm() -> None:
    stats = gg.measure([])
    assert stats.total_norm.item() == 0.0
    assert bool(stats.finite)
    assert stats.norms.numel() == 0


def test_consumed_generator_is_rejected_with_a_fix() -> None:
    model = nn.Linear(2, 2)
    gen = model.parameters()
    list(gen)
    with pytest.raises(EmptyParametersError, match="consumed"):
        gg.measure(gen)


def test_no_gradients_at_all_is_rejected_with_a_fix() -> None:
    with pytest.raises(NoGradientsError, match=r"loss\.backward\(\)"):
        gg.measure(nn.Linear(2, 2))


@pytest.mark.parametrize("bad", [0, -1.0, "two", math.nan, None])
def test_bad_norm_type_echoes_value(bad: object) -> None:
    with pytest.raises(ConfigError, match=repr(bad).replace("(", r"\(")):
        gg.measure(_with_grad([1.0]), bad)  # type: ignore[arg-type]


def test_sparse_gradients_are_rejected_clearly() -> None:
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(gg.errors.UnsupportedGradientError, match="sparse=False"):
        gg.measure(emb)


def test_wrong_item_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="parameters"):
        gg.measure([1.0, 2.0])  # type: ignore[list-item]


def test_measure_makes_no_host_sync() -> None:
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).to(torch.float64)
    model(torch.randn(3, 5, dtype=torch.float64)).sum().backward()
    extra = _with_grad([1.0, 2.0], dtype=torch.float16)
    with no_host_sync():
        gg.measure(list(model.parameters()) + extra)


@given(
    st.lists(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=8),
        min_size=1,
        max_size=6,
    )
)
def test_global_norm_equals_norm_of_concatenation(values: list[list[float]]) -> None:
    params = _with_grad(*values)
    flat = torch.cat([t.grad for t in params])  # type: ignore[misc]
    torch.testing.assert_close(
        gg.measure(params).total_norm, torch.linalg.vector_norm(flat), rtol=1e-5, atol=1e-5
    )


def test_validated_parameter_lists_pass_through_unchanged() -> None:
    from gradguard.stats import named_tensors

    params = _with_grad([1.0], [2.0], [3.0])
    named = named_tensors(params)
    assert [name for name, _ in named] == ["[0]", "[1]", "[2]"]
    assert named_tensors(named) is named  # Monitor/Guard validate once, not every step
    assert gg.measure(named).names == ("[0]", "[1]", "[2]")
