"""GradguardTrainerCallback inside a real Hugging Face ``Trainer`` (a tiny local model, no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf  # the `tests` extra, which make installs
from torch import nn

from gradguard.integrations import transformers as hf_integration
from gradguard.integrations.transformers import GradguardTrainerCallback
from gradguard.sinks import read_jsonl

BATCH = 8
W = torch.randn(8, 1, generator=torch.Generator().manual_seed(123))


class TinyConfig(tf.PretrainedConfig):
    """Configuration of :class:`TinyRegressor`."""

    model_type = "gradguard-tiny-regressor"

    def __init__(self, hidden: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden = hidden


class TinyRegressor(tf.PreTrainedModel):
    """An 8-16-1 tanh MLP that returns its MSE loss as HF models do (``output.loss``)."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        hidden = config.hidden
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.losses: list[float] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        out = self.net(x)
        loss = None if labels is None else nn.functional.mse_loss(out, labels)
        if loss is not None and self.training:
            self.losses.append(loss.item())  # the reference the guard's loss is checked against
        return tf.utils.ModelOutput(loss=loss, logits=out)


class Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Seeded samples in a fixed order; the samples of the ``corrupt`` batches get scaled labels."""

    def __init__(self, samples: int, corrupt: tuple[int, ...] = (), factor: float = 1000.0):
        self.samples, self.corrupt, self.factor = samples, set(corrupt), factor

    def __iter__(self) -> Any:
        for i in range(self.samples):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(8, generator=g)
            y = x @ W + 0.1 * torch.randn(1, generator=g)
            yield {"x": x, "labels": y * self.factor if i // BATCH in self.corrupt else y}


def _eval_mse(model: TinyRegressor) -> float:
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        return nn.functional.mse_loss(model.net(x), x @ W).item()


class Reporter(tf.TrainerCallback):  # type: ignore[misc]
    """Stands for a reporting integration (TensorBoard, W&B) listed before the guard."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.seen.append(dict(logs or {}))


