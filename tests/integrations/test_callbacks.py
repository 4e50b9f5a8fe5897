"""Lightning and Hugging Face callbacks on minimal stand-ins of their base classes.

The callbacks are called here in each framework's order without the framework, which keeps
gradguard's own logic (and older releases' code paths) testable in milliseconds; the real
frameworks run in ``test_lightning_e2e.py`` and ``test_transformers_e2e.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gradguard.errors import ConfigError, MissingDependencyError
from gradguard.integrations import lightning, transformers
from gradguard.integrations._callbacks import FrameworkRelay
from gradguard.policy import PolicyConfig
from gradguard.records import ActionKind, Alert, AlertKind, Reason, Severity, StepRecord
from gradguard.sinks import read_jsonl


class FakeLightningCallback:
    """Lightning's Callback: every hook a no-op."""

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """No-op."""

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """No-op."""


class FakeTrainerCallback:
    """transformers' TrainerCallback with the optimizer-step events."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """No-op."""

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """No-op."""

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """No-op."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """No-op."""


class OldTrainerCallback:
    """A TrainerCallback from before the optimizer-step events."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """No-op."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """No-op."""


class LightningOptimizerLike:
    """Lightning wraps the torch optimizer; gradguard unwraps ``_optimizer``."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer


def _setup() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


def _backward(model: nn.Module, step: int, nan: bool) -> None:
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    nn.functional.mse_loss(model(x), y).backward()
    if nan:
        model[2].bias.grad.fill_(math.inf)


def test_lightning_callback_skips_a_bad_step_and_logs(tmp_path: Path) -> None:
    callback = lightning.callback_class(FakeLightningCallback)(log=tmp_path / "fit.jsonl")
    model, optimizer = _setup()
    wrapped = LightningOptimizerLike(optimizer)
    for step in range(6):
        optimizer.zero_grad()
        _backward(model, step, nan=step == 3)
        callback.on_before_optimizer_step(None, model, wrapped)  # Lightning, after backward
        before = model[2].bias.detach().clone()
        optimizer.step()  # the post-hook finishes the guard's step
        if step == 3:
            assert torch.equal(before, model[2].bias)
    assert callback.summary()[0]["skipped"] == 1
    callback.on_fit_end(None, model)
    log = read_jsonl(tmp_path / "fit.jsonl")
    assert [r.action for r in log.records].count(ActionKind.SKIP) == 1
    assert log.records[3].top[0][0] == "2.bias"  # named after the LightningModule
    assert log.header.metadata["model"]["recurrent"] is False
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_transformers_callback_uses_the_optimizer_step_events(tmp_path: Path) -> None:
    callback = transformers.callback_class(FakeTrainerCallback)(log=tmp_path / "hf.jsonl")
    model, optimizer = _setup()
    callback.on_train_begin(None, None, None, model=model, optimizer=optimizer)
    for step in range(5):
        optimizer.zero_grad()
        _backward(model, step, nan=step == 1)
        callback.on_pre_optimizer_step(None, None, None, model=model, optimizer=optimizer)
        optimizer.step()
        callback.on_optimizer_step(None, None, None, model=model, optimizer=optimizer)
    callback.on_train_end(None, None, None, model=model, optimizer=optimizer)
    records = read_jsonl(tmp_path / "hf.jsonl").records
    assert [r.applied for r in records] == [True, False, True, True, True]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_old_transformers_falls_back_to_optimizer_hooks(tmp_path: Path) -> None:
    callback = transformers.callback_class(OldTrainerCallback)(log=tmp_path / "hf.jsonl")
    model, optimizer = _setup()
    callback.on_train_begin(None, None, None, model=model, optimizer=optimizer)
    for step in range(4):
        optimizer.zero_grad()
        _backward(model, step, nan=step == 2)
        optimizer.step()
    callback.on_train_end(None, None, None)
    optimizer.zero_grad()
    _backward(model, 9, nan=False)
    optimizer.step()  # hooks removed at the end of training
    records = read_jsonl(tmp_path / "hf.jsonl").records
    assert [r.applied for r in records] == [True, True, False, True]


