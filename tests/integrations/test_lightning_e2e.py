"""GradguardCallback inside a real Lightning ``Trainer``: tiny regressions, a few dozen steps."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L  # the `tests` extra, which make installs
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gradguard.integrations.lightning import GradguardCallback
from gradguard.policy import PolicyConfig
from gradguard.sinks import read_jsonl

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers:UserWarning",
    "ignore:.*(litlogger|LitLogger).*:UserWarning",
    "ignore:.*LeafSpec.*:FutureWarning",
)

BATCH = 8
W = torch.randn(8, 1, generator=torch.Generator().manual_seed(123))


class Regression(L.LightningModule):
    """An 8-16-1 tanh MLP under SGD; ``nan_from`` makes every loss from that batch on NaN."""

    def __init__(self, lr: float = 0.05, nan_from: int | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
        self.lr, self.nan_from = lr, nan_from
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        if self.nan_from is not None and self.global_step >= self.nan_from:
            loss = loss * math.nan
        self.losses.append(loss.item())  # the reference the guard's loss is checked against
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class ManualRegression(Regression):
    """The same model under manual optimisation."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        opt.zero_grad()
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        opt.step()
        return loss


def _data(batches: int, corrupt: tuple[int, ...] = (), factor: float = 300.0) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batches * BATCH, 8, generator=g)
    y = x @ W + 0.1 * torch.randn(batches * BATCH, 1, generator=g)
    for c in corrupt:
        y[c * BATCH : (c + 1) * BATCH] *= factor
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def _eval_mse(module: Regression) -> float:
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return nn.functional.mse_loss(module.net(x), x @ W).item()


def _fit(
    tmp_path: Path,
    callback: Any,
    data: DataLoader,
    module: Regression | None = None,
    ckpt_path: str | None = None,
    **trainer_options: Any,
) -> tuple[Regression, Any]:
    torch.manual_seed(0)
    module = module or Regression()
    options: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        "callbacks": [callback] if callback is not None else [],
    }
    options.update(trainer_options)
    trainer = L.Trainer(**options)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module, trainer


def test_exploding_run_is_rescued_and_every_step_gets_its_loss(tmp_path: Path) -> None:
    """Default settings (no clipping), accumulation 2: the guard skips the poisoned steps."""
    data = _data(80, corrupt=(20, 21, 40))
    plain, _ = _fit(tmp_path, None, data, accumulate_grad_batches=2)
    callback = GradguardCallback(log=tmp_path / "fit.jsonl")
    csv_logger = L.pytorch.loggers.CSVLogger(tmp_path, name="csv")
    guarded, _ = _fit(
        tmp_path, callback, data, logger=csv_logger, log_every_n_steps=1, accumulate_grad_batches=2
    )
    assert _eval_mse(plain) > 10.0  # unprotected, the run is ruined
    assert _eval_mse(guarded) < 0.2
    records = read_jsonl(tmp_path / "fit.jsonl").records
    assert len(records) == 40
    # The guard judges the mean of the two micro-batch losses training_step returned.
    micro = guarded.losses
    for record in records:
        expected = (micro[2 * record.step] + micro[2 * record.step + 1]) / 2
        assert record.loss == pytest.approx(expected, rel=1e-5)
    assert callback.summary()[0]["skipped"] >= 1  # summary() still answers after fit
    # The trainer's logger received the guard's numbers.
    with open(next(tmp_path.glob("csv/*/metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    skipped = sum(float(r["gradguard/skipped"]) for r in rows if r.get("gradguard/skipped"))
    assert skipped == callback.summary()[0]["skipped"]
    norms = [float(r["gradguard/grad_norm"]) for r in rows if r.get("gradguard/grad_norm")]
    assert max(norms) == pytest.approx(max(r.total_norm or 0.0 for r in records), rel=1e-6)


def test_manual_optimisation_skips_the_poisoned_step(tmp_path: Path) -> None:
    callback = GradguardCallback(log=tmp_path / "manual.jsonl")
    module, _ = _fit(tmp_path, callback, _data(24, corrupt=(15,)), module=ManualRegression())
    records = read_jsonl(tmp_path / "manual.jsonl").records
    assert [r.step for r in records if not r.applied] == [15]
    assert [r.loss for r in records] == pytest.approx(module.losses, rel=1e-6)
    assert _eval_mse(module) < 1.0


def test_healthy_run_with_gradient_clip_val_is_bit_identical(tmp_path: Path) -> None:
    """The guard measures before Lightning clips, and changes nothing on a healthy run."""
    plain, _ = _fit(tmp_path, None, _data(30), gradient_clip_val=0.5)
    callback = GradguardCallback()
    guarded, _ = _fit(tmp_path, callback, _data(30), gradient_clip_val=0.5)
    for a, b in zip(plain.parameters(), guarded.parameters(), strict=True):
        assert torch.equal(a, b)
    summary = callback.summary()[0]
    assert summary["steps"] == summary["applied"] == 30
    # The guard saw the gradients before Lightning's clipping: norms above the 0.5 bound.
    assert summary["monitor"]["max_norm"] > 0.5


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty:UserWarning")
def test_resume_from_a_checkpoint_restores_the_guard(tmp_path: Path) -> None:
    def checkpoints() -> Any:
        return L.pytorch.callbacks.ModelCheckpoint(
            dirpath=tmp_path / "ckpt", every_n_train_steps=20, save_top_k=-1
        )

    first = GradguardCallback()
    _fit(
        tmp_path,
        first,
        _data(20, corrupt=(12,)),
        callbacks=[first, checkpoints()],
        enable_checkpointing=True,
    )
    before = first.summary()[0]
    assert before["steps"] == 20 and before["skipped"] == 1
    saved = torch.load(tmp_path / "ckpt" / "epoch=0-step=20.ckpt", weights_only=True)
    assert saved["callbacks"]["GradguardCallback"]["guards"][0]["guard"]["step"] == 20

    second = GradguardCallback()
    _fit(
        tmp_path,
        second,
        _data(20),
        ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=20.ckpt"),
        max_epochs=2,
        callbacks=[second, checkpoints()],
        enable_checkpointing=True,
    )
    after = second.summary()[0]
    assert after["steps"] == 40  # counting goes on from the checkpoint
    assert after["skipped"] == 1  # the skip of the first run is remembered
    assert after["monitor"]["steps"] == before["monitor"]["steps"] + 20


def test_giving_up_stops_the_trainer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callback = GradguardCallback(policy=PolicyConfig(max_rollbacks=1))
    module = Regression(nan_from=10)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.callbacks.gradguard"):
        _, trainer = _fit(tmp_path, callback, _data(200), module=module)
    assert callback.gave_up is not None
    assert trainer.should_stop
    assert trainer.global_step < 60  # stopped long before the epoch's 200 steps
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any("stopped the run" in r.getMessage() for r in caplog.records)
