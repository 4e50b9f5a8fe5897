"""Hugging Face ``Trainer``: ``GradguardTrainerCallback`` guards every optimizer step.

    from gradguard.integrations.transformers import GradguardTrainerCallback

    trainer = Trainer(model, args, callbacks=[GradguardTrainerCallback(log="runs/hf.jsonl")])

The Trainer clips to ``args.max_grad_norm`` (1.0 by default) *before* any callback sees the
gradients, so a guard behind it would only ever see norms <= 1. The callback therefore takes
the clipping over: at ``on_train_begin`` it sets ``args.max_grad_norm = 0`` and gives the guard
that bound (``clip=``, unless you pass your own), which clips exactly as the Trainer would (a
healthy run is bit-identical); ``on_train_end`` puts the value back. Within a step:

1. a forward hook on the model keeps the loss of every training micro-batch (``output.loss``,
   on the device); the guard judges their mean, as the Trainer's own logged loss is;
2. ``on_pre_optimizer_step``: in fp16, unscale the gradients first (the Trainer no longer does
   it for its clipping); measure, decide, clip; skip a step by dropping its gradients;
3. ``on_optimizer_step``: restore the learning rate, roll back when decided, log;
4. ``on_log``: the numbers since the last log (``gradguard/grad_norm``, ``gradguard/skipped``,
   ...) join the Trainer's ``logs`` (and ``state.log_history``); interventions and alerts go to
   the ``transformers.gradguard`` logger on the main process. When the guard gives up,
   ``control.should_training_stop`` is set.

The guards' state is stored in ``TrainerState.stateful_callbacks["gradguard"]`` whenever the
Trainer saves a checkpoint, and restored at ``on_train_begin`` when resuming from one. A model
whose output has no ``loss`` (a custom ``compute_loss_func`` or label smoothing) leaves the loss
rules off. The learning-rate scheduler also advances on steps the guard skips. ``transformers``
is imported only when the callback is first used; without it the error names
``pip install gradguard[transformers]``.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from gradguard.errors import MissingDependencyError
from gradguard.integrations._callbacks import CallbackGuards
from gradguard.integrations.hooks import unwrap_optimizer
from gradguard.recover import already_unscaled
from gradguard.sinks import Sink

__all__ = ["GradguardTrainerCallback", "callback_class"]  # noqa: F822 - GradguardTrainerCallback: built by __getattr__

STATE_KEY = "gradguard"
"""Key of the guards' state in ``TrainerState.stateful_callbacks`` (not a callback class name,
so ``restore_callback_states_from_checkpoint`` leaves the callback itself in place)."""

LOGGER_NAME = "transformers.gradguard"


def _transformers_base() -> Any:
    try:
        return importlib.import_module("transformers").TrainerCallback
    except ImportError:
        raise MissingDependencyError(
            "GradguardTrainerCallback needs transformers, which is not installed: "
            "pip install gradguard[transformers]"
        ) from None


def _model_loss(output: Any) -> Any:
    if isinstance(output, Mapping):
        return output.get("loss")
    return getattr(output, "loss", None)


def _unscale_for_guard(optimizer: Any) -> None:
    """Unscale fp16 gradients before the guard measures them (Accelerate's wrapper holds the
    GradScaler as ``.scaler``); its ``step`` then does not unscale twice, and finds the inf checks
    it needs even when the guard dropped every gradient."""
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return
    inner = unwrap_optimizer(optimizer)
    if not already_unscaled(scaler, inner):
        scaler.unscale_(inner)


def _move_before_reporters(callback: Any) -> None:
    """Put ``callback`` right after the Trainer's flow callback, so what it adds to ``logs`` in
    ``on_log`` reaches the reporting integrations (TensorBoard, W&B) listed before it.

    Callbacks are not told their handler: it is found once, among the referrers of the list
    that holds the callback.
    """
    for holder in gc.get_referrers(callback):
        if not isinstance(holder, list):
            continue
        callbacks: list[Any] = holder
        for owner in gc.get_referrers(holder):
            if getattr(owner, "callbacks", None) is holder and hasattr(owner, "call_event"):
                callbacks.remove(callback)
                first = type(callbacks[0]).__name__ if callbacks else ""
                callbacks.insert(1 if first == "DefaultFlowCallback" else 0, callback)
                return


def callback_class(base: Any) -> Any:
    """Build the callback class on ``transformers.TrainerCallback`` (or a stand-in)."""
    has_events = hasattr(base, "on_pre_optimizer_step") and hasattr(base, "on_optimizer_step")

    class GradguardTrainerCallback(base):  # type: ignore[misc]
        """Guard every optimizer step of a Hugging Face ``Trainer``.

        Args:
            log: JSONL log path, written on rank 0 (``None``: no log).
            sinks: further sinks (console, TensorBoard), written on rank 0.
            take_over_clipping: take ``args.max_grad_norm`` over (see the module's text);
                ``False`` leaves the Trainer's clipping on, and the guard then only sees the
                clipped gradients.
            guard_options: keyword arguments of :class:`~gradguard.guard.Guard`.

        Attributes:
            gave_up: the :class:`~gradguard.errors.TrainingDivergedError` when the guard
                stopped the run, else ``None``.
        """

        def __init__(
            self,
            log: str | os.PathLike[str] | None = None,
            *,
            sinks: Iterable[Sink] = (),
            take_over_clipping: bool = True,
            **guard_options: Any,
        ) -> None:
            super().__init__()
            self.guards = CallbackGuards(log, sinks, guard_options, logging.getLogger(LOGGER_NAME))
            self.take_over_clipping = take_over_clipping
            self._max_grad_norm: float | None = None
            self._hook: Any = None
            self._accumulation = 1

        @property
        def gave_up(self) -> Any:
            """The error the guard gave up with, or ``None``."""
            return self.guards.gave_up

        # ------------------------------------------------------------------------ setup
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Take the clipping over, hook the loss, restore a resumed guard's state."""
            model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
            bound = float(getattr(args, "max_grad_norm", 0) or 0)
            if self.take_over_clipping and bound > 0:
                self._max_grad_norm = bound
                args.max_grad_norm = 0.0  # read by the Trainer at every step
                self.guards.guard_options.setdefault("clip", bound)
            self._accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
            if isinstance(model, nn.Module) and self._hook is None:
                self._hook = model.register_forward_hook(self._keep_loss, with_kwargs=True)
            saved = (getattr(state, "stateful_callbacks", None) or {}).get(STATE_KEY)
            if saved is not None:
                self.guards.load_state_dict(saved)
            if optimizer is not None:
                # Without the optimizer-step events (older releases), the optimizer's own hooks.
                self.guards.get(optimizer, model, post_hook=not has_events, pre_hook=not has_events)
            _move_before_reporters(self)

        def _keep_loss(
            self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any
        ) -> None:
            import torch

            if not module.training or not torch.is_grad_enabled():
                return  # evaluation, or generation
            loss = _model_loss(output)
            if isinstance(loss, Tensor):
                # With num_items_in_batch the model divides by the tokens of the whole
                # accumulated batch: a micro-batch's loss is then a 1/accumulation share.
                shared = kwargs.get("num_items_in_batch") is not None
                self.guards.loss.add(loss, float(self._accumulation) if shared else 1.0)

        # ------------------------------------------------------------------------ the step
        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Measure, decide and clip the gradients the Trainer is about to step with."""
            optimizer = kwargs["optimizer"]
            _unscale_for_guard(optimizer)
            self.guards.before(self.guards.get(optimizer, kwargs.get("model"), post_hook=False))

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Finish the step: restore the learning rate, roll back if needed, log."""
            hooked = self.guards.get(kwargs["optimizer"], kwargs.get("model"), post_hook=False)
            self.guards.finish(hooked)
            if self.guards.should_stop:
                control.should_training_stop = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            """Stop when the guard gave up; keep its state in the TrainerState before a save."""
            if self.guards.should_stop:
                control.should_training_stop = True
            self._store_state(state, control)
            return control

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Keep the guards' state in the TrainerState before an end-of-epoch save."""
            self._store_state(state, control)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Keep the guards' state before a save that depends on the evaluation (``best``)."""
            self._store_state(state, control, always=True)

        def _store_state(self, state: Any, control: Any, *, always: bool = False) -> None:
            if (always or getattr(control, "should_save", False)) and isinstance(
                getattr(state, "stateful_callbacks", None), dict
            ):
                state.stateful_callbacks[STATE_KEY] = self.guards.state_dict()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            """Add the guard's numbers since the last log to a training log entry."""
            if not isinstance(logs, dict) or "loss" not in logs:
                return  # an evaluation or a final summary
            metrics = self.guards.relay.metrics()
            logs.update(metrics)
            history = getattr(state, "log_history", None)
            if metrics and history and history[-1].get("step") == state.global_step:
                history[-1].update(metrics)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Give the clipping back to the Trainer and close the guards."""
            if self._max_grad_norm is not None:
                args.max_grad_norm = self._max_grad_norm
                self._max_grad_norm = None
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            self.guards.close()

        def summary(self) -> list[dict[str, Any]]:
            """One guard summary per optimizer (also after training ended)."""
            return self.guards.summary()

    GradguardTrainerCallback.__qualname__ = "GradguardTrainerCallback"
    return GradguardTrainerCallback


def __getattr__(name: str) -> Any:
    if name == "GradguardTrainerCallback":
        cls = callback_class(_transformers_base())
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