def _train(
    tmp_path: Path,
    callback: Any,
    steps: int,
    corrupt: tuple[int, ...] = (),
    resume: str | None = None,
    reporter: Reporter | None = None,
    **options: Any,
) -> tuple[TinyRegressor, Any]:
    torch.manual_seed(0)
    model = TinyRegressor(TinyConfig())
    accumulation = options.get("gradient_accumulation_steps", 1)
    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": steps,
        "per_device_train_batch_size": BATCH,
        "learning_rate": 0.03,
        "lr_scheduler_type": "constant",
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    settings.update(options)
    trainer = tf.Trainer(
        model=model,
        args=tf.TrainingArguments(**settings),
        train_dataset=Stream(steps * BATCH * accumulation, corrupt),
        callbacks=[c for c in (reporter, callback) if c is not None],
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


def test_default_clipping_run_is_rescued_and_logged(tmp_path: Path) -> None:
    """max_grad_norm=1.0 left on; every 8th batch has labels x1000."""
    corrupt = tuple(range(5, 80, 8))
    plain, _ = _train(tmp_path, None, 80, corrupt)
    callback, reporter = GradguardTrainerCallback(log=tmp_path / "hf.jsonl"), Reporter()
    guarded, trainer = _train(tmp_path, callback, 80, corrupt, reporter=reporter)
    assert _eval_mse(guarded) <= 1.25 * _eval_mse(plain)  # measured: 0.088 vs 0.123
    assert trainer.args.max_grad_norm == 1.0  # handed back after training
    records = read_jsonl(tmp_path / "hf.jsonl").records
    assert len(records) == 80
    # The guard measured the gradients before clipping (the Trainer's would all be <= 1).
    assert max(r.total_norm or 0.0 for r in records) > 100.0
    assert sum(not r.applied for r in records) >= len(corrupt) - 2
    # Every step's loss reached the guard: the model's own loss of that batch.
    assert [r.loss for r in records] == pytest.approx(guarded.losses, rel=1e-6)
    # The guard's numbers are in the Trainer's log history.
    history = [h for h in trainer.state.log_history if "loss" in h]
    skipped = sum(h["gradguard/skipped"] for h in history)
    assert skipped == callback.summary()[0]["skipped"] == sum(not r.applied for r in records)
    # ... and reached a reporter that was listed before the guard.
    assert sum(logs.get("gradguard/skipped", 0) for logs in reporter.seen) == skipped


def test_healthy_run_is_bit_identical_to_the_trainers_clipping(tmp_path: Path) -> None:
    plain, _ = _train(tmp_path, None, 30, learning_rate=0.1)
    callback = GradguardTrainerCallback()
    guarded, _ = _train(tmp_path, callback, 30, learning_rate=0.1)
    for a, b in zip(plain.parameters(), guarded.parameters(), strict=True):
        assert torch.equal(a, b)
    summary = callback.summary()[0]
    assert summary["steps"] == summary["applied"] == 30
    assert summary["clipped"] > 0  # the Trainer's bound of 1.0, applied by the guard


def test_accumulated_loss_is_the_mean_of_the_micro_batches(tmp_path: Path) -> None:
    callback = GradguardTrainerCallback(log=tmp_path / "hf.jsonl")
    model, _ = _train(tmp_path, callback, 6, gradient_accumulation_steps=3)
    records = read_jsonl(tmp_path / "hf.jsonl").records
    micro = model.losses
    assert len(micro) == 18
    expected = [sum(micro[3 * k : 3 * k + 3]) / 3 for k in range(6)]
    assert [r.loss for r in records] == pytest.approx(expected, rel=1e-6)


def test_resume_from_a_checkpoint_restores_the_guard(tmp_path: Path) -> None:
    first = GradguardTrainerCallback()
    _train(tmp_path, first, 20, corrupt=(12,), save_strategy="steps", save_steps=20)
    before = first.summary()[0]
    assert before["steps"] == 20 and before["skipped"] == 1
    second = GradguardTrainerCallback()
    checkpoint = str(tmp_path / "out" / "checkpoint-20")
    _train(tmp_path, second, 30, resume=checkpoint, ignore_data_skip=True)
    after = second.summary()[0]
    assert after["steps"] == 30  # counting goes on from the checkpoint
    assert after["skipped"] == 1  # the skip before the checkpoint is remembered
    assert after["monitor"]["steps"] == before["monitor"]["steps"] + 10


class FakeAccelerated:
    """Accelerate's optimizer wrapper in fp16: holds the torch optimizer and the GradScaler."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.optimizer, self.scaler = optimizer, scaler

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()


def test_fp16_gradients_are_unscaled_before_the_guard_measures() -> None:
    """In the Trainer's fp16 order the scaler unscales inside ``step``: too late for the guard,
    and a step whose gradients were dropped would raise "No inf checks were recorded"."""
    callback = hf_integration.callback_class(tf.TrainerCallback)()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    opt = FakeAccelerated(sgd, torch.amp.GradScaler("cpu"))
    events = {"model": model, "optimizer": opt}
    callback.on_train_begin(None, None, None, **events)
    for step in range(8):
        model.zero_grad()
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
        loss = nn.functional.mse_loss(model(x), y) * (torch.nan if step == 6 else 1.0)
        opt.scaler.scale(loss).backward()
        callback.on_pre_optimizer_step(None, None, None, **events)
        opt.step()  # the skipped step (gradients dropped) must not raise
        callback.on_optimizer_step(None, None, None, **events)
    callback.on_train_end(None, None, None, **events)
    summary = callback.summary()[0]
    assert summary["skipped"] == 1
    assert 0.1 < summary["monitor"]["max_norm"] < 10.0  # unscaled: scaled norms are 65536x
    assert all(torch.isfinite(p).all() for p in model.parameters())
