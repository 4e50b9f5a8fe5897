"""Guard: replace ``optimizer.step()`` with a step that measures, decides, clips and rescues.

One :meth:`Guard.step` after ``loss.backward()``:

1. ``scaler.unscale_`` (with a GradScaler), then :meth:`Monitor.measure
   <gradguard.monitor.Monitor.measure>` the gradients (device tensors, global across ranks, no
   host sync); a clipper object clips here, before the sync, and its coefficient is reduced on
   the device to one number (:func:`~gradguard.clip.step_coefficient`);
2. :meth:`Monitor.watch <gradguard.monitor.Monitor.watch>`: the ONE host transfer of the step
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

import contextlib
import dataclasses
import inspect
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch
from torch import Tensor, nn

from gradguard.clip import Clipper, step_coefficient
from gradguard.clip.apply import _apply_global_bound_  # the policy checked the bound
from gradguard.detect import Detector, Preset
from gradguard.errors import (
    ConfigError,
    ConfigTypeError,
    SnapshotError,
    TrainingDivergedError,
    check_bool,
    check_choice,
    check_interface,
    check_mapping,
    check_path,
    check_positive,
)
from gradguard.monitor import Monitor, check_sinks
from gradguard.policy import EPS, ClipMode, Decision, EscalationPolicy, PolicyConfig, abort_advice
from gradguard.records import (
    CLIP_TOLERANCE,
    Action,
    ActionKind,
    Alert,
    Observation,
    Reason,
    StepRecord,
)
from gradguard.recover import (
    DiskSnapshotStore,
    MemorySnapshotStore,
    RateCeiling,
    SnapshotStore,
    already_unscaled,
    capture_rng_state,
    cpu_copy,
    reset_optimizer_state_,
    restore_rng_state,
)
from gradguard.recover.registry import StateRegistry
from gradguard.sinks import Sink, with_default_logging
from gradguard.stats import GradStats, NamedTensors
from gradguard.stats.measure import norms_in_groups
from gradguard.stats.params import local_tensor

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["GiveUp", "Guard", "GuardState", "PendingStep"]

GiveUp: TypeAlias = Literal["raise", "stop", "continue"]
"""What the guard does when every rescue failed: raise, ask the loop to stop, or go on."""

_FP16_MAX = 65504.0
_SCALER_HEADROOM = 2.0**6
"""A GradScaler overflow is the scale's doing only while ``scale * healthy norm`` reaches within
this factor of float16's largest value (gradients inside backward can exceed the final norm);
below that the scale cannot be what overflowed, so the non-finite gradient is a real fault."""

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
            yourself. ``ReduceLROnPlateau`` is refused: it needs a validation metric the guard
            does not have; step it yourself (``plateau.step(val_loss)``) and pass ``None``.
        clip: ``"auto"`` (the default) never clips a healthy step, and while an incident is
            open (and for ``policy.restore_after`` steps after an escalation) clips to the run's
            own healthy scale, the median of recent healthy norms (1.0 before any was seen); for
            an optimizer that takes a closure (LBFGS) it means ``None``, since its curvature
            model undoes or is corrupted by scaled gradients. A fixed bound such as the common
            1.0 changes healthy runs whose natural norms are larger (a summed loss, a large
            batch): measured in ``benchmarks/rescue.py``, it ends such a run 80x worse. A float
            is a fixed bound on the global norm (as ``clip_grad_norm_``); ``None`` disables
            clipping (finite spikes are then skipped instead); any object with ``clip_(stats)``
            (an adaptive :class:`Clipper`) clips every step before the guard decides, and a step
            it scaled is recorded as ``clip`` with its coefficient (see
            :attr:`StepRecord.clip_coef <gradguard.records.StepRecord.clip_coef>`) and counted
            in ``counters["clipped"]``.
        policy: a :class:`~gradguard.policy.PolicyConfig` or a ready
            :class:`~gradguard.policy.EscalationPolicy`; ``None`` for the defaults.
        snapshot_every: take a snapshot after this many healthy applied steps (and only after
            ``policy.quiet`` steps without a warning); ``None`` disables snapshots and thereby
            rollback (the guard then resets optimizer moments instead).
        snapshot_keep: how many snapshots to keep (bounded memory or disk).
        snapshot_dir: write snapshots atomically into this directory instead of memory. The
            guard locks it, and refuses to step while it holds another run's snapshots unless
            :meth:`resume` continues that run. When a write fails (disk full, read-only or
            deleted folder) the guard warns once and keeps its snapshots in memory instead.
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
        on_give_up: when every rescue failed (the rollback budget spent, then the last resort of
            tight clipping with the rate capped spent too): ``"raise"`` (the default) raises
            :class:`~gradguard.errors.TrainingDivergedError` with advice; ``"stop"`` sets
            :attr:`should_stop` and skips every later step (for framework loops that poll it);
            ``"continue"`` skips the failing step and carries on in the last resort. In every
            case the weights are left finite.

    Raises:
        ConfigError: an argument is out of range or of the wrong kind, the model does not hold
            every parameter of the optimizer, or ``process_group`` / ``sharded_grads`` come with
            a ready ``monitor``.
        SnapshotError: ``snapshot_dir`` cannot be created, or another guard has it open.
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
        on_give_up: GiveUp = "raise",
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
        self.on_give_up: GiveUp = check_choice(
            "on_give_up",
            on_give_up,
            ("raise", "stop", "continue"),
            fix="'raise' (the default) stops a script with advice; 'stop' sets guard.should_stop "
            "for framework loops.",
        )
        self.should_stop = False
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ConfigError(
                f"scheduler={type(scheduler).__name__} needs the metric it watches "
                "(scheduler.step(val_loss)), and the guard, which steps its scheduler after every "
                "applied step, has none. Step it yourself once per validation and pass "
                "scheduler=None; the guard's learning-rate backoff scales whatever rate it sets."
            )
        self._named = _guarded_parameters(model, optimizer)
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
        self.rates = RateCeiling(optimizer)
        closure_param = inspect.signature(optimizer.step).parameters.get("closure")
        self._needs_closure = (
            closure_param is not None and closure_param.default is closure_param.empty
        )
        self._clipper: Clipper | None = None
        mode: ClipMode
        if clip == "auto" and self._needs_closure:
            # A quasi-Newton step (LBFGS) is set by its curvature model, fitted to differences
            # of gradients: scaled gradients are scaled back by it, and a factor that changes
            # from step to step corrupts it. Left unclipped, it is guarded by skips, backoffs
            # and rollbacks; an explicit clip=float is still honoured.
            mode = None
        elif clip is None or clip == "auto":
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
        self._shapes = _shapes(model)
        self.restore_rng = bool(restore_rng)
        self.sinks: tuple[Sink, ...] = with_default_logging(sinks)
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
        # Last, so that a refused argument above leaves no lock on snapshot_dir behind.
        self.store: SnapshotStore = (
            DiskSnapshotStore(snapshot_dir, keep=snapshot_keep)
            if snapshot_dir is not None
            else MemorySnapshotStore(keep=snapshot_keep)
        )
        self.parts = self._snapshot_parts()
        # Another run's snapshots in snapshot_dir: refuse to step until resume() adopts them.
        self._foreign: str | None = None
        store = self.store
        if snapshot_every is not None and isinstance(store, DiskSnapshotStore):
            self._foreign = store.conflict() if store.other_runs() else None
        self._step = 0
        self._progress = 0  # applied steps the weights reflect (rollbacks take some back)
        self._since_snapshot = 0
        self.counters: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._last_culprits: tuple[str, ...] = ()
        self._cause = ""  # the last cause of non-finite weights found, for an abort's text
        self._restored: tuple[int, int] | None = None  # (incident start, key) of the last rollback
        # (progress, steps it lost, training state) the last rollback abandoned, kept while the
        # policy probes whether the rollback was a diagnosis only (Decision.undo_rollback)
        self._abandoned: tuple[int, int, dict[str, Any]] | None = None
        self._last_applied = False  # the last step was applied on finite gradients
        eps = self._underflowing_eps()
        if eps is not None:
            warnings.warn(
                f"{type(optimizer).__name__}'s eps={eps:g} rounds to 0 with float16 "
                "weights, so a zero gradient makes its update 0/0 = NaN. Keep fp32 master "
                "weights (torch.amp autocast with a GradScaler) or raise eps to 1e-4 or more; "
                "until then the guard rolls back every update that turns the weights NaN.",
                UserWarning,
                stacklevel=2,
            )
        if snapshot_every is not None and self._foreign is None:
            self.snapshot()

    # ------------------------------------------------------------------------------ the step
    def step(
        self,
        loss: Tensor | float | None = None,
        *,
        closure: Callable[[], Any] | None = None,
    ) -> StepRecord:
        """Measure, detect, decide, clip and step (or not); call it instead of ``optimizer.step()``.

        Call it once per optimizer step, after ``backward`` (with gradient accumulation: after
        the last micro-batch). Zero the gradients yourself as usual.

        Args:
            loss: the loss of this step (a tensor stays on the device until the one transfer),
                or ``None``.
            closure: for optimizers that re-evaluate the model (``LBFGS``): the closure you
                would pass to ``optimizer.step`` (zero the gradients, forward, backward, return
                the loss). The guard calls it once to measure and decide; the optimizer's first
                evaluation reuses that result (with the gradients as clipped), later ones call
                it again. Do not call ``backward`` yourself then, nor pass ``loss``.

        Returns:
            The :class:`~gradguard.records.StepRecord` of what was done and why.

        Raises:
            TrainingDivergedError: the policy spent its rescue budget; the message says what
                happened and what to try. The record is attached as ``err.record``.
        """
        if closure is None:
            if self._needs_closure:
                raise ConfigError(
                    f"{type(self.optimizer).__name__} re-evaluates the model inside its step, so "
                    "it needs the closure: call guard.step(closure=closure) with the function "
                    "you would pass to optimizer.step (zero_grad, forward, backward, return loss)."
                )
            pending = self.begin_step(loss)
            if pending.decision.apply:
                with self.learning_rate(pending):
                    self.optimizer.step()
            return self.finish_step(pending)
        if loss is not None:
            raise ConfigError(
                "pass either loss or closure to Guard.step, not both: with a closure the guard "
                "computes the loss itself (guard.step(closure=closure))."
            )
        if not callable(closure):
            raise ConfigError(
                f"closure must be callable (zero_grad, forward, backward, return the loss), got "
                f"{closure!r:.80}."
            )
        with torch.enable_grad():
            first = [closure()]
        pending = self.begin_step(first[0])

        def replay() -> Any:
            if first:  # the optimizer's first evaluation: the gradients measured above
                return first.pop()
            with torch.enable_grad():
                return closure()

        if pending.decision.apply:
            with self.learning_rate(pending):
                self.optimizer.step(replay)
        return self.finish_step(pending)

    @contextlib.contextmanager
    def learning_rate(self, pending: PendingStep) -> Iterator[None]:
        """Inside the block every group's rate is what ``pending`` decided (backoffs, ceilings).

        For callers of :meth:`begin_step` that step the optimizer themselves: wrap that call.
        """
        self.rates.set_scale(pending.decision.lr_scale)
        with self.rates.applied():
            yield

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
        if self._foreign is not None:
            raise SnapshotError(self._foreign)
        scaler = self.scaler if self.scaler is not None and self.scaler.is_enabled() else None
        if scaler is not None and not already_unscaled(scaler, self.optimizer):
            scaler.unscale_(self.optimizer)  # unless the script did (to clip), as nanoGPT does
        # Global norms before clipping or deciding, so every rank clips and decides alike.
        stats = self.monitor.measure(self._named, norm_type=2.0)  # clip_grad_norm_'s norm
        coef: Tensor | float | None = None
        if self._clipper is not None and stats.grads:
            # Queued on the device before the sync below; its coefficient rides along in it.
            coef = step_coefficient(stats, self._clipper.clip_(stats))
        # HOST SYNC: the one transfer, inside.
        obs, alerts = self.monitor.watch(loss, stats=stats, clip_coef=coef)
        if self.should_stop:
            action = Action(
                ActionKind.SKIP,
                Reason.BUDGET_EXHAUSTED,
                "The guard gave up earlier (on_give_up='stop'): step skipped; stop the loop "
                "when guard.should_stop is set.",
            )
            decision = Decision(action, apply=False, lr_scale=self.policy.lr_scale)
            return PendingStep(self._step, obs, tuple(alerts), decision, False)
        overflow = False
        if not obs.finite or not obs.loss_finite:
            # Rare path (a fault): one more host read each, to tell what went wrong.
            overflow = scaler is not None and obs.loss_finite and self._scale_overflowed(scaler)
            local = self.monitor.process_group is None  # a rank-local read must not decide
            if not overflow and local and not _all_finite(self._params()):
                obs = dataclasses.replace(obs, param_norm=math.nan)  # the weights are corrupt
        decision = self.policy.decide(
            obs,
            alerts,
            can_rollback=self.snapshot_every is not None and bool(self.store.steps()),
            scaler_overflow=overflow,
            clipper=self._clipper_name,
            can_undo=self._abandoned is not None,
        )
        # The rates in force now are the ones a backoff judges, before a rollback or the
        # scheduler changes them.
        self.rates.set_scale(decision.lr_scale)
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
        if not isinstance(pending, PendingStep) or pending.step != self._step:
            done = getattr(pending, "step", None)
            raise ConfigError(
                f"finish_step got the pending step of step {done!r}, but the guard is at step "
                f"{self._step}: call begin_step once, then finish_step once with what it "
                "returned (a second finish_step would record the step twice)."
            )
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
            if obs.finite or overflow:
                scaler.update()
            else:
                # A real fault, not the scale's: keep the scale, or intermittent faults halve
                # it to nothing and every later gradient underflows to zero.
                scaler.update(new_scale=scaler._scale)
        rolled_back_to, lost, message = None, 0, decision.action.message
        cause = ""
        if decision.action.reason is Reason.NONFINITE_PARAM:
            cause = f" {self._nonfinite_weights_cause()}"
            self._cause = cause.strip()
        if decision.reset_baselines:
            self.monitor.reset_detectors()
        if decision.undo_rollback and self._abandoned is not None:
            self._progress, lost_then, state = self._abandoned
            self.parts.load(state, rollback=True, only=_TRAINING_PARTS)
            if decision.reset_moments:
                reset_optimizer_state_(self.optimizer)
            self.counters["steps_lost"] -= lost_then  # the rollback's lost steps are back
        self._abandoned = self._abandoned if self.policy.probing else None
        if kind is ActionKind.ROLLBACK:
            rolled_back_to, lost, message = self._rollback(decision)
        elif kind is ActionKind.RESET_OPTIMIZER_STATE:
            reset_optimizer_state_(self.optimizer)
        message += cause
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
            lr=self._effective_lr(),
            alerts=tuple(alerts),
            top=obs.top,
            rolled_back_to=rolled_back_to,
            steps_lost=lost,
        )
        self._step += 1
        for sink in self.sinks:
            sink.write(record)
        if kind is ActionKind.ABORT:
            self._give_up(record)
        self._last_applied = decision.apply and obs.finite
        if decision.apply:
            self._since_snapshot += 1
            self._maybe_snapshot()
        return record

    @staticmethod
    def _clip(stats: GradStats, obs: Observation, bound: float | None) -> None:
        """Scale the gradients to ``bound`` in place: a device coefficient, no host sync.

        The host already knows the norm (transferred once), so the multiply is skipped when the
        coefficient is certainly 1; near the bound the device decides, exactly as
        ``clip_grad_norm_`` does, which keeps a guarded run bit-identical to it. The bound comes
        from the policy (a ``clip`` float or ``fallback_bound``, both checked when set, or a
        healthy norm it keeps > 0), so it is not checked again here.
        """
        if bound is None or not stats.grads or bound / (obs.total_norm + EPS) > 1.0 + 1e-6:
            return
        _apply_global_bound_(stats, bound, EPS)

    def _effective_lr(self) -> float | None:
        """The first group's rate as the guard applies it (schedule, backoff and ceiling)."""
        lr = self.optimizer.param_groups[0].get("lr") if self.optimizer.param_groups else None
        if isinstance(lr, (int, float)):
            return self.rates.rate(0, float(lr))
        return None  # a tensor learning rate would need a host sync to read

    def _params(self) -> list[Tensor]:
        return [local_tensor(p) for _, p in self._named]

    def _scale_overflowed(self, scaler: torch.amp.GradScaler) -> bool:
        """Whether a non-finite gradient under a finite loss is the GradScaler's own overflow.

        Only a scale that puts the healthy gradients near float16's range can overflow them;
        before any healthy norm exists (a scaler warming up from a huge ``init_scale``), any
        scale above 1 can.
        """
        scale = float(scaler.get_scale())  # HOST SYNC: rare path, a fault step only
        typical = self.policy.healthy_norm()
        if typical is None:
            return scale > 1.0
        return scale * typical * _SCALER_HEADROOM >= _FP16_MAX

    def _nonfinite_weights_cause(self) -> str:
        """Why the weights may have become non-finite, for the rollback's message."""
        if not self._last_applied:
            return "Restored from a snapshot."
        eps = self._underflowing_eps()
        name = type(self.optimizer).__name__
        if eps is not None:
            return (
                f"The last optimizer step was applied on finite gradients, so {name}'s update "
                f"itself produced them: with float16 weights its eps={eps:g} rounds "
                "to 0, and a zero gradient divides 0 by 0. Keep fp32 master weights (torch.amp "
                "autocast with a GradScaler) or raise eps to 1e-4 or more."
            )
        return (
            f"The last optimizer step was applied on finite gradients, so {name}'s update itself "
            "produced them (an overflow inside the optimizer, or a weight changed outside it)."
        )

    def _underflowing_eps(self) -> float | None:
        """The optimizer's ``eps`` when float16 weights round it to 0, else ``None``."""
        if not any(p.dtype is torch.float16 for p in self._params()):
            return None
        eps = [g.get("eps") for g in self.optimizer.param_groups]
        tiny = [e for e in eps if isinstance(e, float) and e > 0.0 and _float16(e) == 0.0]
        return tiny[0] if tiny else None

    def _give_up(self, record: StepRecord) -> None:
        """Every rescue failed: leave finite weights, then raise, ask to stop, or go on."""
        if not _all_finite(self._params()) and self.store.steps():
            state = self._load_readable(self.store.steps()[-1])[1]
            self.parts.load(state, rollback=True, only=_TRAINING_PARTS)
        if self.on_give_up == "raise":
            advice = abort_advice(
                self.policy.history(), lr=record.lr, culprits=self._last_culprits, cause=self._cause
            )
            raise TrainingDivergedError(advice, record)
        self.should_stop = self.should_stop or self.on_give_up == "stop"

    def _count(self, decision: Decision, overflow: bool, lost: int) -> None:
        c, kind = self.counters, decision.action.kind
        c["steps"] += 1
        if decision.apply:
            c["applied"] += 1
            # A CLIP, or a backoff or recovery whose gradients were scaled (by either clipper).
            c["clipped"] += kind is ActionKind.CLIP or decision.clip_coef < 1.0 - CLIP_TOLERANCE
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

        A snapshot holds the parts ``_snapshot_parts`` registers (``guard.parts``), plus the step,
        the applied-step count and the model's parameter names and shapes, checked before it is
        restored.

        When a disk snapshot cannot be written the guard warns once, keeps this snapshot and the
        following ones in memory, and training goes on.

        Raises:
            SnapshotError: ``snapshot_dir`` holds another run's snapshots (see :meth:`resume`).
        """
        if self._foreign is not None:
            raise SnapshotError(self._foreign)
        self.counters["snapshots"] += 1
        self._since_snapshot = 0
        # HOST SYNC: copying the state to the CPU (or disk), once every `snapshot_every` steps.
        state: dict[str, Any] = {
            "step": self._step,
            "progress": self._progress,
            "shapes": self._shapes,
            **self.parts.save(),
        }
        try:
            try:
                self.store.save(self._step, state)
            except SnapshotError as err:
                if not isinstance(self.store, DiskSnapshotStore):
                    raise
                self._snapshots_to_memory(err)
                self.store.save(self._step, {**state, "guard": None})
        except BaseException:
            self.counters["snapshots"] -= 1
            raise
        self.policy.snapshot_taken()
        return self._step

    def _snapshot_parts(self) -> StateRegistry:
        """What a snapshot holds, in the order a rollback or a resume restores it.

        A rollback restores the training objects, the random generators (``restore_rng``) and
        what the detectors and the policy learned as healthy for those weights; the budgets, the
        incident and the learning-rate scale stay live. Only a resume restores the guard's whole
        state, which disk snapshots alone hold (the monitor's history is most of the copying
        cost of a small model's memory snapshot).
        """
        parts = StateRegistry()
        parts.add("model", self.model.state_dict, self.model.load_state_dict)
        parts.add("optimizer", self.optimizer.state_dict, self.optimizer.load_state_dict)

        def optional(name: str) -> None:  # the scheduler and scaler may be None
            def save() -> Any:
                return getattr(self, name).state_dict()

            def load(state: Any) -> None:
                if (obj := getattr(self, name)) is not None:  # a resume into a guard without it
                    obj.load_state_dict(state)

            parts.add(name, save, load, saved=lambda: getattr(self, name) is not None)

        optional("scheduler")
        optional("scaler")
        # restore_rng is a public switch: read at each rollback.
        parts.add("rng", capture_rng_state, restore_rng_state, on_rollback=lambda: self.restore_rng)
        # Baselines learned on an abandoned trajectory would judge the restored weights'
        # ordinary loss and norms as spikes (a run whose loss had fallen far since, say). A
        # resume restores them with the guard's whole state instead.
        parts.add(
            "detectors",
            self.monitor.detector_state,
            lambda state: self.monitor.load_detector_state(state, rollback=True),
            on_resume=False,
        )
        parts.add("baselines", self.policy.baselines, self.policy.load_baselines, on_resume=False)
        parts.add(
            "guard",
            self.state_dict,
            self.load_state_dict,
            on_rollback=False,
            saved=lambda: isinstance(self.store, DiskSnapshotStore),
        )
        return parts

    def _snapshots_to_memory(self, err: SnapshotError) -> None:
        """A disk snapshot failed: warn once and keep snapshots in memory from now on."""
        disk = self.store
        self.store = MemorySnapshotStore(keep=disk.keep)
        if isinstance(disk, DiskSnapshotStore):
            disk.close()
        warnings.warn(
            f"snapshots disabled: {err}; rollback falls back to the in-memory snapshot. Training "
            "goes on with snapshots kept in memory; free space or fix the folder and call "
            "Guard(..., snapshot_dir=...) anew to write them to disk again.",
            RuntimeWarning,
            stacklevel=3,
        )

    def _load(self, key: int) -> dict[str, Any]:
        """The snapshot of ``key``, refused when it was taken from a differently shaped model."""
        state = self.store.load(key)
        theirs = state.get("shapes")
        if theirs is not None and theirs != self._shapes:
            diff = sorted(set(theirs.items()) ^ set(self._shapes.items()))[:3]
            raise SnapshotError(
                f"the snapshot of step {key} was taken from a model with other parameters than "
                f"this one (first differences, name and shape: {diff!r}). Build the model of "
                "that run before resuming, or pass a fresh snapshot_dir to start a new run."
            )
        return state

    def _load_readable(self, key: int) -> tuple[int, dict[str, Any], str]:
        """Load ``key``, else the nearest snapshot that loads: older ones first, then newer.

        A damaged file (truncated, bit rot, a partial copy) must not stop a rescue while intact
        snapshots exist. Returns the key loaded, its state, and a note naming what was skipped.

        Raises:
            SnapshotError: no stored snapshot loads.
        """
        steps = self.store.steps()
        candidates = [s for s in reversed(steps) if s <= key] + [s for s in steps if s > key]
        failures: list[str] = []
        skipped: list[int] = []
        for candidate in candidates:
            try:
                state = self._load(candidate)
            except SnapshotError as err:
                failures.append(str(err))
                skipped.append(candidate)
                continue
            if not failures:
                return candidate, state, ""
            warnings.warn(
                f"{' '.join(failures)} Restored the snapshot of step {candidate} instead.",
                RuntimeWarning,
                stacklevel=4,
            )
            which = ", ".join(str(s) for s in skipped)
            plural = "s of steps" if len(skipped) > 1 else " of step"
            return candidate, state, f"the snapshot{plural} {which} could not be loaded"
        tried = " ".join(failures) or "none is stored."
        raise SnapshotError(
            f"no snapshot could be restored: {tried} Restart from a checkpoint of your own, "
            "with a lower learning rate."
        )

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
        chosen, why = self._choose_snapshot(before)
        key, state, skipped = self._load_readable(chosen)
        if skipped:
            why = f"the nearest that loads: {skipped}"
        self._restored = (before, key)
        # HOST SYNC: a CPU copy of what is abandoned, in case the probe shows the loss moved,
        # not the weights (rare: rollbacks about the loss level only; dropped when it ends).
        abandoned = cpu_copy(self.parts.save(only=_TRAINING_PARTS)) if self.policy.probing else None
        self.parts.load(state, rollback=True)
        if decision.reset_moments:
            reset_optimizer_state_(self.optimizer)
        self.store.discard_after(key)
        self._since_snapshot = 0
        lost = max(self._progress - int(state["progress"]), 0)
        self._abandoned = None if abandoned is None else (self._progress, lost, abandoned)
        self._progress = int(state["progress"])
        message = (
            f"{decision.action.message.rstrip('.')}: restored the snapshot of step {key} "
            f"({why}), {lost} applied steps lost."
        )
        return key, lost, message

    def resume(self, step: int | None = None) -> int:
        """Restore a snapshot completely (RNG, and guard state from disk), e.g. after a crash.

        A guard opened on a ``snapshot_dir`` that holds another run's snapshots continues that
        run (and only then may it step): the snapshots must be of a model with the same
        parameter names and shapes.

        Args:
            step: key of the snapshot to restore; ``None`` for the newest that loads (a damaged
                newest file is skipped with a warning).

        Returns:
            The key of the restored snapshot.

        Raises:
            SnapshotError: no snapshot is stored (or none of that key), or it is of another model.
        """
        store = self.store
        if isinstance(store, DiskSnapshotStore) and not store.steps():
            store.adopt()  # the run that wrote the folder's snapshots, e.g. before a crash
        steps = self.store.steps()
        if step is None and not steps:
            raise SnapshotError(
                "no snapshot to resume from; pass snapshot_dir= to keep snapshots on disk."
            )
        if step is None:
            key, state, _ = self._load_readable(steps[-1])
        else:
            key, state = step, self._load(step)
        self.parts.load(state, rollback=False)
        self._abandoned = None  # what a rollback of this process abandoned is not that run's
        self._foreign = None
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
            "rates": self.rates.state_dict(),
            "should_stop": self.should_stop,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (model and optimizer are restored by their own)."""
        check_mapping("state", state, fix="Pass what Guard.state_dict() returned.")
        self._abandoned = None  # this process's, not the loaded run's
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
        if state.get("rates") is not None:
            self.rates.load_state_dict(state["rates"])
        self.should_stop = bool(state.get("should_stop", False))
        load = getattr(self._clipper, "load_state_dict", None)
        if load is not None and state.get("clipper") is not None:
            load(state["clipper"])

    def stateful(self) -> GuardState:
        """The guard as a ``torch.distributed.checkpoint`` Stateful, to save beside the model.

        Example::

            dcp.save({"model": model.state_dict(), "guard": guard.stateful()}, checkpoint_id=d)
        """
        return GuardState(self)

    def close(self) -> None:
        """Close the sinks, and release ``snapshot_dir`` for another guard."""
        for sink in self.sinks:
            sink.close()
        if isinstance(self.store, DiskSnapshotStore):
            self.store.close()


class GuardState:
    """A guard's :meth:`Guard.state_dict` as one JSON leaf, for ``torch.distributed.checkpoint``.

    DCP flattens nested containers into keys and loads into a state of the same keys; the
    guard's state holds lists that grow (history, budgets, steps), so it travels as one string.
    """

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def state_dict(self) -> dict[str, Any]:
        """The guard's state, serialised."""
        return {"guard_json": json.dumps(self.guard.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Raises:
            ConfigError: ``state`` is not what :meth:`state_dict` returned.
        """
        check_mapping("state", state, fix="Load what guard.stateful() saved.")
        if not isinstance(state.get("guard_json"), str):
            raise ConfigError(
                f"the guard checkpoint lacks its 'guard_json' string (keys {sorted(state)!r}); "
                "load what guard.stateful() saved."
            )
        self.guard.load_state_dict(json.loads(state["guard_json"]))


_TRAINING_PARTS = ("model", "optimizer", "scheduler", "scaler")
"""The snapshot parts that giving up restores: finite weights, nothing the guard learned."""


def _float16(value: float) -> float:
    """``value`` rounded to float16 (``0.0`` where it underflows)."""
    return float(torch.tensor(value, dtype=torch.float16))


def _all_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every tensor holds only finite values (one host read: a fault path only)."""
    if not tensors:
        return True
    norms, _, _ = norms_in_groups([t.detach() for t in tensors], 2.0)
    return bool(norms.isfinite().all())


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

    Model order makes the global norm bit-identical to ``clip_grad_norm_(model.parameters())``.
    Every parameter the optimizer trains must be in the model: the model is what snapshots save
    and rollbacks restore, so a weight outside it would never be rolled back.

    Raises:
        ConfigError: the optimizer holds no parameters, or some the model does not hold.
    """
    in_optimizer = {id(p): p for group in optimizer.param_groups for p in group["params"]}
    if not in_optimizer:
        raise ConfigError(
            "the optimizer holds no parameters; build it from model.parameters() before the guard."
        )
    named: list[tuple[str, Tensor]] = [
        (name, p) for name, p in model.named_parameters() if id(p) in in_optimizer
    ]
    held = {id(p) for _, p in named}
    outside = [tuple(p.shape) for i, p in in_optimizer.items() if i not in held]
    if outside:
        raise ConfigError(
            f"the model ({type(model).__name__}) does not hold {len(outside)} of the "
            f"{len(in_optimizer)} parameters the optimizer trains (shapes {outside[:3]!r}). "
            "The guard snapshots and rolls back the model, so those weights would never be "
            "restored. Pass the module the optimizer was built from (not a copy such as an EMA "
            "or teacher model); register weights kept outside it on a module that holds both, "
            "e.g. nn.ModuleDict({'model': model, 'loss': loss_module})."
        )
    return NamedTensors(named)  # validated once: measure() skips re-checking every step


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the model's state: what a snapshot must match to be restored."""
    return {
        name: tuple(value.shape)
        for name, value in model.state_dict().items()
        if isinstance(value, Tensor)
    }