def test_missing_frameworks_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lightning.pytorch.callbacks", "pytorch_lightning.callbacks", "transformers"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    monkeypatch.delitem(lightning.__dict__, "GradguardCallback", raising=False)
    monkeypatch.delitem(transformers.__dict__, "GradguardTrainerCallback", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install gradguard\[lightning\]"):
        _ = lightning.GradguardCallback
    with pytest.raises(MissingDependencyError, match=r"pip install gradguard\[transformers\]"):
        _ = transformers.GradguardTrainerCallback
    with pytest.raises(AttributeError):
        _ = lightning.Nothing  # type: ignore[attr-defined]


class RecordingSink:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[Any] = []

    def write(self, record: Any) -> None:
        self.records.append(record)

    def close(self) -> None:
        """Nothing to release."""


@pytest.mark.parametrize("rank_zero", [True, False])
def test_only_rank_zero_reports(
    rank_zero: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under torchrun every rank runs the callback; alerts and sinks speak on rank 0 only."""
    monkeypatch.setattr("gradguard.sinks.rank.is_rank_zero", lambda: rank_zero)
    monkeypatch.setattr("gradguard.integrations._callbacks.is_rank_zero", lambda: rank_zero)
    sink = RecordingSink()
    callback = lightning.callback_class(FakeLightningCallback)(sinks=[sink])
    model, optimizer = _setup()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.callbacks.gradguard"):
        for step in range(4):
            optimizer.zero_grad()
            _backward(model, step, nan=step == 2)
            callback.on_before_optimizer_step(None, model, optimizer)
            optimizer.step()
    assert callback.summary()[0]["skipped"] == 1  # every rank decides alike
    assert len(sink.records) == (4 if rank_zero else 0)
    assert bool(caplog.records) is rank_zero


def test_state_round_trip_and_bad_state(tmp_path: Path) -> None:
    callback = lightning.callback_class(FakeLightningCallback)()
    model, optimizer = _setup()
    for step in range(5):
        optimizer.zero_grad()
        _backward(model, step, nan=step == 1)
        callback.on_before_optimizer_step(None, model, optimizer)
        optimizer.step()
    state = callback.state_dict()
    restored = lightning.callback_class(FakeLightningCallback)()
    restored.load_state_dict(state)  # before any step: applied when the guard is made
    optimizer.zero_grad()
    _backward(model, 7, nan=False)
    restored.on_before_optimizer_step(None, model, optimizer)
    optimizer.step()
    summary = restored.summary()[0]
    assert (summary["steps"], summary["skipped"]) == (6, 1)
    restored.on_fit_end(None, model)  # a checkpoint saved after training still has the state
    assert restored.state_dict()["guards"][0]["guard"]["step"] == 6
    with pytest.raises(ConfigError, match=r"version None"):
        restored.load_state_dict({"guards": []})


class FakeTrainer:
    """What the Lightning callback reads of a Trainer in mixed precision with accumulation 2."""

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.precision_plugin = type("Plugin", (), {"scaler": scaler})()
        self.accumulate_grad_batches = 2
        self.should_stop = False


def test_lightning_loss_is_taken_back_from_scaling_and_accumulation(tmp_path: Path) -> None:
    """Lightning hands ``backward`` loss / accumulate_grad_batches * scale: the guard wants loss."""
    callback = lightning.callback_class(FakeLightningCallback)(log=tmp_path / "fit.jsonl")
    model, optimizer = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    trainer = FakeTrainer(scaler)
    micro = []
    for k in range(2):
        g = torch.Generator().manual_seed(k)
        x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
        loss = nn.functional.mse_loss(model(x), y)
        micro.append(loss.item())
        handed = scaler.scale(loss / trainer.accumulate_grad_batches)
        callback.on_before_backward(trainer, model, handed)
        handed.backward()
    scaler.unscale_(optimizer)  # Lightning unscales before on_before_optimizer_step
    callback.on_before_optimizer_step(trainer, model, optimizer)
    scaler.step(optimizer)
    scaler.update()
    callback.on_fit_end(trainer, model)
    (record,) = read_jsonl(tmp_path / "fit.jsonl").records
    assert record.loss == pytest.approx(sum(micro) / 2, rel=1e-6)


def test_transformers_callback_stops_the_trainer_when_the_guard_gives_up() -> None:
    callback = transformers.callback_class(FakeTrainerCallback)(
        policy=PolicyConfig(max_rollbacks=1)
    )
    model, optimizer = _setup()
    control = type("Control", (), {"should_training_stop": False, "should_save": False})()
    events = {"model": model, "optimizer": optimizer}
    callback.on_train_begin(None, None, control, **events)
    for step in range(60):
        optimizer.zero_grad()
        _backward(model, step, nan=step >= 5)  # the run breaks for good at step 5
        callback.on_pre_optimizer_step(None, None, control, **events)
        optimizer.step()
        callback.on_optimizer_step(None, None, control, **events)
        if control.should_training_stop:
            break
    assert control.should_training_stop
    assert callback.gave_up is not None and "stopped the run" in str(callback.gave_up)
    assert step < 40
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_the_relay_counts_and_logs_an_incident_once(caplog: pytest.LogCaptureFixture) -> None:
    """An incident's repeats reach the metrics' total with repeats only, never a log line."""
    relay = FrameworkRelay(logging.getLogger("tests.relay"))
    news = Alert(0, Severity.WARNING, AlertKind.GROWTH_TREND, "the norm keeps growing")
    info = Alert(0, Severity.INFO, AlertKind.LOSS_HIGH, "the loss is high")
    with caplog.at_level(logging.INFO, logger="tests.relay"):
        for step in range(5):  # the warning at steps 0-4: told at 0, then four repeats
            alerts = (dataclasses.replace(news, step=step, repeat=step > 0),)
            alerts += (dataclasses.replace(info, step=step),) if step == 2 else ()
            relay.write(StepRecord(step, ActionKind.PROCEED, Reason.GROWTH_TREND, alerts=alerts))
    metrics = relay.metrics()
    assert (metrics["gradguard/alerts"], metrics["gradguard/alerts_with_repeats"]) == (2.0, 6.0)
    assert [r.getMessage() for r in caplog.records] == [
        "gradguard step 0: the norm keeps growing",
        "gradguard step 2: the loss is high",
    ]


def test_the_relay_logs_a_scalers_routine_overflow_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A GradScaler warming up from 2**32 overflows dozens of times: not a warning each."""
    relay = FrameworkRelay(logging.getLogger("tests.relay"))
    overflow = StepRecord(0, ActionKind.SKIP, Reason.SCALER_OVERFLOW, applied=False, message="o")
    fault = StepRecord(1, ActionKind.SKIP, Reason.NONFINITE_GRAD, applied=False, message="f")
    with caplog.at_level(logging.INFO, logger="tests.relay"):
        relay.write(overflow)
        relay.write(fault)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "gradguard step 0: o"),
        (logging.WARNING, "gradguard step 1: f"),
    ]
    assert relay.metrics()["gradguard/skipped"] == 2.0
