"""Global and per-optimizer step hooks: skip, clip, closures, logs, names, removal."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradguard.errors import ConfigError, TrainingDivergedError
from gradguard.integrations import GlobalGuard, HookedGuard, find_model, unwrap_optimizer
from gradguard.integrations.hooks import describe_model
from gradguard.policy import PolicyConfig
from gradguard.records import ActionKind
from gradguard.sinks import read_jsonl


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)


def _train(
    model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, nan_at: set[int]
) -> None:
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        x, y = _batch(step)
        nn.functional.mse_loss(model(x), y).backward()
        if step in nan_at:
            model[0].weight.grad[0, 0] = math.nan
        optimizer.step()


def test_a_healthy_run_is_bit_identical_and_logged(tmp_path: Path) -> None:
    plain = _model()
    _train(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9), 30, set())
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with GlobalGuard(log=tmp_path / "run.jsonl") as protection:
        _train(model, optimizer, 30, set())
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    log = read_jsonl(tmp_path / "run.jsonl")
    assert [r.step for r in log.records] == list(range(30))
    assert {r.action for r in log.records} == {ActionKind.PROCEED}
    assert {name for r in log.records for name, _ in r.top} <= {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }
    assert log.header.metadata["optimizer"] == "SGD"
    assert log.header.metadata["model"] == {"class": "Sequential", "recurrent": False}
    (summary,) = protection.summary()
    assert (summary["steps"], summary["skipped"], summary["model"]) == (30, 0, "Sequential")


def test_a_nan_step_is_skipped_without_touching_weights_or_moments(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with GlobalGuard(log=tmp_path / "run.jsonl"):
        _train(model, optimizer, 5, set())
        before = [p.detach().clone() for p in model.parameters()]
        steps_before = [optimizer.state[p]["step"].clone() for p in model.parameters()]
        _train(model, optimizer, 1, {0})  # one step whose gradient holds a NaN
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
        assert all(p.grad is None for p in model.parameters())  # dropped to skip the step
        assert [optimizer.state[p]["step"] for p in model.parameters()] == steps_before
        _train(model, optimizer, 3, set())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = read_jsonl(tmp_path / "run.jsonl").records
    assert records[5].action is ActionKind.SKIP
    assert not records[5].applied
    assert math.isnan(records[5].total_norm)
    assert [r.applied for r in records] == [True] * 5 + [False] + [True] * 3


def test_without_the_hooks_the_nan_reaches_the_weights() -> None:
    model = _model()
    _train(model, torch.optim.SGD(model.parameters(), lr=0.1), 3, {1})
    assert not torch.isfinite(model[0].weight).all()


def test_closure_steps_give_the_guard_gradients_and_loss(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        x, y = _batch(len(losses))
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        losses.append(loss.item())
        return loss

    with GlobalGuard(log=tmp_path / "run.jsonl"):
        for _ in range(3):
            optimizer.step(closure)
        optimizer.step(closure=closure)
    records = read_jsonl(tmp_path / "run.jsonl").records
    assert [r.loss for r in records] == pytest.approx(losses)
    assert all(r.total_norm is not None and r.total_norm > 0 for r in records)


def test_lbfgs_closure_is_judged_once_per_step(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=4)
    x, y = _batch(0)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with GlobalGuard(log=tmp_path / "run.jsonl") as protection:
        for _ in range(2):
            optimizer.step(closure)
    assert protection.summary()[0]["steps"] == 2


def test_one_log_per_optimizer_and_removal(tmp_path: Path) -> None:
    a, b = _model(), _model()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    protection = GlobalGuard(log=tmp_path / "gan.jsonl").install()
    _train(a, opt_a, 2, set())
    _train(b, opt_b, 3, set())
    protection.remove()
    _train(a, opt_a, 2, set())  # no longer guarded: nothing more is logged
    assert protection.logs == [tmp_path / "gan.jsonl", tmp_path / "gan.opt2.jsonl"]
    assert len(read_jsonl(tmp_path / "gan.jsonl").records) == 2
    assert len(read_jsonl(tmp_path / "gan.opt2.jsonl").records) == 3


def test_giving_up_raises_from_optimizer_step(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = PolicyConfig(max_rollbacks=0)
    with (
        GlobalGuard(log=tmp_path / "run.jsonl", policy=policy),
        pytest.raises(TrainingDivergedError),
    ):
        _train(model, optimizer, 50, set(range(3, 50)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert read_jsonl(tmp_path / "run.jsonl").records[-1].action is ActionKind.ABORT


def test_hooked_guard_attached_to_one_optimizer(tmp_path: Path) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hooked = HookedGuard(optimizer, model).attach()
    _train(model, optimizer, 4, {2})
    assert hooked.last is not None and hooked.last.step == 3
    assert hooked.guard.summary()["skipped"] == 1
    hooked.close()
    _train(model, optimizer, 1, set())
    assert hooked.guard.summary()["steps"] == 4
    assert [g["lr"] for g in optimizer.param_groups] == [0.1]
    assert hooked.after_step() is None  # nothing begun


def test_model_discovery_and_description() -> None:
    inner = _model()
    wrapper = nn.ModuleDict({"net": inner, "extra": nn.Linear(2, 2)})
    optimizer = torch.optim.SGD(inner.parameters(), lr=0.1)
    assert find_model(optimizer) is inner  # the tightest module holding them all
    loose = nn.Parameter(torch.zeros(3))
    assert find_model(torch.optim.SGD([loose], lr=0.1)) is None
    hooked = HookedGuard(torch.optim.SGD([loose], lr=0.1))
    assert [name for name, _ in hooked.guard._named] == ["param_groups.0.0"]
    lstm = nn.LSTM(3, 4, num_layers=3)
    assert describe_model(lstm) == {
        "class": "LSTM",
        "recurrent": True,
        "cell": "LSTM",
        "num_layers": 3,
    }
    assert describe_model(nn.RNN(3, 4))["cell"] == "RNN"
    del wrapper


def test_unwrap_and_bad_options() -> None:
    optimizer = torch.optim.SGD(_model().parameters(), lr=0.1)

    class Wrapper:
        def __init__(self, inner: object) -> None:
            self.optimizer = inner

    assert unwrap_optimizer(Wrapper(Wrapper(optimizer))) is optimizer
    with pytest.raises(ConfigError, match=r"torch\.optim\.Optimizer"):
        unwrap_optimizer(object())
    with pytest.raises(ConfigError, match="scheduler= is not available"):
        HookedGuard(optimizer, scheduler=None)


def test_a_backoff_scales_the_step_and_leaves_the_optimizer_settings_alone() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ratios = []
    with GlobalGuard(clip=None, policy=PolicyConfig(skip_budget=0)) as protection:
        for step in range(6):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(torch.randn(8, 3)), torch.randn(8, 1)).backward()
            if step == 3:
                model.weight.grad.fill_(math.nan)  # the first fault backs off (budget 0)
            before, grad = model.weight.detach().clone(), model.weight.grad.clone()
            optimizer.step()
            record = protection.guards[0].last
            assert record is not None
            if record.applied:
                ratios.append(((before - model.weight.detach()) / (0.1 * grad)).mean().item())
            else:
                assert record.action is ActionKind.BACKOFF
            assert optimizer.param_groups[0]["lr"] == 0.1  # restored after every step
    assert ratios == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.5], rel=1e-5)


def test_the_loss_is_read_from_backward_mean_over_accumulated_micro_batches(
    tmp_path: Path,
) -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = []
    original = torch.autograd.backward
    with GlobalGuard(log=tmp_path / "run.jsonl"):
        assert torch.autograd.backward is not original
        for step in range(6):
            optimizer.zero_grad()
            micro = []
            for k in range(3):  # gradient accumulation: three backward calls per step
                x, y = _batch(10 * step + k)
                loss = nn.functional.mse_loss(model(x), y) / 3
                loss.backward()
                micro.append(loss.item())
            torch.autograd.backward(model(x).sum() * 0.0)  # the module-level call is seen too
            micro.append(0.0)
            optimizer.step()
            expected.append(sum(micro) / len(micro))
    assert torch.autograd.backward is original
    records = read_jsonl(tmp_path / "run.jsonl").records
    assert [r.loss for r in records] == pytest.approx(expected, rel=1e-6)


def test_a_loss_spike_seen_through_backward_skips_the_step(tmp_path: Path) -> None:
    # Targets 1e4 times off at one step: the loss jumps, gradients with it; the loss rule names it.
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with GlobalGuard(log=tmp_path / "run.jsonl", capture_loss=True):
        for step in range(60):
            optimizer.zero_grad()
            x, y = _batch(step)
            if step == 50:
                y = y * 1e4
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    records = read_jsonl(tmp_path / "run.jsonl").records
    assert records[50].action is ActionKind.SKIP
    assert records[50].reason.value == "loss_spike"
    assert all(r.loss is not None and math.isfinite(r.loss) for r in records)


def test_capture_loss_off_leaves_backward_alone(tmp_path: Path) -> None:
    original = torch.autograd.backward
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with GlobalGuard(log=tmp_path / "run.jsonl", capture_loss=False):
        assert torch.autograd.backward is original
        _train(model, optimizer, 3, set())
    assert [r.loss for r in read_jsonl(tmp_path / "run.jsonl").records] == [None] * 3
