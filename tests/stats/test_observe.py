"""observe(): one host transfer carries every value the detectors need, exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError
from gradguard.stats import observe, param_norm
from tests.host_sync import count_host_syncs, no_host_sync


def _params(*grads: list[float]) -> list[tuple[str, torch.Tensor]]:
    out = []
    for i, grad in enumerate(grads):
        t = torch.ones(len(grad), requires_grad=True)
        t.grad = torch.tensor(grad)
        out.append((f"p{i}", t))
    return out


def test_values_names_and_exactly_one_transfer() -> None:
    params = _params([3.0, 4.0], [12.0], [0.0, 1.0])
    stats = gg.measure(params)
    weights = param_norm(params)
    with count_host_syncs() as calls:
        obs = observe(stats, torch.tensor(2.5), 7, top_k=2, param_norm=weights)
    assert calls == ["tolist"]
    assert obs.step == 7 and obs.loss == 2.5 and obs.total_norm == pytest.approx(13.0387, 1e-4)
    assert obs.finite and obs.num_tensors == 3
    assert obs.top == (("p1", 12.0), ("p0", 5.0))
    assert obs.param_norm == pytest.approx(math.sqrt(5.0))
    assert obs.tensor_norms is None


def test_all_tensor_norms_on_request_and_host_loss() -> None:
    stats = gg.measure(_params([1.0], [2.0]))
    with count_host_syncs() as calls:
        obs = observe(stats, 0.25, 0, top_k=5, want_tensor_norms=True)
    assert calls == ["tolist"]
    assert obs.loss == 0.25 and obs.top == (("p1", 2.0), ("p0", 1.0))
    assert obs.tensor_norms == (("p0", 1.0), ("p1", 2.0))


def test_nonfinite_gradient_is_named_first() -> None:
    stats = gg.measure(_params([1.0], [math.nan], [math.inf]))
    obs = observe(stats, torch.tensor(math.inf), 3, top_k=2)
    assert not obs.finite and math.isnan(obs.total_norm)
    assert obs.top[0][0] == "p1" and math.isnan(obs.top[0][1])
    assert obs.top[1] == ("p2", math.inf)
    assert obs.loss == math.inf and not obs.loss_finite


def test_no_loss_no_topk_and_a_float64_loss_kept_exact() -> None:
    stats = gg.measure(_params([1.0, 1.0]))
    obs = observe(stats, None, 0, top_k=0)
    assert obs.loss is None and obs.top == () and obs.total_norm == pytest.approx(math.sqrt(2))
    exact = observe(stats, torch.tensor(1.0 + 1e-12, dtype=torch.float64), 0)
    assert exact.loss == 1.0 + 1e-12


def test_a_clip_coefficient_rides_in_the_same_transfer() -> None:
    params = _params([3.0, 4.0], [12.0])
    stats = gg.measure(params)
    with count_host_syncs() as calls:
        obs = observe(
            stats,
            torch.tensor(2.5),
            0,
            top_k=1,
            param_norm=param_norm(params),
            clip_coef=torch.tensor(0.25),
        )
    assert calls == ["tolist"]
    assert (
        obs.clip_coef == 0.25
        and obs.loss == 2.5
        and obs.param_norm == pytest.approx(math.sqrt(3.0))
    )
    assert obs.total_norm == 13.0 and obs.top == (("p1", 12.0),)
    assert observe(stats, None, 0, clip_coef=0.5).clip_coef == 0.5  # a host number as is
    assert observe(stats, None, 0).clip_coef is None
    with pytest.raises(ConfigError, match=r"clip_coef must be a single number.*\(2,\)"):
        observe(stats, None, 0, clip_coef=torch.ones(2))
    with pytest.raises(ConfigError, match="clip_coef must be a tensor, a number or None"):
        observe(stats, None, 0, clip_coef="low")  # type: ignore[arg-type]


def test_bad_loss_and_top_k_teach() -> None:
    stats = gg.measure(_params([1.0]))
    with pytest.raises(ConfigError, match=r"shape \(2,\)"):
        observe(stats, torch.ones(2), 0)
    with pytest.raises(ConfigError, match="top_k"):
        observe(stats, None, 0, top_k=-1)
    with pytest.raises(ConfigError, match="loss must be"):
        observe(stats, "high", 0)  # type: ignore[arg-type]


def test_param_norm_matches_torch_and_needs_no_sync() -> None:
    model = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 2)).to(torch.float64)
    model[1].half()
    with no_host_sync():
        measured = param_norm(model)
    expected = torch.linalg.vector_norm(
        torch.cat([p.detach().double().flatten() for p in model.parameters()])
    )
    assert measured.dtype == torch.float32 and measured.dim() == 0
    torch.testing.assert_close(measured.double(), expected, rtol=1e-3, atol=0)
    assert param_norm([]).item() == 0.0
    assert param_norm(model, "inf").item() == pytest.approx(
        max(p.detach().abs().max().item() for p in model.parameters()), rel=1e-3
    )
