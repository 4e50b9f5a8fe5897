"""Lightning and Hugging Face callbacks, driven like their frameworks drive them.

Neither framework is installed in the development environment (together some 200 MB and 30
packages), so the callback classes are built on minimal stand-ins of ``Callback`` and
``TrainerCallback`` and called in the framework's order: the logic under test is gradguard's.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from gradguard.errors import MissingDependencyError
from gradguard.integrations import lightning, transformers
from gradguard.records import ActionKind
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
