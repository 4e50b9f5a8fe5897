"""GradStats.grad_groups: measure's grouping is reused; other GradStats are grouped on demand."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import gradguard as gg


def _with_grad(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.zeros(len(values), dtype=dtype, requires_grad=True)
    t.grad = torch.tensor(values, dtype=dtype)
    return t


def test_measure_hands_over_its_grouping_as_contiguous_slices_of_norms() -> None:
    params = [_with_grad([3.0, 4.0]), _with_grad([6.0, 8.0], torch.float64), _with_grad([1.0])]
    stats = gg.measure(params)
    groups = stats.grad_groups()
    assert groups is stats.grad_groups()  # computed once, by measure
    spans = sorted((g.positions.start, g.positions.stop) for g in groups)  # type: ignore[union-attr]
    assert spans in ([(0, 1), (1, 3)], [(0, 2), (2, 3)])
    for group in groups:
        norms = torch.stack([g.norm().to(stats.norms.dtype) for g in group.grads])
        torch.testing.assert_close(group.take(stats.norms), norms)


def test_a_stats_built_by_hand_in_any_order_is_grouped_on_demand() -> None:
    a, b, c = _with_grad([3.0, 4.0]), _with_grad([6.0, 8.0], torch.float64), _with_grad([0.3, 0.4])
    # Interleaved dtypes: the float32 gradients sit at positions 0 and 2 of norms.
    stats = dataclasses.replace(
        gg.measure([a, b, c]),
        norms=torch.tensor([5.0, 10.0, 0.5]),
        names=("a", "b", "c"),
        grads=(a.grad, b.grad, c.grad),  # type: ignore[arg-type]
        params=(a, b, c),
    )
    positions = sorted(str(g.positions) for g in stats.grad_groups())
    assert positions == ["[0, 2]", "slice(1, 2, None)"]
    coef = gg.clip.PerTensorNormClipper(1.0).clip_(stats)
    assert coef.tolist() == pytest.approx([1.0 / (5.0 + 1e-6), 1.0 / (10.0 + 1e-6), 1.0])
    for grad, expected in [(a.grad, [0.6, 0.8]), (b.grad, [0.6, 0.8]), (c.grad, [0.3, 0.4])]:
        assert grad is not None
        torch.testing.assert_close(
            grad, torch.tensor(expected, dtype=grad.dtype), rtol=1e-6, atol=0
        )
