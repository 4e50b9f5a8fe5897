"""clip_by_value_ and ValueClipper: torch equality, NaN and Inf behaviour, no host sync."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gradguard as gg
from gradguard.clip import ValueClipper
from gradguard.errors import ConfigError
from tests.host_sync import no_host_sync


def _param(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.zeros(len(values), dtype=dtype, requires_grad=True)
    t.grad = torch.tensor(values, dtype=dtype)
    return t


def test_clamps_into_the_interval() -> None:
    p = _param([-3.0, 0.5, 2.0])
    assert gg.clip_by_value_([p], 1.0) is None
    assert p.grad is not None and p.grad.tolist() == [-1.0, 0.5, 1.0]


def test_nan_stays_nan_and_infinities_become_the_bound() -> None:
    p = _param([math.nan, math.inf, -math.inf, 0.25])
    gg.clip_by_value_([p], 2.0)
    assert p.grad is not None
    got = p.grad.tolist()
    assert math.isnan(got[0])
    assert got[1:] == [2.0, -2.0, 0.25]


@given(
    st.lists(st.lists(st.floats(-50, 50, width=32), min_size=1, max_size=6), min_size=1),
    st.floats(1e-3, 10.0),
    st.sampled_from([torch.float32, torch.float64, torch.float16]),
)
def test_matches_clip_grad_value(
    values: list[list[float]], clip: float, dtype: torch.dtype
) -> None:
    ours = [_param(v, dtype) for v in values]
    theirs = [_param(v, dtype) for v in values]
    gg.clip_by_value_(ours, clip)
    torch.nn.utils.clip_grad_value_(theirs, clip, foreach=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_reuses_stats_without_host_sync() -> None:
    a, b = _param([3.0, 4.0]), _param([5.0, 0.0], torch.float64)
    stats = gg.measure([a, b])
    with no_host_sync():
        gg.clip_by_value_(None, 1.0, stats=stats)
        coef = ValueClipper(1.0).clip_(stats)
    assert a.grad is not None and a.grad.tolist() == [1.0, 1.0]
    # The object reports how much each tensor's norm shrank, in the order of stats.names.
    by_name = dict(zip(stats.names, coef.tolist(), strict=True))
    assert by_name == pytest.approx({"[0]": math.sqrt(2.0) / 5.0, "[1]": 1.0 / 5.0})


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, None])
def test_bad_clip_value_is_rejected(bad: object) -> None:
    with pytest.raises(ConfigError, match="clip_value"):
        gg.clip_by_value_([_param([1.0])], bad)  # type: ignore[arg-type]


def test_needs_parameters_or_stats() -> None:
    with pytest.raises(ConfigError, match="parameters=None"):
        gg.clip_by_value_(None, 1.0)
