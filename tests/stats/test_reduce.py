"""reduce_across_ranks without a process group: a no-op that costs nothing and syncs nothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError
from gradguard.stats import measure, reduce_across_ranks
from gradguard.stats.params import local_tensor
from gradguard.stats.reduce import (
    holds_dtensor,
    is_distributed,
    mean_across_ranks,
    reduce_norm_across_ranks,
)
from tests.host_sync import no_host_sync


def _model() -> nn.Linear:
    model = nn.Linear(4, 3)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    return model


def test_without_a_process_group_everything_is_returned_unchanged() -> None:
    assert not is_distributed()
    stats = measure(_model())
    loss = torch.tensor(2.5)
    with no_host_sync():
        for sharded in (True, False):
            assert reduce_across_ranks(stats, sharded=sharded) is stats
        assert reduce_norm_across_ranks(stats.total_norm, 2.0) is stats.total_norm
        assert mean_across_ranks(loss, device=stats.device) is loss
    assert mean_across_ranks(1.5, device=stats.device) == 1.5
    assert not stats.reduced


def test_plain_tensors_are_not_sharded_and_stay_themselves() -> None:
    model = _model()
    assert not holds_dtensor(model.parameters())
    weight = model.weight
    assert local_tensor(weight) is weight
    assert weight.grad is not None and local_tensor(weight.grad) is weight.grad
    assert measure(model).grads[0] is weight.grad  # no copy of plain gradients


def test_monitor_and_guard_take_the_distributed_options_and_behave_as_before() -> None:
    model = _model()
    monitor = gg.Monitor(model, process_group=None)
    assert monitor.sharded_grads is False  # no DTensor parameter: replicated
    assert gg.Monitor(model, sharded_grads=True).sharded_grads is True
    monitor.observe(torch.tensor(3.0))
    obs = monitor.last
    assert obs is not None and obs.loss == 3.0
    expected = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    ).item()
    assert math.isclose(obs.total_norm, expected, rel_tol=1e-6)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = gg.Guard(model, opt, sharded_grads=True, snapshot_every=None)
    assert guard.monitor.sharded_grads is True and guard.monitor.process_group is None
    record = guard.step(torch.tensor(3.0))
    assert record.applied and math.isclose(record.total_norm, expected, rel_tol=1e-6)


def test_guard_refuses_distributed_options_it_would_ignore() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match=r"sharded_grads=True.*Monitor\(\.\.\., process_group"):
        gg.Guard(model, opt, monitor=gg.Monitor(model), sharded_grads=True, snapshot_every=None)
