"""A float bound is checked once where it enters (a constructor, a public call), not per step."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradguard as gg
import gradguard.clip.apply as apply_module
from gradguard.clip import (
    GlobalNormClipper,
    PercentileClipper,
    PerTensorNormClipper,
    ZScoreClipper,
    apply_global_bound_,
    apply_per_tensor_bound_,
    safe_coefficient,
)
from gradguard.errors import ConfigError, ConfigTypeError
from gradguard.guard import Guard
from tests.clip._steps import param_with_norm

EPS = 1e-6
MAX_NORM_FIX = "Typical values are 0.5 to 5; 1.0 is a safe start for RNNs."


@pytest.mark.parametrize("make", [GlobalNormClipper, PerTensorNormClipper])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf])
def test_a_bad_max_norm_is_refused_when_the_clipper_is_built(
    make: Callable[[float], object], bad: float
) -> None:
    with pytest.raises(ConfigError) as caught:
        make(bad)
    assert str(caught.value) == f"max_norm must be a finite number > 0, got {bad!r}. {MAX_NORM_FIX}"


def test_a_nan_or_string_max_norm_is_refused_when_the_clipper_is_built() -> None:
    with pytest.raises(ConfigError, match=r"max_norm must be a number, got nan\. Typical"):
        GlobalNormClipper(math.nan)
    with pytest.raises(ConfigTypeError, match=r"max_norm must be a real number, got '1'"):
        PerTensorNormClipper("1")  # type: ignore[arg-type]


def test_a_bad_guard_bound_is_refused_when_the_guard_is_built() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match=r"clip must be a finite number > 0, got 0\.0\. Pass"):
        Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), clip=0.0)


@pytest.fixture
def no_per_step_check(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every bound the clipping core would check; the tests expect none."""
    seen: list[object] = []

    def record(name: str, value: object, **_: object) -> float:
        seen.append(value)
        return float(value)  # type: ignore[arg-type]

    monkeypatch.setattr(apply_module, "check_positive", record)
    return seen


@pytest.mark.parametrize(
    ("make", "coef"),
    [
        (lambda: GlobalNormClipper(2.0), 2.0 / (8.0 + EPS)),
        (lambda: PerTensorNormClipper(2.0), 2.0 / (8.0 + EPS)),
        (lambda: PercentileClipper(50.0, window=4), 8.0 / (8.0 + EPS)),
        (lambda: ZScoreClipper(max_norm=2.0), 2.0 / (8.0 + EPS)),  # no spike: max_norm caps
    ],
    ids=["global", "per_tensor", "percentile", "zscore"],
)
def test_clippers_do_not_check_their_bound_at_each_step(
    no_per_step_check: list[object], make: Callable[[], gg.clip.Clipper], coef: float
) -> None:
    clipper = make()
    for _ in range(3):
        got = clipper.clip_(gg.measure([param_with_norm(8.0)]))
        assert got.flatten()[0].item() == pytest.approx(coef, rel=1e-6)
    assert no_per_step_check == []


def test_the_clip_functions_check_max_norm_once_per_call(no_per_step_check: list[object]) -> None:
    p = param_with_norm(8.0)
    gg.clip_by_global_norm_([p], 2.0)
    gg.clip_per_tensor_norm_([p], 1.0)
    gg.clip_grad_norm_([p], 0.5)
    assert p.grad is not None and p.grad.norm().item() == pytest.approx(0.5, rel=1e-5)
    assert no_per_step_check == []  # each checked max_norm itself, once


def test_a_guard_clipping_every_step_does_not_check_its_bound_again(
    no_per_step_check: list[object],
) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = Guard(model, opt, clip=1e-3, snapshot_every=None)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).sum().backward()
        record = guard.step()
        assert record.clip_coef is not None and record.clip_coef < 1.0
    assert no_per_step_check == []


def _stats() -> gg.GradStats:
    return gg.measure([param_with_norm(8.0)])


@pytest.mark.parametrize(
    "call",
    [
        lambda bound: safe_coefficient(bound, torch.tensor(8.0), torch.tensor(True), EPS),
        lambda bound: apply_global_bound_(_stats(), bound, EPS),
        lambda bound: apply_per_tensor_bound_(_stats(), bound, EPS),
    ],
    ids=["safe_coefficient", "apply_global_bound_", "apply_per_tensor_bound_"],
)
@pytest.mark.parametrize("bad", [0.0, -2.0, math.inf])
def test_public_functions_taking_a_bound_per_call_still_check_it(
    call: Callable[[float], object], bad: float
) -> None:
    with pytest.raises(ConfigError) as caught:
        call(bad)
    expected = f"bound must be a finite number > 0, got {bad!r}. It is the max_norm of the clip"
    assert str(caught.value).startswith(expected)


def test_a_public_call_with_a_bad_bound_changes_no_gradient() -> None:
    p = param_with_norm(8.0)
    before = p.grad.clone()  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="bound must be a finite number > 0"):
        apply_global_bound_(gg.measure([p]), -1.0, EPS)
    assert torch.equal(p.grad, before)  # type: ignore[arg-type]


def test_a_tensor_bound_is_used_as_it_is() -> None:
    coef = safe_coefficient(torch.tensor(2.0), torch.tensor(8.0), torch.tensor(True), EPS)
    assert coef.item() == pytest.approx(2.0 / (8.0 + EPS), rel=1e-7)
