"""Learning-rate scaling over all param groups, optimizer-state reset, RNG capture and restore."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from gradguard.errors import ConfigError
from gradguard.recover import (
    capture_rng_state,
    reset_optimizer_state_,
    restore_rng_state,
    scaled_lr,
)


def _two_groups() -> tuple[nn.Linear, nn.Linear, torch.optim.SGD]:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": a.parameters(), "lr": 0.1}, {"params": b.parameters()}], 0.01)
    return a, b, opt


def test_scaled_lr_scales_every_group_and_restores_them() -> None:
    _, _, opt = _two_groups()
    with scaled_lr(opt, 0.25):
        assert [g["lr"] for g in opt.param_groups] == [0.025, 0.0025]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]
    with pytest.raises(KeyError), scaled_lr(opt, 0.5):
        raise KeyError("boom")
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]


def test_scaled_lr_step_equals_a_step_at_the_scaled_rate() -> None:
    torch.manual_seed(1)
    a, b, opt = _two_groups()
    ref_a, ref_b = nn.Linear(2, 2), nn.Linear(2, 2)
    ref_a.load_state_dict(a.state_dict())
    ref_b.load_state_dict(b.state_dict())
    ref = torch.optim.SGD(
        [{"params": ref_a.parameters(), "lr": 0.05}, {"params": ref_b.parameters(), "lr": 0.005}]
    )
    x = torch.randn(4, 2)
    for first, second in ((a, b), (ref_a, ref_b)):
        second(first(x)).pow(2).sum().backward()
    with scaled_lr(opt, 0.5):
        opt.step()
    ref.step()
    for p, q in zip(
        [*a.parameters(), *b.parameters()], [*ref_a.parameters(), *ref_b.parameters()], strict=True
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_scaled_lr_handles_tensor_learning_rates_and_scale_one_is_a_no_op() -> None:
    p = nn.Parameter(torch.ones(2))
    lr = torch.tensor(0.1)
    opt = torch.optim.Adam([p], lr=lr)
    with scaled_lr(opt, 1.0):
        assert opt.param_groups[0]["lr"] is lr
    with scaled_lr(opt, 0.5):
        torch.testing.assert_close(opt.param_groups[0]["lr"], torch.tensor(0.05))
    assert opt.param_groups[0]["lr"] is lr


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_scaled_lr_rejects_bad_scales(bad: float) -> None:
    _, _, opt = _two_groups()
    with pytest.raises(ConfigError, match="scale"), scaled_lr(opt, bad):
        pass


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, fused=True),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5),
    ],
)
def test_reset_makes_the_next_step_a_first_step(make: object) -> None:
    torch.manual_seed(2)
    model = nn.Linear(3, 2)
    fresh_model = nn.Linear(3, 2)
    opt = make(list(model.parameters()))  # type: ignore[operator]
    x = torch.randn(5, 3)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    assert reset_optimizer_state_(opt) == 2
    fresh_model.load_state_dict(model.state_dict())
    fresh = make(list(fresh_model.parameters()))  # type: ignore[operator]
    for m, o in ((model, opt), (fresh_model, fresh)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), fresh_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert opt.param_groups[0]["lr"] == fresh.param_groups[0]["lr"]


def test_rng_state_round_trip_replays_every_generator(tmp_path: object) -> None:
    state = capture_rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    restore_rng_state(state)
    again = (random.random(), float(np.random.rand()), torch.rand(3).tolist())
    assert first == again
    path = f"{tmp_path}/rng.pt"
    torch.save(state, path)
    restore_rng_state(torch.load(path, weights_only=True))
    assert (random.random(), float(np.random.rand()), torch.rand(3).tolist()) == first
    json.dumps(state["python"])  # plain values
