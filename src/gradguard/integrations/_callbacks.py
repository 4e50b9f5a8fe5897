"""What the framework callbacks share: one :class:`HookedGuard` per optimizer, made on first use."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from gradguard.integrations.hooks import HookedGuard, describe_model, unwrap_optimizer
from gradguard.sinks import JsonlSink, Sink, is_rank_zero

__all__ = ["CallbackGuards"]


class CallbackGuards:
    """The guards of a framework callback, keyed by optimizer; the log is written on rank 0.

    Args:
        log: JSONL log path (the k-th optimizer's gets ``.opt<k>`` before the suffix), or ``None``.
        sinks: further sinks shared by every guard.
        guard_options: keyword arguments of :class:`~gradguard.guard.Guard`.
    """

    def __init__(
        self,
        log: str | os.PathLike[str] | None,
        sinks: Iterable[Sink],
        guard_options: dict[str, Any],
    ) -> None:
        self.log = Path(log) if log is not None else None
        self.sinks = tuple(sinks)
        self.guard_options = guard_options
        self.guards: dict[int, HookedGuard] = {}

    def get(self, optimizer: Any, model: nn.Module | None, *, post_hook: bool) -> HookedGuard:
        """The guard of ``optimizer``, made at its first step.

        Args:
            optimizer: the optimizer or a framework's wrapper of it.
            model: the module being trained (names the tensors, is snapshotted).
            post_hook: also register :meth:`HookedGuard.after_step` as the optimizer's own
                post-step hook (for frameworks with no "after optimizer step" callback).
        """
        inner = unwrap_optimizer(optimizer)
        hooked = self.guards.get(id(inner))
        if hooked is not None:
            return hooked
        sinks = list(self.sinks)
        if self.log is not None and is_rank_zero():
            k = len(self.guards) + 1
            path = self.log if k == 1 else self.log.with_name(f"{self.log.stem}.opt{k}.jsonl")
            meta: dict[str, Any] = {"optimizer": type(inner).__name__}
            if model is not None:
                meta["model"] = describe_model(model)
            sinks.insert(0, JsonlSink(path, metadata=meta, if_exists="overwrite"))
        hooked = HookedGuard(inner, model, sinks=sinks, **self.guard_options)
        if post_hook:
            hooked.attach(before=False)
        self.guards[id(inner)] = hooked
        return hooked

    def summary(self) -> list[dict[str, Any]]:
        """One guard summary per optimizer."""
        return [h.guard.summary() for h in self.guards.values()]

    def close(self) -> None:
        """Close every guard (hooks removed, logs complete) and the shared sinks."""
        for hooked in self.guards.values():
            hooked.close()
        self.guards.clear()
        for sink in self.sinks:
            sink.close()
