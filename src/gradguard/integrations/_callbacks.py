"""What the framework callbacks share: guards per optimizer, the loss, state, and what to report.

A framework callback (Lightning, Hugging Face) owns one :class:`CallbackGuards`. It hands over the
loss of every micro-batch as it appears (:meth:`CallbackGuards.add_loss`, on the device), calls
:meth:`CallbackGuards.before` once the gradients are ready and :meth:`CallbackGuards.finish` once
the optimizer has stepped, and reads :meth:`CallbackGuards.metrics` for the framework's own
logger. When the guard gives up, :attr:`CallbackGuards.gave_up` holds the error and every later
step is skipped until the framework stops: the callback sets the framework's stop flag.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from gradguard.errors import ConfigError, TrainingDivergedError
from gradguard.integrations.hooks import (
    HookedGuard,
    add_loss,
    describe_model,
    drop_grads,
    unwrap_optimizer,
)
from gradguard.records import CLIP_TOLERANCE, ActionKind, Severity, StepRecord
from gradguard.sinks import JsonlSink, RankZeroSink, Sink, is_rank_zero, is_shown_intervention

__all__ = ["STATE_VERSION", "CallbackGuards", "FrameworkRelay", "LossMeter"]

STATE_VERSION = 1
"""Layout version of :meth:`CallbackGuards.state_dict`."""


class LossMeter:
    """Mean of the micro-batch losses since the last optimizer step, kept on the device.

    ``add`` takes a detached one-element tensor (no host sync); ``take`` returns the mean and
    starts over. A float ``count`` lets a caller weight a loss that the framework divided by the
    number of accumulated micro-batches back to the loss itself.
    """

    def __init__(self) -> None:
        self._sum: Tensor | None = None
        self._count = 0

    def add(self, loss: Any, factor: float = 1.0) -> None:
        """Add one micro-batch loss times ``factor`` (only a one-element float tensor counts)."""
        added = add_loss(self._sum, loss, factor)
        if added is not None:
            self._sum, self._count = added, self._count + 1

    def take(self) -> Tensor | None:
        """The mean loss since the last call (a 0-d device tensor), or ``None`` when none came."""
        total, count = self._sum, self._count
        self._sum, self._count = None, 0
        return None if total is None else total / count


class FrameworkRelay:
    """A sink that tells the framework what the guard did: numbers for its metric logger, text
    for its Python logger (on rank 0 only, so ``torchrun`` prints each alert once).

    Alerts are counted and logged as a person is told them: an incident once. The alerts
    :class:`~gradguard.detect.episode.IncidentLatch` marked ``repeat`` are left out of
    ``gradguard/alerts`` and not logged; ``gradguard/alerts_with_repeats`` counts every alert.

    Args:
        logger: where interventions (warning), a GradScaler's routine overflow skips and alerts
            on applied steps (info) go.
    """

    speaks = True
    """It logs what the guard did, so the guard adds no default logging sink beside it."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.last: StepRecord | None = None
        self._reset()

    def _reset(self) -> None:
        self._norm = -math.inf
        self._coef = math.inf
        self._counts = dict.fromkeys(
            ("steps", "skipped", "clipped", "rollbacks", "alerts", "alerts_with_repeats"), 0
        )

    def write(self, record: StepRecord) -> None:
        """Count ``record`` into the next :meth:`metrics` and log what deserves a person's eye."""
        self.last = record
        c = self._counts
        c["steps"] += 1
        c["skipped"] += not record.applied
        c["clipped"] += record.applied and record.clip_coef < 1.0 - CLIP_TOLERANCE
        c["rollbacks"] += record.action is ActionKind.ROLLBACK
        told = [a for a in record.alerts if not a.repeat]
        c["alerts"] += len(told)
        c["alerts_with_repeats"] += len(record.alerts)
        if record.total_norm is not None and not record.total_norm <= self._norm:
            self._norm = record.total_norm  # NaN wins: a non-finite norm must show
        self._coef = min(self._coef, record.clip_coef)
        if not is_rank_zero():
            return
        if is_shown_intervention(record):
            self.logger.warning("gradguard step %d: %s", record.step, record.message)
        elif record.action is not ActionKind.PROCEED and not record.applied:
            # A GradScaler's own overflow is routine (dozens while a 2**32 scale warms up).
            self.logger.info("gradguard step %d: %s", record.step, record.message)
        for alert in told:  # a repeat's incident was already told
            level = logging.WARNING if alert.severity is Severity.CRITICAL else logging.INFO
            self.logger.log(level, "gradguard step %d: %s", record.step, alert.message)

    def metrics(self) -> dict[str, float]:
        """Numbers since the last call, for the framework's logger (empty when no step came).

        ``gradguard/grad_norm`` is the largest global norm before clipping, ``clip_coef`` the
        smallest factor applied, ``alerts`` counts alerts that are not repeats (an incident
        once), ``alerts_with_repeats`` every alert, the others count steps.
        """
        if self.last is None or not self._counts["steps"]:
            return {}
        out = {
            "gradguard/grad_norm": self._norm,
            "gradguard/clip_coef": self._coef,
            **{f"gradguard/{k}": float(v) for k, v in self._counts.items() if k != "steps"},
        }
        if self.last.loss is not None:
            out["gradguard/loss"] = self.last.loss
        if self.last.lr is not None:
            out["gradguard/lr"] = self.last.lr
        self._reset()
        return out

    def close(self) -> None:
        """Nothing to release."""


