"""Rescue inside the frameworks: each framework's own clipping alone vs. the gradguard callback.

Lightning (default: no clipping, and ``gradient_clip_val=1.0``) and the Hugging Face Trainer
(default ``max_grad_norm=1.0``) train a tiny 8-16-1 regression on a stream whose poisoned
batches have their labels scaled. Each row is one seed; the final evaluation MSE of the run
with the framework alone and with the callback is printed side by side, and their ratio
(guarded / framework alone; below 1 the guard helped, 1 on healthy runs means bit-identical).

Usage: .venv/bin/python benchmarks/frameworks.py [--seeds N] [--skip-budget N]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import transformers as tf
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from gradguard.integrations.lightning import GradguardCallback
from gradguard.integrations.transformers import GradguardTrainerCallback
from gradguard.policy import PolicyConfig

BATCH, STEPS = 8, 120
OPTIONS: dict[str, Any] = {}
"""Guard options of both callbacks (``--skip-budget`` sets a policy)."""

# name: (poisoned batches, label factor)
POISON: dict[str, tuple[tuple[int, ...], float]] = {
    "healthy": ((), 1.0),
    "every 8th x1000": (tuple(range(5, STEPS, 8)), 1000.0),
    "pair at 40 x300": ((40, 41), 300.0),
    "every 5th x100": (tuple(range(10, STEPS, 5)), 100.0),
}


class Stream(IterableDataset):  # type: ignore[type-arg]
    """Seeded samples in a fixed order; the poisoned batches' labels are scaled."""

    def __init__(self, seed: int, poison: tuple[int, ...], factor: float) -> None:
        self.seed, self.poison, self.factor = seed, set(poison), factor
        self.w = torch.randn(8, 1, generator=torch.Generator().manual_seed(1000 + seed))

    def __iter__(self) -> Any:
        for i in range(STEPS * BATCH):
            g = torch.Generator().manual_seed(self.seed * 100_003 + i)
            x = torch.randn(8, generator=g)
            y = x @ self.w + 0.1 * torch.randn(1, generator=g)
            yield {"x": x, "labels": y * self.factor if i // BATCH in self.poison else y}

    def eval_mse(self, net: nn.Module) -> float:
        x = torch.randn(512, 8, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            return nn.functional.mse_loss(net(x), x @ self.w).item()


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


class LitRegression(L.LightningModule):
    """The regression under SGD (lr 0.05)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self.net(batch["x"]), batch["labels"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def lightning_run(stream: Stream, guarded: bool, clip: float | None, root: Path) -> float:
    torch.manual_seed(stream.seed)
    module = LitRegression()
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=clip,
        default_root_dir=root,
        callbacks=[GradguardCallback(**OPTIONS)] if guarded else [],
    )
    trainer.fit(module, DataLoader(stream, batch_size=BATCH))
    return stream.eval_mse(module.net)


class HFConfig(tf.PretrainedConfig):
    """Configuration of :class:`HFRegression`."""

    model_type = "gradguard-bench-regressor"


class HFRegression(tf.PreTrainedModel):
    """The regression as a transformers model returning ``output.loss``."""

    config_class = HFConfig

    def __init__(self, config: HFConfig) -> None:
        super().__init__(config)
        self.net = _net()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        out = self.net(x)
        loss = None if labels is None else nn.functional.mse_loss(out, labels)
        return tf.utils.ModelOutput(loss=loss, logits=out)


def hf_run(stream: Stream, guarded: bool, root: Path) -> float:
    torch.manual_seed(stream.seed)
    model = HFRegression(HFConfig())
    args = tf.TrainingArguments(
        output_dir=str(root),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        learning_rate=0.03,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=STEPS,
    )
    callbacks = [GradguardTrainerCallback(**OPTIONS)] if guarded else []
    tf.Trainer(model=model, args=args, train_dataset=stream, callbacks=callbacks).train()
    return stream.eval_mse(model.net)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument(
        "--skip-budget", type=int, default=None, help="PolicyConfig.skip_budget (default: its own)"
    )
    options = parser.parse_args()
    seeds = options.seeds
    if options.skip_budget is not None:
        OPTIONS["policy"] = PolicyConfig(skip_budget=options.skip_budget)
    warnings.simplefilter("ignore")
    for name in ("lightning.pytorch", "transformers", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    tf.utils.logging.set_verbosity_error()
    setups = {
        "Lightning, no clipping": lambda s, g, r: lightning_run(s, g, None, r),
        "Lightning, clip 1.0": lambda s, g, r: lightning_run(s, g, 1.0, r),
        "HF Trainer, max_grad_norm 1.0": hf_run,
    }
    header = f"{'framework':<30} {'poison':<16} {'seed':>4}"
    print(f"{header} {'alone':>10} {'guarded':>10} {'ratio':>7}")
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setup, run in setups.items():
            for poison, (batches, factor) in POISON.items():
                for seed in range(seeds):
                    stream = Stream(seed, batches, factor)
                    alone, guarded = run(stream, False, Path(tmp)), run(stream, True, Path(tmp))
                    ratio = guarded / alone
                    ratios.setdefault("healthy" if not batches else "poisoned", []).append(ratio)
                    print(
                        f"{setup:<30} {poison:<16} {seed:>4} {alone:>10.4g} {guarded:>10.4g} "
                        f"{ratio:>7.3f}"
                    )
    poisoned, healthy = ratios["poisoned"], ratios["healthy"]
    print(
        f"\nframeworks: final MSE guarded/framework-alone on poisoned runs median "
        f"{statistics.median(poisoned):.3f}, <= 1.25 on "
        f"{sum(r <= 1.25 for r in poisoned)}/{len(poisoned)}, worst {max(poisoned):.2f}; "
        f"healthy {max(healthy):.3f} (worst; 1.000 = bit-identical)"
    )


if __name__ == "__main__":
    main()
