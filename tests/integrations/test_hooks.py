"""Global and per-optimizer step hooks: skip, clip, closures, logs, names, removal."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from gradguard.errors import ConfigError, TrainingDivergedError
from gradguard.integrations import GlobalGuard, HookedGuard, find_model, unwrap_optimizer
from gradguard.integrations._callbacks import LossMeter
from gradguard.integrations.hooks import LossTap, add_loss, describe_model
from gradguard.policy import PolicyConfig
from gradguard.records import ActionKind, Severity
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


def _lbfgs(lr: float, max_iter: int) -> tuple[nn.Module, torch.optim.LBFGS]:
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    return net, torch.optim.LBFGS(net.parameters(), lr=lr, max_iter=max_iter)


def _closure(
    net: nn.Module, optimizer: torch.optim.Optimizer, losses: list[float], nan: bool = False
) -> Callable[[], torch.Tensor]:
    x, y = _batch(0)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        losses.append(loss.item())
        if nan and len(losses) == 1:  # the first evaluation of the step only
            net.weight.grad[0, 0] = math.nan
        return loss

    return closure


def test_lbfgs_under_the_hooks_is_bit_identical_and_logs_each_step_starting_loss(
    tmp_path: Path,
) -> None:
    # L-BFGS evaluates the closure up to max_iter times per step: the guard judges the first
    # evaluation (the loss where the step starts, which step() returns), never their mean.
    def train(guarded: bool) -> tuple[nn.Module, list[list[float]], list[float]]:
        net, optimizer = _lbfgs(lr=0.5, max_iter=5)
        per_step: list[list[float]] = []
        returned = []
        with GlobalGuard(log=tmp_path / "run.jsonl") if guarded else contextlib.nullcontext():
            for _ in range(3):
                per_step.append([])
                loss = optimizer.step(_closure(net, optimizer, per_step[-1]))
                returned.append(loss.detach().item())
        return net, per_step, returned

    plain, plain_evals, plain_returned = train(guarded=False)
    net, evals, returned = train(guarded=True)
    assert evals == plain_evals  # as many evaluations, at the same points
    assert all(len(e) > 1 for e in evals)
    assert torch.equal(net.weight, plain.weight) and torch.equal(net.bias, plain.bias)
    assert returned == plain_returned
    records = read_jsonl(tmp_path / "run.jsonl").records
    assert [r.loss for r in records] == pytest.approx([e[0] for e in evals], rel=1e-6)
    assert [r.loss for r in records] != pytest.approx([sum(e) / len(e) for e in evals])


def test_lbfgs_skip_and_back_off_hold_for_the_whole_step() -> None:
    # L-BFGS reads its rate before the first closure call: a back-off decided on that call
    # would come too late, so the hook evaluates the closure before the optimizer starts.
    net, optimizer = _lbfgs(lr=0.8, max_iter=1)
    with GlobalGuard(clip=None, policy=PolicyConfig(skip_budget=0)) as protection:
        for _ in range(2):
            optimizer.step(_closure(net, optimizer, []))
        before = [p.detach().clone() for p in net.parameters()]
        optimizer.step(_closure(net, optimizer, [], nan=True))  # the first fault backs off
        record = protection.guards[0].last
        assert record is not None and record.action is ActionKind.BACKOFF
        assert not record.applied
        assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
        optimizer.step(_closure(net, optimizer, []))
        record = protection.guards[0].last
        assert record is not None and record.applied and record.lr == pytest.approx(0.4)
        assert protection.loss_tap is not None and protection.loss_tap.calls == 0
    # The same run by hand: the faulty step changes nothing, the next one runs at half the rate.
    plain, plain_optimizer = _lbfgs(lr=0.8, max_iter=1)
    for _ in range(2):
        plain_optimizer.step(_closure(plain, plain_optimizer, []))
    closure = _closure(plain, plain_optimizer, [])
    plain_optimizer.step(lambda: (closure(), plain_optimizer.zero_grad(set_to_none=True))[0])
    plain_optimizer.param_groups[0]["lr"] = 0.4
    plain_optimizer.step(_closure(plain, plain_optimizer, []))
    assert torch.equal(net.weight, plain.weight) and torch.equal(net.bias, plain.bias)
    assert optimizer.param_groups[0]["lr"] == 0.8  # restored after the step


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


def test_the_loss_is_the_sum_of_the_accumulated_micro_batch_losses(tmp_path: Path) -> None:
    # Each micro-batch loss is divided by the accumulation count, as scripts do: the logged loss
    # must be the batch loss (the mean of the undivided losses), not that divided once more.
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batch_losses = []
    original = torch.autograd.backward
    with GlobalGuard(log=tmp_path / "run.jsonl"):
        assert torch.autograd.backward is not original
        for step in range(6):
            optimizer.zero_grad()
            undivided = []
            for k in range(4):  # gradient accumulation: four backward calls per step
                x, y = _batch(10 * step + k)
                loss = nn.functional.mse_loss(model(x), y)
                undivided.append(loss.item())
                (loss / 4).backward()
            torch.autograd.backward(model(x).sum() * 0.0)  # the module-level call is seen too
            optimizer.step()
            batch_losses.append(sum(undivided) / 4)
    assert torch.autograd.backward is original
    records = read_jsonl(tmp_path / "run.jsonl").records
    assert [r.loss for r in records] == pytest.approx(batch_losses, rel=1e-6)


def test_loss_tap_sums_counts_and_forgets_on_take() -> None:
    seen: list[int] = []
    tap = LossTap(on_backward=seen.append).install()
    try:
        w = torch.ones(2, requires_grad=True)
        (w.sum() * 0.5).backward()  # 1.0
        (w * 3.0).backward(torch.ones(2))  # not a scalar: counted, not summed
        (w.sum() * 1.5).backward()  # 3.0
        assert tap.calls == 3
        total = tap.take()
        assert total is not None and total.item() == 4.0
        assert (tap.calls, tap.take()) == (0, None)
        assert seen == [1, 2, 3]
    finally:
        tap.remove()


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


def _collect(notes: list[str]) -> Callable[[str, Severity], None]:
    return lambda message, severity: notes.append(f"{severity.value}: {message}")


def _update_by_hand(model: nn.Module, steps: int) -> None:
    for step in range(steps):  # as pytorch/examples' word_language_model: no optimizer
        model.zero_grad()
        x, y = _batch(step)
        nn.functional.mse_loss(model(x), y).backward()
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-0.1)


def test_backward_without_a_step_is_noted_early_and_once() -> None:
    notes: list[str] = []
    with GlobalGuard(notify=_collect(notes)) as protection:
        _update_by_hand(_model(), 25)
    assert protection.backward_calls == 25
    assert len(notes) == 1
    assert notes[0].startswith("warning: 10 backward() calls and no optimizer.step() yet")
    assert "NOT protected" in notes[0] and "p.data.add_" in notes[0]
    with pytest.warns(UserWarning, match="NOT protected"), GlobalGuard():  # no notify: a warning
        _update_by_hand(_model(), 10)


def test_a_long_gradient_accumulation_takes_the_note_back_and_raises_the_bar() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    notes: list[str] = []
    with GlobalGuard(notify=_collect(notes)):
        for step in range(3):
            optimizer.zero_grad()
            for k in range(16):  # noted at the 10th call of the first step, never after
                x, y = _batch(16 * step + k)
                (nn.functional.mse_loss(model(x), y) / 16).backward()
            optimizer.step()
        _update_by_hand(model, 31)  # below twice the longest accumulation seen (32)
        assert len(notes) == 3
        _update_by_hand(model, 1)
    assert notes[0].startswith("warning: 10 backward() calls and no optimizer.step() yet")
    assert notes[1] == (
        "info: optimizer.step() came after 16 backward() calls (gradient accumulation): the steps "
        "are guarded after all."
    )
    assert notes[2].startswith("info: naming the parameters of SGD from model Sequential")
    assert notes[3].startswith(
        "warning: 32 backward() calls and no optimizer.step() since the last one"
    )


def test_the_model_that_names_the_tensors_is_said() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    notes: list[str] = []
    with GlobalGuard(notify=_collect(notes)) as protection:
        _train(model, optimizer, 2, set())
    assert notes == [
        "info: naming the parameters of SGD from model Sequential found in "
        "test_hooks.py:_train() as `model`"
    ]
    assert protection.guards[0].model is model
    notes.clear()
    with GlobalGuard(notify=_collect(notes), models=[model]):
        _train(model, optimizer, 1, set())
    assert notes == [
        "info: naming the parameters of SGD from model Sequential (models[0] of GlobalGuard)"
    ]


def test_tensors_spread_over_several_modules_are_named_after_the_variables() -> None:
    torch.manual_seed(0)
    encoder, head = nn.Linear(4, 8), nn.Linear(8, 1)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=0.01)
    notes: list[str] = []
    with GlobalGuard(notify=_collect(notes)) as protection:
        for step in range(2):
            optimizer.zero_grad()
            x, y = _batch(step)
            nn.functional.mse_loss(head(torch.relu(encoder(x))), y).backward()
            optimizer.step()
    assert notes == [
        "info: naming the parameters of Adam from the modules `encoder`, `head` found in "
        "test_hooks.py:test_tensors_spread_over_several_modules_are_named_after_the_variables() "
        "(no single nn.Module holds them all)"
    ]
    names = [name for name, _ in protection.guards[0].guard._named]
    assert names == ["encoder.weight", "encoder.bias", "head.weight", "head.bias"]
    assert protection.summary()[0]["model"] == "encoder+head"


def test_loose_tensors_are_named_by_position_and_the_note_says_why() -> None:
    notes: list[str] = []
    loose = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([loose], lr=0.1)
    with GlobalGuard(notify=_collect(notes)) as protection:
        optimizer.zero_grad()
        (loose**2).sum().backward()
        optimizer.step()
    assert notes == [
        "info: no nn.Module holding the 1 tensor of SGD was found: they are named by position, "
        "param_groups.G.I (group G, index I); to name them, put them in one nn.Module (an "
        "nn.ParameterDict will do) or pass the model to GlobalGuard(models=[...])"
    ]
    assert [name for name, _ in protection.guards[0].guard._named] == ["param_groups.0.0"]
    assert protection.summary()[0]["model"] == "SGD tensors"
    assert torch.allclose(loose, torch.full((3,), 0.8))  # and it is guarded: the step applied


def test_a_model_held_deeper_than_a_variable_is_found_among_live_objects() -> None:
    holder = {"nets": [_model()]}
    optimizer = torch.optim.SGD(holder["nets"][0].parameters(), lr=0.1)
    notes: list[str] = []
    with GlobalGuard(notify=_collect(notes)) as protection:
        optimizer.zero_grad()
        x, y = _batch(0)
        nn.functional.mse_loss(holder["nets"][0](x), y).backward()
        optimizer.step()
    assert notes == [
        "info: naming the parameters of SGD from model Sequential found in the live objects "
        "(deeper than a variable or its attribute)"
    ]
    assert protection.guards[0].model is holder["nets"][0]


def test_add_loss_sums_detached_one_element_float_losses_and_ignores_the_rest() -> None:
    w = torch.tensor([2.0], requires_grad=True)
    total = add_loss(None, w * 1.0)
    assert total is not None and total.shape == () and not total.requires_grad
    total = add_loss(total, torch.tensor(4.0, dtype=torch.float64), factor=0.5)
    assert total is not None and total.dtype == torch.float32 and total.item() == 4.0
    for not_a_loss in (torch.tensor(3), torch.ones(2), 1.0, None):
        assert add_loss(total, not_a_loss) is None


def test_loss_meter_means_the_losses_it_counted_and_starts_over() -> None:
    meter = LossMeter()
    meter.add(torch.tensor(1.0))
    meter.add(torch.tensor(3.0), factor=2.0)  # a loss divided by 2 accumulated micro-batches
    meter.add(torch.ones(3))  # not a loss: not counted in the mean
    mean = meter.take()
    assert mean is not None and mean.item() == 3.5
    assert meter.take() is None
