"""PercentileClipper (AutoClip): hand-computed bounds, the ring, NaN invariance, state."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import gradguard as gg
from gradguard.clip import PercentileClipper
from gradguard.errors import ConfigError
from tests.clip._steps import param_with_norm, run

EPS = 1e-6


def test_first_step_is_its_own_bound_so_nothing_is_clipped() -> None:
    assert run(PercentileClipper(10.0, window=8), [7.0]) == [pytest.approx(7.0 / (7.0 + EPS))]


def test_bound_is_the_percentile_of_recent_norms_including_the_current() -> None:
    norms = [1.0, 2.0, 3.0, 4.0, 100.0]
    coefs = run(PercentileClipper(50.0, window=5), norms)
    # At the last step the ring holds all five norms: the median is 3.
    assert coefs[-1] == pytest.approx(3.0 / (100.0 + EPS))
    for k, (norm, coef) in enumerate(zip(norms, coefs, strict=True)):
        bound = float(np.percentile(norms[: k + 1], 50.0))  # linear interpolation, like torch
        assert coef == pytest.approx(min(1.0, bound / (norm + EPS)), rel=1e-6)


def test_ring_forgets_the_oldest_norm() -> None:
    # Window 3: at the 4th step the ring is [10, 2, 3] -> median 3 -> coefficient 3/10.
    coefs = run(PercentileClipper(50.0, window=3), [1.0, 2.0, 3.0, 10.0])
    assert coefs[-1] == pytest.approx(3.0 / (10.0 + EPS))


def test_gradients_are_scaled_by_the_coefficient() -> None:
    clipper = PercentileClipper(10.0, window=4)
    run(clipper, [1.0, 1.0, 1.0])
    p = param_with_norm(50.0)
    coef = clipper.clip_(gg.measure([p]))
    # Ring [1, 1, 1, 50]: the 10th percentile is 1.
    assert coef.item() == pytest.approx(1.0 / (50.0 + EPS))
    assert p.grad is not None and p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e30])
def test_nonfinite_norm_changes_nothing_at_the_next_step(bad: float) -> None:
    norms = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    with_bad, without = PercentileClipper(30.0, window=4), PercentileClipper(30.0, window=4)
    run(with_bad, norms)
    run(without, norms)
    p = param_with_norm(1.0)
    p.grad[0] = bad  # type: ignore[index]
    before = p.grad.clone()  # type: ignore[union-attr]
    assert with_bad.clip_(gg.measure([p])).item() == 1.0
    torch.testing.assert_close(p.grad, before, rtol=0, atol=0, equal_nan=True)
    after = [6.0, 0.5, 7.0]
    assert run(with_bad, after) == run(without, after)
    for key, value in with_bad.state_dict().items():
        torch.testing.assert_close(value, without.state_dict()[key], equal_nan=True)


def test_state_counts_only_finite_norms() -> None:
    clipper = PercentileClipper(window=3)
    run(clipper, [1.0, math.nan, 2.0, 3.0, 4.0])
    state = clipper.state_dict()
    assert state["seen"].item() == 4
    assert state["head"].item() == 1
    assert state["history"].tolist() == [4.0, 2.0, 3.0]


def test_load_state_dict_checks_the_window() -> None:
    saved = PercentileClipper(window=5).state_dict()
    with pytest.raises(ConfigError, match=r"history.*\(3,\)"):
        PercentileClipper(window=3).load_state_dict(saved)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"percentile": 0.0}, "percentile"),
        ({"percentile": 101.0}, "percentile"),
        ({"percentile": math.nan}, "percentile"),
        ({"window": 0}, "window"),
        ({"window": 2.5}, "window"),
        ({"window": True}, "window"),
        ({"eps": -1.0}, "eps"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PercentileClipper(**kwargs)  # type: ignore[arg-type]


_F32_MAX = torch.finfo(torch.float32).max
_F32_MAX_ROUNDS_DOWN = _F32_MAX * (1 + 2.0**-25)  # float64, still rounds to float32's largest


@pytest.mark.parametrize(
    ("dtype", "norm"),
    [
        (torch.float32, 3.0),
        (torch.float32, 1e38),
        (torch.float32, math.inf),
        (torch.float32, math.nan),
        (torch.float64, 3.0),
        (torch.float64, 1.0 / 3.0),  # rounds on the way to float32
        (torch.float64, _F32_MAX),
        (torch.float64, _F32_MAX_ROUNDS_DOWN),
        (torch.float64, 3.5e38),  # float32 would make it inf
        (torch.float64, 1e300),
        (torch.float64, math.inf),
        (torch.float64, math.nan),
    ],
)
def test_the_ring_stores_the_norm_as_float32_clamped_to_its_range(
    dtype: torch.dtype, norm: float
) -> None:
    clipper = PercentileClipper(50.0, window=2)
    stats = gg.measure([param_with_norm(1.0, dtype)])
    total = torch.tensor(norm, dtype=dtype)
    stats = dataclasses.replace(stats, total_norm=total, finite=total < math.inf)
    clipper.clip_(stats)
    stored = clipper.state_dict()["history"][0]
    # Bit for bit what the ring stored before this path skipped the clamp for float32 norms.
    reference = total.to(torch.float32).clamp(max=_F32_MAX)
    expected = reference if math.isfinite(norm) else torch.tensor(math.nan)
    assert stored.dtype == torch.float32
    torch.testing.assert_close(stored, expected, rtol=0, atol=0, equal_nan=True)
    if dtype == torch.float64 and _F32_MAX < norm < math.inf:
        assert stored.item() == _F32_MAX
