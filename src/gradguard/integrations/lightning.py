"""Lightning: ``GradguardCallback`` guards every optimizer step of a ``Trainer``.

    from gradguard.integrations.lightning import GradguardCallback

    trainer = lightning.Trainer(callbacks=[GradguardCallback(log="runs/fit.jsonl")])

Lightning calls ``on_before_optimizer_step`` once the gradients are ready (after its own
unscaling, before its gradient clipping and the step); the callback measures, decides and clips
there, and skips a step by dropping its gradients (see :mod:`gradguard.integrations.hooks`). The
second half runs in the optimizer's own post-step hook. ``lightning`` is imported only when
``GradguardCallback`` is first used; without it the error names the extra to install,
``pip install gradguard[lightning]``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

from gradguard.errors import MissingDependencyError
from gradguard.integrations._callbacks import CallbackGuards
from gradguard.sinks import Sink

__all__ = ["GradguardCallback", "callback_class"]  # noqa: F822 - GradguardCallback: built by __getattr__

_BASES = ("lightning.pytorch.callbacks", "pytorch_lightning.callbacks")


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


def callback_class(base: Any) -> Any:
    """Build the callback class on Lightning's ``Callback`` (or a stand-in with its methods)."""

    class GradguardCallback(base):  # type: ignore[misc]
        """Guard every optimizer step of a Lightning ``Trainer`` (observe, clip, skip, roll back).

        Args:
            log: JSONL log path, written on global rank 0 (``None``: no log).
            sinks: further sinks (console, TensorBoard).
            guard_options: keyword arguments of :class:`~gradguard.guard.Guard` (``clip``,
                ``policy``, ``snapshot_every``, ...).
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

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            """Measure, decide and clip the gradients Lightning is about to step with."""
            self.guards.get(optimizer, pl_module, post_hook=True).before_step()

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            """Close the guards: the logs are complete."""
            self.guards.close()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            """Close the guards when training stops on an error (the log keeps every step)."""
            self.guards.close()

        def summary(self) -> list[dict[str, Any]]:
            """One guard summary per optimizer."""
            return self.guards.summary()

    return GradguardCallback


def __getattr__(name: str) -> Any:
    if name == "GradguardCallback":
        cls = callback_class(_lightning_base())
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
