"""One contract over every registered clipper: interface, state, non-finite input, dtypes, syncs."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.clip import REGISTRY, Clipper
from gradguard.errors import ConfigError
from tests.host_sync import no_host_sync

NAMES = sorted(REGISTRY)


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(dtype)


def _set_grads(model: nn.Module, step: int, dtype: torch.dtype = torch.float32) -> None:
    """Deterministic gradients per step, with a spike every fifth step."""
    gen = torch.Generator().manual_seed(step)
    scale = 50.0 if step % 5 == 4 else 1.0
    for p in model.parameters():
        p.grad = (torch.randn(p.shape, generator=gen) * scale).to(dtype)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]


def _state_equal(a: dict[str, object], b: dict[str, object]) -> bool:
    if set(a) != set(b):
        return False
    for key in a:
        x, y = a[key], b[key]
        assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
        if not torch.equal(torch.nan_to_num(x, nan=-7.0), torch.nan_to_num(y, nan=-7.0)):
            return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_implements_the_clipper_protocol(name: str) -> None:
    clipper = REGISTRY[name]()
    assert isinstance(clipper, Clipper)
    assert repr(clipper).startswith(type(clipper).__name__)


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_mid_run_gives_identical_results(name: str) -> None:
    model_a, model_b = _model(), _model()
    first = REGISTRY[name]()
    for step in range(7):
        _set_grads(model_a, step)
        first.clip_(gg.measure(model_a))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = REGISTRY[name]()
    second.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(7, 14):
        _set_grads(model_a, step)
        _set_grads(model_b, step)
        coef_a = first.clip_(gg.measure(model_a))
        coef_b = second.clip_(gg.measure(model_b))
        torch.testing.assert_close(coef_a, coef_b, rtol=0, atol=0)
        for ga, gb in zip(_grads(model_a), _grads(model_b), strict=True):
            torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    assert _state_equal(first.state_dict(), second.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_a_snapshot_not_a_live_view(name: str) -> None:
    model, clipper = _model(), REGISTRY[name]()
    _set_grads(model, 0)
    clipper.clip_(gg.measure(model))
    saved = clipper.state_dict()
    copy = {k: v.clone() for k, v in saved.items()}
    for step in range(1, 4):
        _set_grads(model, step)
        clipper.clip_(gg.measure(model))
    assert _state_equal(saved, copy)


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_rejects_foreign_state(name: str) -> None:
    with pytest.raises(ConfigError, match=r"load_state_dict|no state"):
        REGISTRY[name]().load_state_dict({"unexpected": torch.zeros(3)})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e30])
@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_step_is_contained_and_leaves_state_unchanged(name: str, bad: float) -> None:
    model, clipper = _model(), REGISTRY[name]()
    for step in range(6):  # past warm-ups: adaptive rules have statistics by now
        _set_grads(model, step)
        clipper.clip_(gg.measure(model))
    before_state = clipper.state_dict()
    _set_grads(model, 6)
    first = next(iter(model.parameters()))
    first.grad[0, 0] = bad  # type: ignore[index]
    before = _grads(model)
    coef = clipper.clip_(gg.measure(model))
    after = _grads(model)
    assert torch.isfinite(coef).all()
    # The bad tensor: NaN stays NaN; nothing non-finite appears anywhere else.
    for b, a in zip(before, after, strict=True):
        new_bad = ~torch.isfinite(a) & torch.isfinite(b)
        assert not new_bad.any()
    assert not math.isfinite(after[0][0, 0].item()) or name == "value" or bad == 1e30
    for b, a in zip(before[1:], after[1:], strict=True):
        assert torch.isfinite(a).all()
        if name not in {"value", "per_tensor_norm", "agc"}:  # global rules: untouched
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert _state_equal(clipper.state_dict(), before_state)


@pytest.mark.parametrize("name", NAMES)
def test_empty_parameter_list_is_a_no_op(name: str) -> None:
    clipper = REGISTRY[name]()
    state = clipper.state_dict()
    coef = clipper.clip_(gg.measure([]))
    assert coef.dtype == torch.float32
    assert bool((coef == 1).all())
    assert _state_equal(clipper.state_dict(), state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_and_device_are_kept(name: str, dtype: torch.dtype) -> None:
    model, clipper = _model(dtype), REGISTRY[name]()
    for step in range(5):
        _set_grads(model, step, dtype)
        coef = clipper.clip_(gg.measure(model))
        # float32, or float64 for float64 gradients (the norm's precision, as torch clips).
        assert coef.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert torch.isfinite(coef).all()
        for p in model.parameters():
            assert p.grad is not None and p.grad.dtype == dtype and p.grad.device == p.device


@pytest.mark.parametrize("name", NAMES)
def test_coefficient_times_norms_gives_the_clipped_norms(name: str) -> None:
    model, clipper = _model(torch.float64), REGISTRY[name]()
    for step in range(6):
        _set_grads(model, step, torch.float64)
        stats = gg.measure(model)
        coef = clipper.clip_(stats)
        after = gg.measure(model).norms
        torch.testing.assert_close(coef * stats.norms, after, rtol=1e-5, atol=1e-9)
        assert bool((coef <= 1).all()) and bool((coef > 0).all())


@pytest.mark.parametrize("name", NAMES)
def test_the_step_coefficient_gives_the_clipped_global_norm(name: str) -> None:
    model, clipper = _model(torch.float64), REGISTRY[name]()
    for step in range(6):
        _set_grads(model, step, torch.float64)
        stats = gg.measure(model)
        coef = gg.clip.step_coefficient(stats, clipper.clip_(stats))
        after = gg.measure(model).total_norm
        assert isinstance(coef, torch.Tensor) and coef.shape == ()
        torch.testing.assert_close(coef * stats.total_norm, after, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_measure_and_clip_make_no_host_sync(name: str) -> None:
    model, clipper = _model(), REGISTRY[name]()
    half = [nn.Parameter(torch.zeros(4, dtype=torch.float16))]
    half[0].grad = torch.ones(4, dtype=torch.float16) * 3
    params = [*model.named_parameters(), ("half", half[0])]
    for step in range(6):
        _set_grads(model, step)
        with no_host_sync():
            clipper.clip_(gg.measure(params))
