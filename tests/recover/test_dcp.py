"""A guard checkpoints with torch.distributed.checkpoint beside the model, and resumes alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError


def _guarded(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, gg.Guard]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, optimizer, gg.Guard(model, optimizer, sinks=())


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, guard: gg.Guard, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        x = torch.randn(8, 4)
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        loss.backward()
        guard.step(loss)


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_a_guard_round_trips_through_dcp_and_goes_on_identically(tmp_path: Path) -> None:
    model, optimizer, guard = _guarded(0)
    _train(model, optimizer, guard, 30)
    state = {"model": model.state_dict(), "guard": guard.stateful()}
    dcp.save(state, checkpoint_id=tmp_path)

    model2, optimizer2, guard2 = _guarded(1)  # fresh lists: other keys than the saved ones
    target = {"model": model2.state_dict(), "guard": guard2.stateful()}
    dcp.load(target, checkpoint_id=tmp_path)
    model2.load_state_dict(target["model"])
    assert guard2.state_dict() == guard.state_dict()
    assert guard2.summary()["progress"] == 30

    optimizer2.load_state_dict(optimizer.state_dict())
    torch.manual_seed(7)
    _train(model, optimizer, guard, 5)
    torch.manual_seed(7)
    _train(model2, optimizer2, guard2, 5)
    assert torch.equal(model.weight, model2.weight)
    assert guard2.state_dict()["policy"] == guard.state_dict()["policy"]


def test_a_foreign_checkpoint_is_refused_with_what_to_load() -> None:
    _, _, guard = _guarded(0)
    with pytest.raises(ConfigError, match=r"guard\.stateful"):
        guard.stateful().load_state_dict({"model": 1})
