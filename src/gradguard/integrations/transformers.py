"""Hugging Face ``Trainer``: ``GradguardTrainerCallback`` guards every optimizer step.

    from gradguard.integrations.transformers import GradguardTrainerCallback

    trainer = Trainer(model, args, callbacks=[GradguardTrainerCallback(log="runs/hf.jsonl")])

``on_pre_optimizer_step`` (after the Trainer's own clipping) measures, decides and clips, and
skips a step by dropping its gradients; ``on_optimizer_step`` finishes it (see
:mod:`gradguard.integrations.hooks`). On releases without these events the optimizer's own step
hooks are used. ``transformers`` is imported only when the callback is first used; without it the
error names ``pip install gradguard[transformers]``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

from gradguard.errors import MissingDependencyError
from gradguard.integrations._callbacks import CallbackGuards
from gradguard.sinks import Sink

__all__ = ["GradguardTrainerCallback", "callback_class"]  # noqa: F822 - GradguardTrainerCallback: built by __getattr__


def _transformers_base() -> Any:
    try:
        return importlib.import_module("transformers").TrainerCallback
    except ImportError:
        raise MissingDependencyError(
            "GradguardTrainerCallback needs transformers, which is not installed: "
            "pip install gradguard[transformers]"
        ) from None


def callback_class(base: Any) -> Any:
    """Build the callback class on ``transformers.TrainerCallback`` (or a stand-in)."""
    has_events = hasattr(base, "on_pre_optimizer_step") and hasattr(base, "on_optimizer_step")

    class GradguardTrainerCallback(base):  # type: ignore[misc]
        """Guard every optimizer step of a Hugging Face ``Trainer``.

        Args:
            log: JSONL log path, written on rank 0 (``None``: no log).
            sinks: further sinks (console, TensorBoard).
            guard_options: keyword arguments of :class:`~gradguard.guard.Guard`.
        """

        def __init__(
            self,
            log: str | os.PathLike[str] | None = None,
            *,
            sinks: Iterable[Sink] = (),
            **guard_options: Any,
        ) -> None:
            super().__init__()
            self.guards = CallbackGuards(log, sinks, guard_options)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Without the optimizer-step events, hook the optimizer itself."""
            if not has_events and kwargs.get("optimizer") is not None:
                hooked = self.guards.get(kwargs["optimizer"], kwargs.get("model"), post_hook=True)
                hooked.attach(after=False)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Measure, decide and clip the gradients the Trainer is about to step with."""
            hooked = self.guards.get(kwargs["optimizer"], kwargs.get("model"), post_hook=False)
            hooked.before_step()

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Finish the step: restore the learning rate, roll back if needed, log."""
            hooked = self.guards.get(kwargs["optimizer"], kwargs.get("model"), post_hook=False)
            hooked.after_step()

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            """Close the guards: the logs are complete."""
            self.guards.close()

        def summary(self) -> list[dict[str, Any]]:
            """One guard summary per optimizer."""
            return self.guards.summary()

    return GradguardTrainerCallback


def __getattr__(name: str) -> Any:
    if name == "GradguardTrainerCallback":
        cls = callback_class(_transformers_base())
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
