"""Guard: replace ``optimizer.step()`` with a step that measures, decides, clips and rescues.

One :meth:`Guard.step` after ``loss.backward()``:

1. ``scaler.unscale_`` (with a GradScaler), then :func:`~gradguard.measure` the gradients
   (device tensors, no host sync); a clipper object clips here, before the sync, and its
   coefficient is reduced on the device to one number (:func:`~gradguard.clip.step_coefficient`);
2. :meth:`Monitor.observe <gradguard.monitor.Monitor.observe>`: the ONE host transfer of the step
   (norms, finiteness, loss, that coefficient), then the detectors;
3. :class:`~gradguard.policy.EscalationPolicy` turns the observation and the alerts into a
   decision: apply the step (with a clip bound or not), skip it, back off the learning rate,
   roll back to a snapshot, or abort;
4. when applied: clip in place (a device coefficient ``clamp(bound / (norm + eps), max=1)``, no
   host sync; the multiply is skipped when the transferred norm is clearly under the bound),
   ``optimizer.step()`` under the backed-off learning rate, ``scheduler.step()``; with a
   GradScaler, ``scaler.update()`` in every case;
5. every ``snapshot_every`` healthy steps outside incidents, a snapshot; a
   :class:`~gradguard.records.StepRecord` to the sinks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from gradguard.clip import Clipper, apply_global_bound_, step_coefficient
from gradguard.detect import Detector, Preset
from gradguard.errors import (
    ConfigError,
    ConfigTypeError,
    SnapshotError,
    TrainingDivergedError,
    check_bool,
    check_interface,
    check_mapping,
    check_path,
    check_positive,
)
from gradguard.monitor import Monitor, check_sinks
from gradguard.policy import EPS, ClipMode, Decision, EscalationPolicy, PolicyConfig, abort_advice
from gradguard.records import ActionKind, Alert, Observation, StepRecord
from gradguard.recover import (
    DiskSnapshotStore,
    MemorySnapshotStore,
    SnapshotStore,
    capture_rng_state,
    reset_optimizer_state_,
    restore_rng_state,
    scaled_lr,
)
from gradguard.sinks import Sink
from gradguard.stats import GradStats, NamedTensors, measure, reduce_across_ranks

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["Guard", "PendingStep"]

_STATE_VERSION = 1
_COUNTERS = (
    "steps",
    "applied",
    "clipped",
    "skipped",
    "backoffs",
    "rollbacks",
    "resets",
    "lr_restores",
    "steps_lost",
    "scaler_overflows",
    "snapshots",
    "aborted",
)


@dataclasses.dataclass(frozen=True)
class PendingStep:
    """What :meth:`Guard.begin_step` decided, for :meth:`Guard.finish_step`.

    Attributes:
        step: the guard's step index.
        observation: the step's observation (after the one host transfer).
        alerts: the detectors' alerts.
        decision: the policy's decision; ``decision.apply`` says whether to step the optimizer.
        scaler_overflow: the GradScaler overflowed (a non-finite gradient under a finite loss).
    """

    step: int
    observation: Observation
    alerts: tuple[Alert, ...]
    decision: Decision
    scaler_overflow: bool


class Guard:
    """Keep a training run alive: ``guard.step(loss)`` replaces ``optimizer.step()``.

    With no configuration it leaves healthy steps alone, skips non-finite or wildly off steps,
    clips to the run's healthy scale while in trouble, backs off the learning rate when faults
    repeat or the norm grows geometrically, rolls back to the last healthy in-memory snapshot
    when the weights themselves go bad, and stops with advice when nothing helps. A run without
    incidents is bit-identical to the same run without the guard (with ``clip=1.0``: to
    ``clip_grad_norm_(params, 1.0)`` followed by ``optimizer.step()``).

    Args:
        model: the module being trained; names the tensors in records and is snapshotted.
        optimizer: any ``torch.optim`` optimizer over (some of) the model's parameters.
        scaler: a ``torch.amp.GradScaler`` when training in mixed precision; the guard calls
            ``unscale_`` before measuring and ``update`` after every step (skipped or not). Use
            ``scaler.scale(loss).backward()`` and do not call ``scaler.step`` yourself.
        scheduler: a learning-rate scheduler stepped once per *applied* optimizer step (a
            skipped step does not advance the schedule). Do not call ``scheduler.step()``
            yourself.
        clip: ``"auto"`` (the default) never clips a healthy step, and while an incident is
            open (and for ``policy.restore_after`` steps after an escalation) clips to the run's
            own healthy scale, the median of recent healthy norms (1.0 before any was seen). A
            fixed bound such as the common 1.0 changes healthy runs whose natural norms are
            larger (a summed loss, a large batch): measured in ``benchmarks/rescue.py``, it
            ends such a run 80x worse. A float is a fixed bound on the global norm (as
            ``clip_grad_norm_``); ``None`` disables clipping (finite spikes are then skipped
            instead); any object with ``clip_(stats)`` (an adaptive :class:`Clipper`) clips
            every step before the guard decides, and a step it scaled is recorded as ``clip``
            with its coefficient (see :attr:`StepRecord.clip_coef
            <gradguard.records.StepRecord.clip_coef>`) and counted in ``counters["clipped"]``.
        policy: a :class:`~gradguard.policy.PolicyConfig` or a ready
            :class:`~gradguard.policy.EscalationPolicy`; ``None`` for the defaults.
        snapshot_every: take a snapshot after this many healthy applied steps (and only after
            ``policy.quiet`` steps without a warning); ``None`` disables snapshots and thereby
            rollback (the guard then resets optimizer moments instead).
        snapshot_keep: how many snapshots to keep (bounded memory or disk).
        snapshot_dir: write snapshots atomically into this directory instead of memory.
        sinks: receive one :class:`~gradguard.records.StepRecord` per step.
        monitor: a ready :class:`~gradguard.monitor.Monitor` (its sinks get its own records);
            ``None`` builds one on the guarded parameters from ``preset`` and ``detectors``.
        preset: detector preset of the monitor built when ``monitor`` is ``None``.
        detectors: detectors of that monitor (overrides ``preset``).
        restore_rng: also restore the random generators on rollback. Off by default: replaying
            the batches that led to the trouble tends to lead to it again.
        process_group: distributed runs: the group of the monitor built when ``monitor`` is
            ``None`` (with ``monitor``, set it on that monitor instead; see
            :class:`~gradguard.monitor.Monitor`). Norms are reduced before clipping and deciding,
            so every rank takes the same action.
        sharded_grads: as for :class:`~gradguard.monitor.Monitor` (same rule with ``monitor``).

    Raises:
        ConfigError: an argument is out of range or of the wrong kind, or ``process_group`` /
            ``sharded_grads`` come with a ready ``monitor``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        scaler: torch.amp.GradScaler | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        clip: float | Literal["auto"] | Clipper | None = "auto",
        policy: PolicyConfig | EscalationPolicy | None = None,
        snapshot_every: int | None = 50,
        snapshot_keep: int = 3,
        snapshot_dir: str | os.PathLike[str] | None = None,
        sinks: Iterable[Sink] = (),
        monitor: Monitor | None = None,
        preset: Preset = "default",
        detectors: Sequence[Detector] | None = None,
        restore_rng: bool = False,
        process_group: ProcessGroup | None = None,
        sharded_grads: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"model must be an nn.Module, got {type(model).__name__} {model!r:.80}. Pass the "
                "module you train: Guard(model, optimizer)."
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__} "
                f"{optimizer!r:.80}. Pass the optimizer whose step() the guard replaces."
            )
        _check_collaborators(scaler, scheduler, snapshot_dir)
        check_bool("restore_rng", restore_rng, fix="True also restores the RNG states.")
        if monitor is not None and not isinstance(monitor, Monitor):
            raise ConfigTypeError(
                f"monitor must be a gg.Monitor or None, got {type(monitor).__name__} "
                f"{monitor!r:.60}. Leave it None and the guard builds one."
            )
        sinks = check_sinks(sinks)
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.scheduler = scheduler
        self._clipper: Clipper | None = None
        mode: ClipMode
        if clip is None or clip == "auto":
            mode = clip
        elif isinstance(clip, (int, float)) and not isinstance(clip, bool):
            mode = check_positive(
                "clip", clip, fix="Pass the max global gradient norm, 'auto' or None."
            )
        elif not isinstance(clip, (str, bool)) and callable(getattr(clip, "clip_", None)):
            self._clipper, mode = clip, "external"
        else:
            raise ConfigError(
                f"clip must be 'auto', a positive float (max global norm), None, or an object "
                f"with a clip_(stats) method, got {clip!r:.80}. Guard(clip='auto') is the default."
            )
        self._clipper_name = type(clip).__name__ if self._clipper is not None else "the clipper"
        if isinstance(policy, EscalationPolicy):
            self.policy = policy
        elif policy is None or isinstance(policy, PolicyConfig):
            self.policy = EscalationPolicy(policy, clip=mode)
        else:
            raise ConfigError(
                f"policy must be a PolicyConfig, an EscalationPolicy or None, got {policy!r:.80}."
            )
        if snapshot_every is not None and (
            isinstance(snapshot_every, bool)
            or not isinstance(snapshot_every, int)
            or snapshot_every < 1
        ):
            raise ConfigError(
                f"snapshot_every must be an integer >= 1 or None, got {snapshot_every!r}. "
                "50 keeps the snapshot cost under 1% of the step time of a small model."
            )
        self.snapshot_every = snapshot_every
        self.store: SnapshotStore = (
            DiskSnapshotStore(snapshot_dir, keep=snapshot_keep)
            if snapshot_dir is not None
            else MemorySnapshotStore(keep=snapshot_keep)
        )
        self.restore_rng = bool(restore_rng)
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self._named = _guarded_parameters(model, optimizer)
        if monitor is not None and (process_group is not None or sharded_grads is not None):
            raise ConfigError(
                f"process_group={process_group!r} and sharded_grads={sharded_grads!r} apply to "
                "the monitor the guard builds; you passed your own monitor. Give them to "
                "Monitor(..., process_group=..., sharded_grads=...) instead."
            )
        self.monitor = (
            monitor
            if monitor is not None
            else Monitor(
                self._named,
                preset=preset,
                detectors=detectors,
                process_group=process_group,
                sharded_grads=sharded_grads,
            )
        )
        self._step = 0
        self._progress = 0  # applied steps the weights reflect (rollbacks take some back)
        self._since_snapshot = 0
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._last_culprits: tuple[str, ...] = ()
        self._restored: tuple[int, int] | None = None  # (incident start, key) of the last rollback
        if snapshot_every is not None and not self.store.steps():
            self.snapshot()

    # ------------------------------------------------------------------------------ the step
    def step(self, loss: Tensor | float | None = None) -> StepRecord:
        """Measure, detect, decide, clip and step (or not); call it instead of ``optimizer.step()``.

        Call it once per optimizer step, after ``backward`` (with gradient accumulation: after
        the last micro-batch). Zero the gradients yourself as usual.

        Args:
            loss: the loss of this step (a tensor stays on the device until the one transfer),
                or ``None``.

        Returns:
            The :class:`~gradguard.records.StepRecord` of what was done and why.

        Raises:
            TrainingDivergedError: the policy spent its rescue budget; the message says what
                happened and what to try. The record is attached as ``err.record``.
        """
        pending = self.begin_step(loss)
        if pending.decision.apply:
            with scaled_lr(self.optimizer, pending.decision.lr_scale):
                self.optimizer.step()
        return self.finish_step(pending)

    def begin_step(self, loss: Tensor | float | None = None) -> PendingStep:
        """First half of :meth:`step`: measure, observe, decide, and clip in place.

        For callers that cannot hand ``optimizer.step()`` to the guard (optimizer hooks,
        framework callbacks; see :mod:`gradguard.integrations.hooks`): if
        ``pending.decision.apply``, step the optimizer with every group's learning rate scaled
        by ``pending.decision.lr_scale``, else leave the weights alone; then call
        :meth:`finish_step`. The scheduler is stepped by :meth:`finish_step`.

        Args:
            loss: as for :meth:`step`.

        Returns:
            The :class:`PendingStep` to pass to :meth:`finish_step`.
        """
        scaler = self.scaler if self.scaler is not None and self.scaler.is_enabled() else None
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        stats = measure(self._named)
        # Global norms before clipping or deciding, so every rank clips and decides alike.
        group = self.monitor.process_group
        stats = reduce_across_ranks(stats, group, sharded=self.monitor.sharded_grads)
        coef: Tensor | float | None = None
        if self._clipper is not None and stats.grads:
            # Queued on the device before the sync below; its coefficient rides along in it.
            coef = step_coefficient(stats, self._clipper.clip_(stats))
        # HOST SYNC: the one transfer, inside.
        alerts = self.monitor.observe(loss, stats=stats, clip_coef=coef)
        obs = self.monitor.last
        if obs is None:  # pragma: no cover - Monitor.observe always sets it
            raise RuntimeError("Monitor.observe() left no observation")
        overflow = scaler is not None and obs.loss_finite and not obs.finite
        decision = self.policy.decide(
            obs,
            alerts,
            can_rollback=self.snapshot_every is not None and bool(self.store.steps()),
            scaler_overflow=overflow,
            clipper=self._clipper_name,
        )
        if decision.apply:
            self._clip(stats, obs, decision.clip_bound)
        return PendingStep(self._step, obs, tuple(alerts), decision, overflow)

    def finish_step(self, pending: PendingStep) -> StepRecord:
        """Second half of :meth:`step`, after the optimizer stepped (or did not, when skipped).

        Steps the scheduler for an applied step, updates the scaler, rolls back or resets when
        decided, counts, writes the record to the sinks, and takes a snapshot when due.

        Args:
            pending: what :meth:`begin_step` returned for this step.

        Returns:
            The :class:`~gradguard.records.StepRecord` of what was done and why.

        Raises:
            TrainingDivergedError: as for :meth:`step`.
        """
        t, obs, alerts, decision, overflow = (
            pending.step,
            pending.observation,
            pending.alerts,
            pending.decision,
            pending.scaler_overflow,
        )
        kind = decision.action.kind
        scaler = self.scaler if self.scaler is not None and self.scaler.is_enabled() else None
        if decision.apply:
            if self.scheduler is not None:
                self.scheduler.step()
            self._progress += 1
        if scaler is not None:
            scaler.update()
        rolled_back_to, lost, message = None, 0, decision.action.message
        if decision.reset_baselines:
            self.monitor.reset_detectors()
        if kind is ActionKind.ROLLBACK:
            rolled_back_to, lost, message = self._rollback(decision)
        elif kind is ActionKind.RESET_OPTIMIZER_STATE:
            reset_optimizer_state_(self.optimizer)
        self._count(decision, overflow, lost)
        self._last_culprits = tuple(name for name, _ in obs.top[:3])
        record = StepRecord(
            step=t,
            action=kind,
            reason=decision.action.reason,
            message=message,
            applied=decision.apply,
            loss=obs.loss,
            total_norm=obs.total_norm,
            clip_coef=decision.clip_coef,
            lr=self._effective_lr(decision.lr_scale),
            alerts=tuple(alerts),
            top=obs.top,
            rolled_back_to=rolled_back_to,
            steps_lost=lost,
        )
        self._step += 1
        for sink in self.sinks:
            sink.write(record)
        if kind is ActionKind.ABORT:
            lr = record.lr
            advice = abort_advice(self.policy.history(), lr=lr, culprits=self._last_culprits)
            raise TrainingDivergedError(advice, record)
        if decision.apply:
            self._since_snapshot += 1
            self._maybe_snapshot()
        return record

    @staticmethod
    def _clip(stats: GradStats, obs: Observation, bound: float | None) -> None:
        """Scale the gradients to ``bound`` in place: a device coefficient, no host sync.

        The host already knows the norm (transferred once), so the multiply is skipped when the
        coefficient is certainly 1; near the bound the device decides, exactly as
        ``clip_grad_norm_`` does, which keeps a guarded run bit-identical to it.
        """
        if bound is None or not stats.grads or bound / (obs.total_norm + EPS) > 1.0 + 1e-6:
            return
        apply_global_bound_(stats, bound, EPS)

    def _effective_lr(self, scale: float) -> float | None:
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
        if isinstance(lr, (int, float)):
            return float(lr) * scale
        return None  # a tensor learning rate would need a host sync to read

    def _count(self, decision: Decision, overflow: bool, lost: int) -> None:
        c, kind = self.counters, decision.action.kind
        c["steps"] += 1
        if decision.apply:
            c["applied"] += 1
            # A CLIP, or a backoff or recovery whose gradients were scaled (by either clipper).
            c["clipped"] += kind is ActionKind.CLIP or decision.clip_coef < 1.0 - 1e-5
        else:
            c["skipped"] += 1
        c["backoffs"] += kind is ActionKind.BACKOFF
        c["rollbacks"] += kind is ActionKind.ROLLBACK
        c["resets"] += kind is ActionKind.RESET_OPTIMIZER_STATE
        c["lr_restores"] += decision.action.reason.value == "recovered"
        c["scaler_overflows"] += overflow
        c["aborted"] += kind is ActionKind.ABORT
        c["steps_lost"] += lost

    # ------------------------------------------------------------------------------ snapshots
    def _maybe_snapshot(self) -> None:
        every = self.snapshot_every
        if every is None or self._since_snapshot < every:
            return
        last = self._step - 1
        if self.policy.protected(last) or self.policy.quiet_steps(last) < self.policy.config.quiet:
            return
        self.snapshot()

    def snapshot(self) -> int:
        """Take a snapshot now; returns its key (the number of guard steps taken so far).

        A snapshot holds copies of the model's and optimizer's state dicts, the scheduler's and
        scaler's and every random generator's, and the baselines of the detectors and the policy
        (a few hundred floats), which a rollback restores with the weights. Disk snapshots also
        hold the guard's whole state (policy budgets, monitor history, clipper), which only
        :meth:`resume` after a crash needs; a rollback keeps the budgets live, so memory
        snapshots skip it (the monitor's history is most of the copying cost for a small model).
        """
        self.counters["snapshots"] += 1
        self._since_snapshot = 0
        # HOST SYNC: copying the state to the CPU (or disk), once every `snapshot_every` steps.
        state: dict[str, Any] = {
            "step": self._step,
            "progress": self._progress,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng_state(),
            "detectors": self.monitor.detector_state(),
            "baselines": self.policy.baselines(),
            "guard": self.state_dict() if isinstance(self.store, DiskSnapshotStore) else None,
        }
        try:
            self.store.save(self._step, state)
        except BaseException:
            self.counters["snapshots"] -= 1
            raise
        return self._step

    def _choose_snapshot(self, before: int) -> tuple[int, str]:
        """The newest snapshot taken at least ``policy.quiet`` steps before ``before``.

        A second rollback in the same incident means the snapshot restored first was already
        poisoned (the trouble began before the detectors saw it): it only looks further back.
        """
        steps = self.store.steps()
        again = self._restored is not None and self._restored[0] == before
        if again and self._restored is not None:
            older = [s for s in steps if s < self._restored[1]]
            if older:
                steps = older
        margin = self.policy.config.quiet
        note = ", older than the one restored before" if again else ""
        safe = [s for s in steps if s <= before - margin]
        if safe:
            why = f"at least {margin} steps before the trouble began at step {before}{note}"
            return safe[-1], why
        earlier = [s for s in steps if s <= before]
        if earlier:
            return earlier[-1], f"the newest from before step {before}{note}"
        return steps[0], f"the oldest kept; none predates step {before}"

    def _rollback(self, decision: Decision) -> tuple[int, int, str]:
        before = decision.rollback_before if decision.rollback_before is not None else self._step
        key, why = self._choose_snapshot(before)
        self._restored = (before, key)
        state = self.store.load(key)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.restore_rng:
            restore_rng_state(state["rng"])
        if state.get("baselines") is not None and self.policy.load_baselines(state["baselines"]):
            # Baselines learned on the abandoned trajectory would judge the restored weights'
            # ordinary loss and norms as spikes (a run whose loss had fallen far since, say).
            self.monitor.load_detector_state(state["detectors"])
        if decision.reset_moments:
            reset_optimizer_state_(self.optimizer)
        self.store.discard_after(key)
        self._since_snapshot = 0
        lost = max(self._progress - int(state["progress"]), 0)
        self._progress = int(state["progress"])
        message = (
            f"{decision.action.message.rstrip('.')}: restored the snapshot of step {key} ({why}), "
            f"{lost} applied steps lost."
        )
        return key, lost, message

    def resume(self, step: int | None = None) -> int:
        """Restore a snapshot completely (RNG, and guard state from disk), e.g. after a crash.

        Args:
            step: key of the snapshot to restore; ``None`` for the newest.

        Returns:
            The key of the restored snapshot.

        Raises:
            SnapshotError: no snapshot is stored (or none of that key).
        """
        steps = self.store.steps()
        key = steps[-1] if step is None and steps else step
        if key is None:
            raise SnapshotError(
                "no snapshot to resume from; pass snapshot_dir= to keep snapshots on disk."
            )
        state = self.store.load(key)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        if state.get("guard") is not None:
            self.load_state_dict(state["guard"])
        return key

    # ------------------------------------------------------------------------------ state
    @property
    def lr_scale(self) -> float:
        """Multiplier the guard currently applies to every parameter group's learning rate."""
        return self.policy.lr_scale

    def summary(self) -> dict[str, Any]:
        """Counters of what the guard did, its learning-rate scale, snapshots, and the monitor's."""
        return {
            **self.counters,
            "progress": self._progress,
            "lr_scale": self.policy.lr_scale,
            "snapshot_steps": self.store.steps(),
            "incident_start": self.policy.incident_start,
            "monitor": self.monitor.summary(),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue with the same statistics and budgets."""
        return {
            "version": _STATE_VERSION,
            "step": self._step,
            "progress": self._progress,
            "since_snapshot": self._since_snapshot,
            "restored": list(self._restored) if self._restored is not None else None,
            "counters": dict(self.counters),
            "policy": self.policy.state_dict(),
            "monitor": self.monitor.state_dict(),
            "clipper": _state_of(self._clipper),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (model and optimizer are restored by their own)."""
        check_mapping("state", state, fix="Pass what Guard.state_dict() returned.")
        if state.get("version") != _STATE_VERSION:
            raise ConfigError(
                f"guard state version {state.get('version')!r} is not {_STATE_VERSION}; pass "
                "what Guard.state_dict() returned."
            )
        missing = sorted(set(_STATE_KEYS) - set(state))
        if missing:
            raise ConfigError(
                f"the guard state lacks {missing!r} (it has {sorted(state)!r:.120}); pass the "
                "whole dict that Guard.state_dict() returned, not a part or an edited copy."
            )
        self._step = int(state["step"])
        self._progress = int(state["progress"])
        self._since_snapshot = int(state["since_snapshot"])
        restored = state.get("restored")
        self._restored = (int(restored[0]), int(restored[1])) if restored is not None else None
        self.counters = {name: int(state["counters"].get(name, 0)) for name in _COUNTERS}
        self.policy.load_state_dict(state["policy"])
        self.monitor.load_state_dict(state["monitor"])
        load = getattr(self._clipper, "load_state_dict", None)
        if load is not None and state.get("clipper") is not None:
            load(state["clipper"])

    def close(self) -> None:
        """Close the sinks."""
        for sink in self.sinks:
            sink.close()


_STATE_KEYS = ("step", "progress", "since_snapshot", "counters", "policy", "monitor")


def _check_collaborators(scaler: object, scheduler: object, snapshot_dir: object) -> None:
    """Refuse, at construction, objects that would fail in the middle of a training step."""
    if scaler is not None:
        check_interface(
            "scaler",
            scaler,
            ("scale", "unscale_", "step", "update", "state_dict", "load_state_dict"),
            fix="Pass a torch.amp.GradScaler (the one your loop scales the loss with) or None.",
        )
    if scheduler is not None:
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ConfigError(
                "scheduler=ReduceLROnPlateau needs a metric at each step(), which the guard "
                "cannot supply. Leave scheduler=None and call scheduler.step(val_loss) yourself "
                "after validation."
            )
        check_interface(
            "scheduler",
            scheduler,
            ("step", "state_dict", "load_state_dict"),
            fix="Pass a torch.optim.lr_scheduler object built on this optimizer, or None.",
        )
    if snapshot_dir is not None:
        check_path("snapshot_dir", snapshot_dir, fix="Or None to keep snapshots in memory.")


def _state_of(clipper: Clipper | None) -> Any:
    save = getattr(clipper, "state_dict", None)
    return save() if save is not None else None


def _guarded_parameters(model: nn.Module, optimizer: torch.optim.Optimizer) -> NamedTensors:
    """The optimizer's parameters named as in the model, in the model's order.

    Model order makes the global norm bit-identical to ``clip_grad_norm_(model.parameters())``;
    parameters the optimizer holds but the model does not are appended with positional names.
    """
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named: list[tuple[str, Tensor]] = [
        (name, p) for name, p in model.named_parameters() if id(p) in in_optimizer
    ]
    seen = {id(p) for _, p in named}
    for g, group in enumerate(optimizer.param_groups):
        for i, p in enumerate(group["params"]):
            if id(p) not in seen:
                named.append((f"param_groups[{g}][{i}]", p))
                seen.add(id(p))
    if not named:
        raise ConfigError(
            "the optimizer holds no parameters; build it from model.parameters() before the guard."
        )
    return NamedTensors(named)  # validated once: measure() skips re-checking every step
