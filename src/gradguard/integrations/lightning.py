"""Lightning: ``GradguardCallback`` guards every optimizer step of a ``Trainer``.

    from gradguard.integrations.lightning import GradguardCallback

    trainer = lightning.Trainer(callbacks=[GradguardCallback(log="runs/fit.jsonl")])

Order within one optimizer step (automatic and manual optimisation alike):

1. ``on_before_backward``, per micro-batch: the loss is kept on the device, taken back to what
   ``training_step`` returned (Lightning divides it by ``accumulate_grad_batches`` and, in mixed
   precision, multiplies it by the GradScaler's scale). The guard judges the mean over the
   micro-batches of the step.
2. ``on_before_optimizer_step`` (after Lightning's unscaling, *before* its
   ``gradient_clip_val`` clipping): measure the gradients as backward left them, decide, clip; a
   step to skip is skipped by dropping its gradients (see :mod:`gradguard.integrations.hooks`).
   Lightning's own clipping then still applies to what the guard let through.
3. The optimizer's post-step hook: restore the learning rate, roll back when decided, log.
4. ``on_train_batch_end``: the step's numbers go to the trainer's loggers through
   ``pl_module.log`` (``gradguard/grad_norm``, ``gradguard/skipped``, ...); interventions and
   alerts go to the ``lightning.pytorch.callbacks.gradguard`` Python logger on rank 0. When the
   guard gives up, ``trainer.should_stop`` is set and later steps are skipped.

The guards' state (detectors, policy budgets, counters) is saved in Lightning checkpoints under
:attr:`state_key` and restored on ``fit(ckpt_path=...)``. ``lightning`` is imported only when
``GradguardCallback`` is first used; without it the error names the extra to install,
``pip install gradguard[lightning]``.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from typing import Any

from torch import Tensor

from gradguard.errors import MissingDependencyError
from gradguard.integrations._callbacks import CallbackGuards
from gradguard.sinks import Sink

__all__ = ["GradguardCallback", "callback_class"]  # noqa: F822 - GradguardCallback: built by __getattr__

_BASES = ("lightning.pytorch.callbacks", "pytorch_lightning.callbacks")
LOGGER_NAME = "lightning.pytorch.callbacks.gradguard"


def _lightning_base() -> Any:
    for name in _BASES:
        try:
            return importlib.import_module(name).Callback
        except ImportError:
            continue
    raise MissingDependencyError(
        "GradguardCallback needs Lightning, which is not installed: "
        "pip install gradguard[lightning]"
    )


def _unscaled(trainer: Any, pl_module: Any, loss: Tensor) -> tuple[Tensor, float]:
    """The loss ``training_step`` returned, from the one handed to ``backward`` (on the device)."""
    scaler: Any = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    scale = getattr(scaler, "_scale", None)  # the device tensor GradScaler.scale multiplied by
    if isinstance(scale, Tensor) and scaler.is_enabled():
        loss = loss.detach() / scale.to(loss.device)
    automatic = getattr(pl_module, "automatic_optimization", True)
    factor = float(getattr(trainer, "accumulate_grad_batches", 1) or 1) if automatic else 1.0
    return loss, factor


def callback_class(base: Any) -> Any:
    """Build the callback class on Lightning's ``Callback`` (or a stand-in with its methods)."""

    class GradguardCallback(base):  # type: ignore[misc]
        """Guard every optimizer step of a Lightning ``Trainer`` (observe, clip, skip, roll back).

        Args:
            log: JSONL log path, written on global rank 0 (``None``: no log).
            sinks: further sinks (console, TensorBoard), written on rank 0.
            guard_options: keyword arguments of :class:`~gradguard.guard.Guard` (``clip``,
                ``policy``, ``snapshot_every``, ...).

        Attributes:
            gave_up: the :class:`~gradguard.errors.TrainingDivergedError` when the guard
                stopped the run (its message says what to try), else ``None``.
        """

        def __init__(
            self,
            log: str | os.PathLike[str] | None = None,
            *,
            sinks: Iterable[Sink] = (),
            **guard_options: Any,
        ) -> None:
            super().__init__()
            self.guards = CallbackGuards(log, sinks, guard_options, logging.getLogger(LOGGER_NAME))
            self._trainer: Any = None

        @property
        def state_key(self) -> str:
            """Key of the guards' state in ``checkpoint["callbacks"]``."""
            return "GradguardCallback"

        @property
        def gave_up(self) -> Any:
            """The error the guard gave up with, or ``None``."""
            return self.guards.gave_up

        def on_before_backward(self, trainer: Any, pl_module: Any, loss: Tensor) -> None:
            """Keep the micro-batch loss (on the device) for the coming optimizer step."""
            value, factor = _unscaled(trainer, pl_module, loss)
            self.guards.loss.add(value, factor)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            """Measure, decide and clip the gradients before Lightning clips and steps."""
            self._trainer = trainer
            hooked = self.guards.get(optimizer, pl_module, post_hook=True)
            self.guards.before(hooked)

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            """Send the step's numbers to the trainer's loggers; stop when the guard gave up."""
            metrics = self.guards.relay.metrics()
            if metrics:
                pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
            if self.guards.should_stop:
                trainer.should_stop = True

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            """Close the guards: the logs are complete."""
            self.guards.close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            """Close the guards when training stops on an error (the log keeps every step)."""
            self.guards.close()

        def state_dict(self) -> dict[str, Any]:
            """The guards' state for Lightning's checkpoint (plain numbers, lists and dicts)."""
            return self.guards.state_dict()

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            """Restore the guards' state from a checkpoint (applied at their first step)."""
            self.guards.load_state_dict(state_dict)

        def summary(self) -> list[dict[str, Any]]:
            """One guard summary per optimizer (also after training ended)."""
            return self.guards.summary()

    GradguardCallback.__qualname__ = "GradguardCallback"
    return GradguardCallback


def __getattr__(name: str) -> Any:
    if name == "GradguardCallback":
        cls = callback_class(_lightning_base())
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