class CallbackGuards:
    """The guards of a framework callback, keyed by optimizer; the log is written on rank 0.

    Args:
        log: JSONL log path (the k-th optimizer's gets ``.opt<k>`` before the suffix), or ``None``.
        sinks: further sinks shared by every guard (written on rank 0 only).
        guard_options: keyword arguments of :class:`~gradguard.guard.Guard`.
        logger: the framework's Python logger, for what the guard did.
    """

    def __init__(
        self,
        log: str | os.PathLike[str] | None,
        sinks: Iterable[Sink],
        guard_options: dict[str, Any],
        logger: logging.Logger | None = None,
    ) -> None:
        self.log = Path(log) if log is not None else None
        self.sinks = tuple(sinks)
        self.guard_options = guard_options
        self.guards: dict[int, HookedGuard] = {}
        self.relay = FrameworkRelay(logger or logging.getLogger("gradguard"))
        self.loss = LossMeter()
        self.gave_up: TrainingDivergedError | None = None
        self._restore: list[Mapping[str, Any]] = []
        self._finished: list[dict[str, Any]] = []
        self._order: list[int] = []
        self._closed: dict[str, Any] | None = None

    def get(
        self, optimizer: Any, model: nn.Module | None, *, post_hook: bool, pre_hook: bool = False
    ) -> HookedGuard:
        """The guard of ``optimizer``, made at its first step (with any state loaded for it).

        Args:
            optimizer: the optimizer or a framework's wrapper of it.
            model: the module being trained (names the tensors, is snapshotted).
            post_hook: call :meth:`finish` from the optimizer's own post-step hook (for
                frameworks with no "after optimizer step" callback).
            pre_hook: call :meth:`before` from the optimizer's own pre-step hook (for
                frameworks with no "before optimizer step" callback).
        """
        inner = unwrap_optimizer(optimizer)
        hooked = self.guards.get(id(inner))
        if hooked is not None:
            return hooked
        k = len(self.guards)
        sinks: list[Sink] = [RankZeroSink(s) for s in self.sinks]
        if self.log is not None and is_rank_zero():
            path = self.log if k == 0 else self.log.with_name(f"{self.log.stem}.opt{k + 1}.jsonl")
            meta: dict[str, Any] = {"optimizer": type(inner).__name__}
            if model is not None:
                meta["model"] = describe_model(model)
            sinks.insert(0, JsonlSink(path, metadata=meta, if_exists="overwrite"))
        sinks.append(self.relay)
        hooked = HookedGuard(inner, model, sinks=sinks, **self.guard_options)
        hooked.hook_steps(
            (lambda: self.before(hooked)) if pre_hook else None,
            (lambda: self.finish(hooked)) if post_hook else None,
        )
        self.guards[id(inner)] = hooked
        self._order.append(id(inner))
        if k < len(self._restore):
            _load(hooked, self._restore[k])
        return hooked

    def before(self, hooked: HookedGuard) -> None:
        """Measure, decide and clip (with the loss since the last step); skip all once given up."""
        loss = self.loss.take()
        if self.gave_up is not None:
            drop_grads(hooked.optimizer)
            return
        hooked.before_step(loss)

    def finish(self, hooked: HookedGuard) -> StepRecord | None:
        """Finish the step begun by :meth:`before`; a give-up is kept in :attr:`gave_up`."""
        try:
            return hooked.after_step()
        except TrainingDivergedError as err:
            self.gave_up = err
            if is_rank_zero():
                self.relay.logger.error("gradguard stopped the run: %s", err)
            return None

    @property
    def should_stop(self) -> bool:
        """Whether the framework should stop: the guard gave up on the run."""
        return self.gave_up is not None or any(
            bool(getattr(h.guard, "should_stop", False)) for h in self.guards.values()
        )

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The guards' state (detectors, policy, counters) in order of first step; JSON-safe."""
        if not self._order and self._closed is not None:
            return self._closed  # after training: a checkpoint saved then resumes from the end
        states = [_state(self.guards[key]) for key in self._order]
        # Guards not made yet in this run keep the state they were restored with.
        states += [dict(s) for s in self._restore[len(states) :]]
        return {"version": STATE_VERSION, "guards": states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: into the guards made so far, others at their first step."""
        if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(
                f"gradguard callback state version {got!r} is not {STATE_VERSION}; pass what "
                "the callback's state_dict() returned (a checkpoint of this gradguard version)."
            )
        self._restore, self._closed = list(state["guards"]), None
        for k, key in enumerate(self._order[: len(self._restore)]):
            _load(self.guards[key], self._restore[k])

    # ------------------------------------------------------------------------------ results
    def summary(self) -> list[dict[str, Any]]:
        """One guard summary per optimizer, this run's and those of runs already closed."""
        return self._finished + [self.guards[key].guard.summary() for key in self._order]

    def close(self) -> None:
        """Close every guard (hooks removed, logs complete); their summaries stay readable."""
        if self._order:
            self._closed = self.state_dict()
        for key in self._order:
            hooked = self.guards[key]
            self._finished.append(hooked.guard.summary())
            hooked.close()
        self.guards.clear()
        self._order.clear()
        for sink in self.sinks:
            sink.close()


def _state(hooked: HookedGuard) -> dict[str, Any]:
    return {"guard": hooked.guard.state_dict(), "snapshot_steps": hooked.guard.store.steps()}


def _load(hooked: HookedGuard, state: Mapping[str, Any]) -> None:
    """Restore a guard's statistics and budgets, then snapshot the weights it resumes from."""
    guard = hooked.guard
    guard.load_state_dict(state["guard"])
    if guard.snapshot_every is not None:
        guard.snapshot()  # memory snapshots die with the process: the resumed weights are the base
