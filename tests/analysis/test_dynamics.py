"""eigen_dynamics: the seeds' 1.2 / 1.1 experiment, and exactness of the split."""

from __future__ import annotations

import json

import pytest
import torch

from gradguard.analysis import eigen_dynamics
from gradguard.errors import ConfigError


def _seed_matrix(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(42)
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    values = torch.empty(n, dtype=torch.float64).uniform_(0.8, 0.95, generator=generator)
    values[0], values[1] = 1.2, 1.1
    return v @ torch.diag(values) @ v.T, v


def test_the_1_2_direction_dominates_after_50_steps() -> None:
    w, v = _seed_matrix()
    result = eigen_dynamics(w, 50)
    assert result.spectral_radius == pytest.approx(1.2)
    assert result.unstable_moduli == pytest.approx((1.2, 1.1))
    assert result.dominant == 0
    top, second = result.unstable
    for t in range(1, 51):
        assert top[t] / top[t - 1] == pytest.approx(1.2, rel=1e-9)
        assert second[t] / second[t - 1] == pytest.approx(1.1, rel=1e-9)
    assert top[-1] > second[-1] and top[-1] > result.stable[-1]
    assert top[-1] / result.norms[-1] > 0.99  # the gradient is now almost parallel to v_0
    # The stable part shrinks by at most 0.95 per step.
    assert result.stable[-1] <= 0.95**50 * result.stable[0] * (1 + 1e-9)
    # For symmetric W the component is the plain projection |<g_t, v_0>| of the seeds.
    g = torch.zeros(50, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(50, generator=generator, dtype=torch.float64)
    g = g / g.norm()
    for _ in range(50):
        g = w.T @ g
    assert top[-1] == pytest.approx(abs(float(g @ v[:, 0])), rel=1e-9)
    assert result.norms[-1] == pytest.approx(float(g.norm()), rel=1e-12)


def test_components_add_up_for_a_non_normal_matrix_with_a_complex_pair() -> None:
    rotation = 1.3 * torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    w = torch.zeros(4, 4, dtype=torch.float64)
    w[:2, :2] = rotation
    w[2:, 2:] = torch.tensor([[0.5, 0.7], [0.0, 0.4]], dtype=torch.float64)
    w[0, 3] = 0.3
    grad0 = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    result = eigen_dynamics(w, 20, grad0)
    assert len(result.unstable) == 1  # one conjugate pair, counted once as a real plane
    assert result.unstable_eigenvalues[0] == pytest.approx((0.78, 1.04))
    series = result.unstable[0]
    assert series[20] / series[10] == pytest.approx(1.3**10, rel=1e-9)
    assert result.norms[0] == pytest.approx(3**0.5)


def test_json_and_errors() -> None:
    result = eigen_dynamics(0.5 * torch.eye(3), 4)
    assert result.unstable == () and result.dominant is None
    assert result.growth == pytest.approx(0.5**4)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["kind"] == "eigen_dynamics" and len(data["norms"]) == 5
    assert "stable subspace" in str(result)
    with pytest.raises(ConfigError, match=r"\(3,\)"):
        eigen_dynamics(torch.eye(3), 4, torch.ones(2))
    with pytest.raises(ConfigError):
        eigen_dynamics(torch.eye(3), 0)
    with pytest.raises(ConfigError):
        eigen_dynamics(torch.ones(2, 3), 4)
