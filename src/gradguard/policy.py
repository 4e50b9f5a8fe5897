"""The escalation ladder: from what one step looked like to what the guard does about it, and why.

Pure Python on host floats (no torch). The guard hands :meth:`EscalationPolicy.decide` the
:class:`~gradguard.records.Observation` of the step (the result of its one host transfer) and the
alerts the detectors raised; the policy answers with a :class:`Decision`: an
:class:`~gradguard.records.Action` (kind, reason, one sentence) plus what the guard must do,
including the clip bound for this step.

The ladder, climbed only while trouble keeps coming, each rung guarded by a budget and a
cool-down:

1. **clip**: finite steps are applied. With the automatic bound (``clip="auto"``) a healthy run
   is never clipped; a warning opens an *incident* (its first step is remembered so that a
   rollback returns to a state from before it), and while it is open the gradients are clipped
   to the run's own healthy scale (the median of recent healthy norms; the first norm, at most
   ``fallback_bound``, before there is any). After skipped faults alone the bound is
   ``isolated_clip_factor`` times that median: ordinary steps go through untouched. Once the run
   needed an escalation, the bound stays on for good and follows the norms down, never up.
2. **skip**: a non-finite gradient or loss, a loss ``loss_jump`` times its healthy median or a
   critical loss spike (and, without clipping, a critical gradient spike) skips the step:
   weights, optimizer state and schedule stay untouched. A finite loss spike between healthy
   steps is the data's and spends no budget.
3. **back off**: more than ``skip_budget`` faulty steps within ``window`` steps, a growth trend
   of the gradient norm, a loss-spike warning, or a loss that zig-zags while the incident's
   steps are clipped scale the learning rate of every parameter group by ``backoff_factor``;
   ``restore_after`` healthy steps raise it back one rung at a time.
4. **roll back**: ``consecutive_limit`` faulty steps in a row (the same weights failed on
   different batches), a fault after ``max_backoffs`` backoffs in one incident, a divergence, a
   loss stuck far above its healthy level, an explosion from the first steps or a non-finite
   weight restore the newest snapshot taken before the incident began, reset the optimizer
   moments and back off.
5. **last resort**: when ``max_rollbacks`` rollbacks within ``rollback_window`` steps are spent,
   every step is clipped tightly and the rate capped, with a fresh budget.
6. **give up**: when that budget is spent too, the decision is ``ABORT``; the guard raises,
   asks the loop to stop, or goes on, as its ``on_give_up`` says.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeAlias

from gradguard.errors import (
    ConfigError,
    check_bool,
    check_int,
    check_mapping,
    check_positive,
    check_real,
)
from gradguard.records import (
    CLIP_TOLERANCE,
    Action,
    ActionKind,
    Alert,
    AlertKind,
    Observation,
    Reason,
    Severity,
)

__all__ = ["ClipMode", "Decision", "EscalationPolicy", "PolicyConfig", "abort_advice"]

ClipMode: TypeAlias = float | Literal["auto", "external"] | None
"""How the guard clips: a fixed bound, the policy's automatic bound, a clipper object
(``"external"``: clipped before the policy sees the step) or not at all (``None``)."""

EPS = 1e-6
"""Added to the norm in the clip coefficient, as ``torch.nn.utils.clip_grad_norm_`` does."""


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Budgets, cool-downs and switches of the escalation ladder.

    The defaults aim at "first do no harm": a healthy run is never touched; an isolated bad step
    is skipped; a burst of them slows the run down; a run whose weights went bad is rolled back;
    a run that keeps failing after three rollbacks stops with advice instead of burning compute.

    Attributes:
        skip_nonfinite: skip steps whose gradient or loss is NaN/Inf. Turning this off lets
            non-finite values reach the weights; it exists for experiments only.
        skip_spikes: also skip steps with a critical *finite* gradient spike or threshold alert.
            ``None`` (automatic) means "only when the guard does not clip": with clipping, a
            finite spike is already tamed and skipping would waste the batch.
        skip_budget: faulty steps tolerated within ``window`` steps before backing off.
        window: length, in steps, of the window in which faults are counted.
        backoff_factor: learning-rate multiplier of one backoff (0 < factor < 1).
        max_backoffs: backoffs within one incident before the next fault rolls back instead.
        min_lr_scale: the learning-rate scale never goes below this.
        restore_after: healthy steps (no alert, no incident) before the scale is raised by one
            rung (divided by ``backoff_factor``, capped at 1), and for which the automatic clip
            stays on after an escalation; ``None`` never restores the scale.
        recovered_ratio: a step counts as healthy toward ``restore_after`` only if its gradient
            norm is within this many times the healthy median: a run whose norms stay high
            after an incident still leans on the clip, and raising its learning rate then
            brings the trouble straight back.
        consecutive_limit: faulty steps in a row that prove the weights themselves are bad
            (skipping cannot help when the weights do not change), triggering a rollback. Two:
            the same weights failed on two different batches. Twice that for finite loss spikes
            right after a healthy step, which cannot have made the weights much worse.
        max_rollbacks: rollbacks allowed within ``rollback_window`` steps; one more aborts.
        rollback_window: window, in steps, in which rollbacks are counted.
        cooldown: steps after a backoff or rollback during which faults are skipped without
            climbing the ladder, so the remedy has time to show its effect.
        quiet: steps without any warning that close an incident (not before the protection
            window of an escalation ends); the guard takes snapshots only outside incidents and
            after this many quiet steps, and rolls back only to snapshots at least this many
            steps older than the incident, so no snapshot holds a run already in trouble.
        reset_moments: reset the optimizer's moments (Adam's m and v, momentum buffers) when
            rolling back, so the momentum of the failed trajectory does not push it down again.
        backoff_on_rollback: also back off the learning rate when rolling back, so the run does
            not walk the same path into the same cliff; the k-th rollback within
            ``rollback_window`` applies ``backoff_factor`` k times.
        backoff_on_trend: back off the learning rate on a growth-trend alert (the gradient norm
            grows geometrically) or a loss-spike warning (the loss jumped tenfold): the step
            size is past the stability limit, and clipping alone leaves the run oscillating at
            the edge; once per ``cooldown``, at most ``max_backoffs`` times per incident.
        max_scaler_overflows: a GradScaler's overflow (the guard tells it from a real fault by
            the scale: only a scale that lifts the healthy gradients near float16's range can
            overflow) is skipped without climbing the ladder, up to this many in a row. 128
            halvings take any float32 scale below 1: a warm-up from Megatron's 2**32 needs ~30.
        restart_fraction: while fewer than ``min_history`` healthy norms exist (the run went
            wrong in its first steps), the automatic bound is this fraction of the first finite
            norm of the run (the scale of the weights an early explosion is rolled back to), at
            most ``fallback_bound``.
        fallback_bound: the automatic bound when not even one finite norm was seen, the cap of
            the bound before any healthy history and of the last resort's; 1.0 is the usual
            global-norm bound of the literature.
        baseline: how many recent healthy steps form the baselines (norm and loss medians).
        min_history: healthy norms needed before their median replaces ``fallback_bound``.
        loss_jump: during the first ``baseline`` steps, while the detectors warm up, a finite
            loss this many times the median of the healthy losses so far is a fault (skipped).
            Later the detectors' loss-spike rule, calibrated on a robust spread, takes over:
            heavy-tailed healthy runs reach 10-1000x now and then.
        stuck_after: an incident that has lasted this many steps since it began (or since the
            last escalation) while the loss is ``stuck_ratio`` times its healthy median is a
            divergence: clipping and backoffs kept the run finite but not on track, so it rolls
            back. ``None`` never does.
        stuck_ratio: see ``stuck_after``.
        oscillation_steps: this many clipped steps in a row, during an incident, whose losses
            alternate up and down, each pair ``oscillation_ratio`` apart, back the learning
            rate off (like a growth trend, with the same cooldown and budget): the step is past
            the stability limit and the clipped run bounces across a valley instead of
            descending it. ``None`` never does.
        oscillation_ratio: see ``oscillation_steps``.
        isolated_clip_factor: an incident opened by one skipped fault, with no other alert
            after it, is *isolated*: the weights never saw the bad step, so the next steps are
            clipped only above this many times the healthy median (catching a second wild
            gradient without touching the ordinary ones, which would slow the run down).
    """

    skip_nonfinite: bool = True
    skip_spikes: bool | None = None
    skip_budget: int = 3
    window: int = 100
    backoff_factor: float = 0.5
    max_backoffs: int = 2
    min_lr_scale: float = 2.0**-10
    restore_after: int | None = 100
    recovered_ratio: float = 2.0
    consecutive_limit: int = 2
    max_rollbacks: int = 3
    rollback_window: int = 1000
    cooldown: int = 10
    quiet: int = 20
    reset_moments: bool = True
    backoff_on_rollback: bool = True
    backoff_on_trend: bool = True
    max_scaler_overflows: int = 128
    fallback_bound: float = 1.0
    restart_fraction: float = 1.0
    baseline: int = 32
    min_history: int = 5
    loss_jump: float = 100.0
    stuck_after: int | None = 10
    stuck_ratio: float = 10.0
    oscillation_steps: int | None = 8
    oscillation_ratio: float = 1.5
    isolated_clip_factor: float = 4.0

    def __post_init__(self) -> None:
        for name in ("skip_nonfinite", "reset_moments", "backoff_on_rollback", "backoff_on_trend"):
            check_bool(name, getattr(self, name), fix="See PolicyConfig for what each switch does.")
        if self.skip_spikes is not None:
            check_bool("skip_spikes", self.skip_spikes, fix="Or None, the automatic choice.")
        for field in dataclasses.fields(self):  # every float setting is a real number, not "2"
            if field.type == "float":
                check_real(field.name, getattr(self, field.name), fix="See PolicyConfig.")
        for name in (
            "skip_budget",
            "max_backoffs",
            "max_rollbacks",
            "cooldown",
            "quiet",
            "max_scaler_overflows",
        ):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("window", "consecutive_limit", "rollback_window", "baseline", "min_history"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.restore_after is not None:
            _check_int("restore_after", self.restore_after, minimum=1)
        if self.stuck_after is not None:
            _check_int("stuck_after", self.stuck_after, minimum=1)
        if not self.stuck_ratio > 1.0:
            raise ConfigError(f"stuck_ratio must be a number > 1, got {self.stuck_ratio!r}.")
        if self.oscillation_steps is not None:
            _check_int("oscillation_steps", self.oscillation_steps, minimum=3)
        if not self.oscillation_ratio > 1.0:
            raise ConfigError(
                f"oscillation_ratio must be a number > 1, got {self.oscillation_ratio!r}; 1.5 "
                "means each loss at least 1.5x above or below the one before."
            )
        if not self.recovered_ratio > 1.0:
            raise ConfigError(
                f"recovered_ratio must be a number > 1, got {self.recovered_ratio!r}; 2 (the "
                "default) waits until the gradient norm is back within twice its healthy median."
            )
        if not self.isolated_clip_factor >= 1.0:
            raise ConfigError(
                f"isolated_clip_factor must be a number >= 1, got {self.isolated_clip_factor!r}; "
                "1 clips to the healthy median, 4 (the default) only clips wild gradients."
            )
        if not 0.0 < self.backoff_factor < 1.0:
            raise ConfigError(
                f"backoff_factor must lie strictly between 0 and 1, got {self.backoff_factor!r}. "
                "Use 0.5 to halve the learning rate at each backoff."
            )
        if not 0.0 < self.min_lr_scale <= 1.0:
            raise ConfigError(
                f"min_lr_scale must lie in (0, 1], got {self.min_lr_scale!r}. The default "
                "2**-10 lets ten backoffs happen before the scale stops shrinking."
            )
        check_positive("fallback_bound", self.fallback_bound, fix="1.0 is the usual bound.")
        if not 0.0 < self.restart_fraction <= 1.0:
            raise ConfigError(
                f"restart_fraction must lie in (0, 1], got {self.restart_fraction!r}. The "
                "default 1 clips to the first gradient norm (at most fallback_bound) until a "
                "healthy history exists."
            )
        if not self.loss_jump > 1.0 or math.isnan(self.loss_jump):
            raise ConfigError(
                f"loss_jump must be a number > 1 (or inf to disable), got {self.loss_jump!r}."
            )


def _check_int(name: str, value: object, *, minimum: int) -> None:
    fix = "See PolicyConfig for what each budget means; the defaults suit most runs."
    check_int(name, value, minimum=minimum, fix=fix)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the guard must do at one step, with the action it records.

    Attributes:
        action: kind, reason and the one-sentence explanation.
        apply: whether the optimizer step is applied to the weights.
        lr_scale: multiplier of every parameter group's learning rate from now on.
        clip_bound: bound on the global gradient norm for this step (``None``: do not clip).
        clip_coef: the factor the applied gradients were scaled by: that bound's coefficient,
            computed from the transferred norm, times a clipper object's
            (``Observation.clip_coef``) when one ran.
        rollback_before: for a rollback, restore the newest snapshot taken before this step.
        reset_moments: whether to reset the optimizer's moments (after restoring, if rolling back).
        reset_baselines: the loss level changed for good (see :meth:`EscalationPolicy.decide`):
            the detectors' baselines must start over, as the policy's did.
    """

    action: Action
    apply: bool
    lr_scale: float = 1.0
    clip_bound: float | None = None
    clip_coef: float = 1.0
    rollback_before: int | None = None
    reset_moments: bool = False
    reset_baselines: bool = False


_FAULT_KINDS = {
    AlertKind.NONFINITE_GRAD: Reason.NONFINITE_GRAD,
    AlertKind.NONFINITE_LOSS: Reason.NONFINITE_LOSS,
    AlertKind.LOSS_SPIKE: Reason.LOSS_SPIKE,
    AlertKind.LOSS_THRESHOLD: Reason.DIVERGENCE,
}
_SPIKE_KINDS = {
    AlertKind.GRAD_NORM_SPIKE: Reason.SPIKE,
    AlertKind.GRAD_NORM_THRESHOLD: Reason.NORM_ABOVE_BOUND,
}
_WARNING_REASONS = {
    **_FAULT_KINDS,
    **_SPIKE_KINDS,
    AlertKind.GROWTH_TREND: Reason.GROWTH_TREND,
    AlertKind.PARAM_NORM_GROWTH: Reason.GROWTH_TREND,
    AlertKind.EARLY_EXPLOSION: Reason.EARLY_EXPLOSION,
}


_STUCK_LEVEL = 5
"""Losses whose median is the loss level the stuck rule compares with the healthy one."""

_HISTORY = 512
"""Losses kept with their steps, to read the loss level at a growth trend's onset."""

_ONSET_WINDOW = 8

_LOSS_FLOOR = 1e-3
"""Loss ratios are taken against at least this fraction of the highest loss level of the run: a
loss converging to 1e-14 that wobbles to 1e-9 has not grown 1e5-fold in any sense that matters."""
"""Steps either side of a trend's onset whose losses give the level it began from."""

_UNSTABLE_KINDS = (AlertKind.GROWTH_TREND, AlertKind.LOSS_SPIKE, AlertKind.EARLY_EXPLOSION)
"""Alerts that say the step size is past the stability limit: the learning rate backs off."""


@dataclasses.dataclass
class _State:
    incident_start: int | None = None
    isolated: bool = False
    last_alert: int | None = None
    faults: list[int] = dataclasses.field(default_factory=list)
    consecutive: int = 0
    backoffs_in_incident: int = 0
    rollbacks: list[int] = dataclasses.field(default_factory=list)
    cooldown_until: int = -1
    protect_until: int = -1
    last_escalation: int = -1
    lr_scale: float = 1.0
    healthy_streak: int = 0
    overflow_streak: int = 0
    norms: list[float] = dataclasses.field(default_factory=list)
    losses: list[float] = dataclasses.field(default_factory=list)
    first_norm: float | None = None
    incident_losses: list[float] = dataclasses.field(default_factory=list)
    last_step: int | None = None
    loss_history: list[list[float]] = dataclasses.field(default_factory=list)  # [step, loss]
    last_restore: list[float] | None = None  # [step, scale] of the last raise of the rate
    ceiling: float = 1.0  # the rate is never raised back above this (a level that failed)
    probe: list[float] | None = None  # [step, loss, lr scale, persistent] before the rollback
    loss_peak: float = 0.0  # highest loss level (median of a few losses) seen in the run
    persistent: bool = False  # an escalation happened: the automatic bound stays on for good
    was_persistent: bool = False  # ``persistent`` when the open incident began
    last_resort: bool = False  # the rollback budget was spent once: tight clip, rate capped
    last_applied_healthy: bool = False  # the last applied step was a healthy one
    history: list[str] = dataclasses.field(default_factory=list)


_ADDED_IN_0_2 = {
    "last_applied_healthy": False,
    "loss_peak": 0.0,
    "persistent": False,
    "was_persistent": False,
    "last_resort": False,
}


class EscalationPolicy:
    """Turn alerts into actions along the clip → skip → backoff → rollback → abort ladder.

    Stateful but pure: all its state is host numbers behind :meth:`state_dict`, so a resumed run
    continues mid-incident with the same budgets spent and the same baselines.

    Args:
        config: budgets and switches; ``None`` uses :class:`PolicyConfig` defaults.
        clip: a float is a fixed global-norm bound; ``"auto"`` lets the policy choose the bound
            (none on healthy steps, the healthy scale during incidents); ``"external"`` means a
            clipper object clips before the policy decides; ``None`` means no clipping.

    Raises:
        ConfigError: ``config`` or ``clip`` is not one of those.
    """

    def __init__(self, config: PolicyConfig | None = None, *, clip: ClipMode = "auto") -> None:
        self.config = config if config is not None else PolicyConfig()
        if not isinstance(self.config, PolicyConfig):
            raise ConfigError(
                f"config must be a PolicyConfig, got {type(self.config).__name__} "
                f"{self.config!r:.80}. Build one with gradguard.PolicyConfig(skip_budget=...)."
            )
        if isinstance(clip, (int, float)) and not isinstance(clip, bool):
            self.clip: ClipMode = check_positive(
                "clip", clip, fix="Pass the max global norm, 'auto' or None."
            )
        elif clip in ("auto", "external", None):
            self.clip = clip
        else:
            raise ConfigError(
                f"clip must be a positive number, 'auto', 'external' or None, got {clip!r}."
            )
        skip_spikes = self.config.skip_spikes
        self._skip_spikes = (clip is None) if skip_spikes is None else skip_spikes
        self._s = _State()

    # ---------------------------------------------------------------- queries
    @property
    def lr_scale(self) -> float:
        """Current multiplier of every parameter group's learning rate."""
        return self._s.lr_scale

    @property
    def incident_start(self) -> int | None:
        """Step of the first alert of the open incident, or ``None`` when the run is quiet."""
        return self._s.incident_start

    def quiet_steps(self, step: int) -> int:
        """Steps from the last warning to ``step``; ``sys.maxsize`` when there was none yet."""
        last = self._s.last_alert
        return sys.maxsize if last is None else step - last

    def protected(self, step: int) -> bool:
        """Whether ``step`` falls in an incident or in the protection window after an escalation."""
        return self._s.incident_start is not None or step < self._s.protect_until

    def healthy_norm(self) -> float | None:
        """Median of the recent healthy gradient norms, or ``None`` before enough were seen."""
        norms = self._s.norms
        return statistics.median(norms) if len(norms) >= self.config.min_history else None

    def history(self) -> list[str]:
        """The messages of the last escalations (skips excluded), oldest first; for the abort."""
        return list(self._s.history)

    # ---------------------------------------------------------------- the decision
    def decide(
        self,
        observation: Observation,
        alerts: Sequence[Alert] = (),
        *,
        can_rollback: bool = True,
        scaler_overflow: bool = False,
        clipper: str = "the clipper",
    ) -> Decision:
        """Choose what to do with the optimizer step described by ``observation``.

        Args:
            observation: the host values of this step (norm, finiteness, loss, and
                ``clip_coef`` when a clipper object already scaled the gradients: an applied
                step then reports that factor, times the policy's own bound's if any).
            alerts: the alerts the detectors raised at this step.
            can_rollback: whether a snapshot exists to roll back to; when not, the rollback rung
                resets the optimizer state and backs off instead.
            scaler_overflow: the guard's GradScaler found non-finite gradients under a finite
                loss (its own overflow, see ``max_scaler_overflows``).
            clipper: how messages name the clipper behind ``observation.clip_coef``.

        Returns:
            The :class:`Decision`; every field is a host value.
        """
        s, cfg, t = self._s, self.config, observation.step
        s.last_step = t
        if observation.loss is not None and math.isfinite(observation.loss):
            s.loss_history.append([float(t), observation.loss])  # in place: 512 entries
            if len(s.loss_history) > _HISTORY:
                del s.loss_history[0]
            level = self._loss_level()
            if level is not None and level > s.loss_peak:
                s.loss_peak = level
        if s.first_norm is None and observation.finite and observation.total_norm > 0.0:
            s.first_norm = observation.total_norm
        s.overflow_streak = s.overflow_streak + 1 if scaler_overflow else 0
        if scaler_overflow and s.overflow_streak <= cfg.max_scaler_overflows:
            message = (
                f"The GradScaler's scale overflowed (gradient norm {observation.total_norm!r} "
                f"under a finite loss, {s.overflow_streak} in a row): step skipped and the scale "
                "lowered by the scaler, not counted as a fault."
            )
            action = Action(ActionKind.SKIP, Reason.SCALER_OVERFLOW, message)
            return Decision(action, apply=False, lr_scale=s.lr_scale)
        fault, warn, trend, culprits = self._classify(observation, alerts)
        onsets = [
            a.since
            for a in alerts
            if a.kind is AlertKind.GROWTH_TREND
            and a.since is not None
            and a.severity is not Severity.INFO
        ]
        since = min(onsets) if onsets else None
        if fault is None and self._loss_jumped(observation):
            fault = Reason.LOSS_SPIKE
        if fault is not None or warn is not None:
            # An incident of skipped faults only is isolated until a warning comes: the weights
            # never saw a bad step, so the next steps need no clipping.
            s.isolated = (s.incident_start is None or s.isolated) and fault is not None
            if s.incident_start is None:
                s.incident_start = t
                s.was_persistent = s.persistent
            s.last_alert = t
        elif (
            s.incident_start is not None
            and s.last_alert is not None
            and t - s.last_alert >= cfg.quiet
            and t >= s.protect_until
        ):
            self._close_incident()

        if fault is None and self._stuck(observation):
            what = (
                f"Loss {observation.loss:.4g} at least {cfg.stuck_ratio:g}x its healthy median "
                f"{cfg.stuck_after} or more steps into the incident"
            )
            why = "clipping and backoffs kept the run finite but not on track"
            return self._rollback(t, Reason.DIVERGENCE, what, why, can_rollback)
        if since is not None and s.incident_start is not None and since < s.incident_start:
            s.incident_start = since  # the trouble began where the growth did
        if self._same_after_rollback(observation, fault):
            return self._accept_new_level(observation)
        early = [a for a in alerts if a.kind is AlertKind.EARLY_EXPLOSION]
        if fault is None and early and early[0].severity is not Severity.INFO:
            # The run blew up before it had a healthy history: what the policy learned so far
            # is the explosion itself, and the weights it reached are not worth keeping.
            start = early[0].since if early[0].since is not None else t
            s.incident_start = min(s.incident_start or start, start)
            s.norms, s.losses = [], []
            what = early[0].message.split(":")[0]
            why = "the run is exploding from its first steps"
            return self._rollback(t, Reason.EARLY_EXPLOSION, what, why, can_rollback)
        grown = self._grown_since(since) if fault is None and since is not None else None
        if grown is not None and since is not None:
            what = (
                f"Loss level {grown[0]:.4g}, {grown[1]:.3g}x what it was at step {since} when the "
                "gradient norm began to grow"
            )
            why = "the weights have drifted since then"
            return self._rollback(t, Reason.GROWTH_TREND, what, why, can_rollback)
        if fault is None:
            return self._proceed(observation, warn, trend, culprits, clipper)

        s.consecutive += 1
        s.healthy_streak = 0
        # A finite loss spike in an incident of skipped faults alone is the data's: the weights
        # never saw it and the steps between were healthy, so it does not spend the budget (a
        # stream with a poisoned batch every few steps is skipped, not slowed down). Non-finite
        # gradients, which the model's own numerics can produce, always count.
        data_fault = fault is Reason.LOSS_SPIKE and s.isolated and s.consecutive == 1
        s.faults = [f for f in s.faults if f > t - cfg.window] + ([] if data_fault else [t])
        s.rollbacks = [r for r in s.rollbacks if r > t - cfg.rollback_window]
        what = self._describe_fault(fault, observation, culprits)
        if fault is Reason.NONFINITE_PARAM:
            why = "a non-finite weight cannot be trained back: only a snapshot restores it"
            return self._rollback(t, fault, what, why, can_rollback)
        # A healthy update cannot have made the weights a hundred times worse: after one, finite
        # loss spikes in a row are first taken for bad batches (a poisoned pair), and twice the
        # evidence is asked before the weights are blamed (a new task still gets there).
        limit = cfg.consecutive_limit
        if fault is Reason.LOSS_SPIKE and s.last_applied_healthy:
            limit *= 2
        if s.consecutive >= limit:
            why = f"{s.consecutive} faulty steps in a row show the weights themselves are bad"
            return self._rollback(t, Reason.REPEATED_FAULTS, what, why, can_rollback)
        if fault is Reason.DIVERGENCE:
            why = "the loss has diverged from its healthy level"
            return self._rollback(t, Reason.DIVERGENCE, what, why, can_rollback)
        if len(s.faults) > cfg.skip_budget and t >= s.cooldown_until:
            count = f"{len(s.faults)} faulty steps within {cfg.window} steps"
            if s.backoffs_in_incident >= cfg.max_backoffs:
                why = f"{count} after {s.backoffs_in_incident} backoffs in this incident"
                return self._rollback(t, Reason.REPEATED_FAULTS, what, why, can_rollback)
            return self._backoff(t, fault, f"{what}, and {count}", apply=False)
        left = max(cfg.skip_budget - len(s.faults), 0)
        note = (
            f"cooling down until step {s.cooldown_until}"
            if t < s.cooldown_until
            else f"{left} more within {cfg.window} steps before the learning rate is backed off"
        )
        message = f"{what}: step skipped, weights and optimizer state untouched ({note})."
        return Decision(Action(ActionKind.SKIP, fault, message), apply=False, lr_scale=s.lr_scale)

    def _classify(
        self, obs: Observation, alerts: Sequence[Alert]
    ) -> tuple[Reason | None, Reason | None, bool, tuple[str, ...]]:
        fault: Reason | None = None
        warn: Reason | None = None
        trend = False
        culprits: tuple[str, ...] = tuple(name for name, _ in obs.top[:1])
        if obs.param_norm is not None and not math.isfinite(obs.param_norm):
            fault = Reason.NONFINITE_PARAM  # the weights themselves are corrupt
        elif self.config.skip_nonfinite:
            if not obs.loss_finite:
                fault = Reason.NONFINITE_LOSS
            elif not obs.finite or not math.isfinite(obs.total_norm):
                fault = Reason.NONFINITE_GRAD
        for alert in alerts:
            if alert.severity is Severity.INFO:
                continue
            if alert.culprits and not culprits:
                culprits = alert.culprits[:1]
            reason = _WARNING_REASONS.get(alert.kind)
            if reason is None:
                continue
            critical = alert.severity is Severity.CRITICAL
            is_fault = alert.kind in _FAULT_KINDS or (
                alert.kind in _SPIKE_KINDS and self._skip_spikes
            )
            if alert.kind in (AlertKind.NONFINITE_GRAD, AlertKind.NONFINITE_LOSS):
                is_fault = self.config.skip_nonfinite
            if critical and is_fault:
                fault = fault or reason
            else:
                warn = warn or reason
            trend = trend or alert.kind in _UNSTABLE_KINDS
        return fault, warn, trend, culprits

    def _loss_scale(self, typical: float) -> float:
        """``typical`` raised to the loss floor: ratios to a loss near zero mean nothing."""
        return max(typical, _LOSS_FLOOR * self._s.loss_peak)

    def _loss_jumped(self, obs: Observation) -> bool:
        losses, loss = self._s.losses, obs.loss
        if obs.step >= self.config.baseline or not losses:
            return False  # from then on the detectors' calibrated loss-spike rule decides
        if loss is None or not math.isfinite(loss) or loss <= 0.0:
            return False
        typical = self._loss_scale(statistics.median(losses))
        return typical > 0.0 and loss >= self.config.loss_jump * typical

    def _stuck(self, obs: Observation) -> bool:
        """Whether the loss *level* (median of the last few losses) stays far above healthy.

        A median, not the step's own loss: with heavy-tailed data single losses 10x the median
        come and go in a healthy run.
        """
        s, cfg = self._s, self.config
        if cfg.stuck_after is None or not s.losses or s.incident_start is None:
            return False
        since = max(s.incident_start, s.last_escalation)
        level = self._loss_level()
        if obs.step - since < cfg.stuck_after or level is None:
            return False
        typical = self._loss_scale(statistics.median(s.losses))
        return typical > 0.0 and level >= cfg.stuck_ratio * typical

    def _oscillating(self) -> bool:
        """Whether the last ``oscillation_steps`` losses of the incident zig-zag by a wide margin.

        Up, down, up, down, each step at least ``oscillation_ratio`` times the one before or
        after it: the period-two signature of gradient descent past its stability limit
        (learning rate above 2 / the sharpest curvature), which clipping bounds but cannot cure.

        References:
            Cohen et al. (2021), Gradient descent on neural networks typically occurs at the edge
            of stability.
        """
        cfg, losses = self.config, self._s.incident_losses
        n = cfg.oscillation_steps
        if n is None or len(losses) < n:
            return False
        recent = losses[-n:]
        if min(recent) <= 0.0:
            return False  # ratios of losses that can be zero or negative mean nothing
        diffs = [b - a for a, b in itertools.pairwise(recent)]
        if any(d * e >= 0.0 for d, e in itertools.pairwise(diffs)):
            return False
        pairs = itertools.pairwise(recent)
        return all(max(a, b) >= cfg.oscillation_ratio * min(a, b) for a, b in pairs)

    def _bound(self, protected: bool) -> float | None:
        """The clip bound of this step: none on a run never rescued, the healthy scale after.

        Once the run needed an escalation it keeps the bound on every step (``persistent``): a
        model that exploded once explodes again when released, and one line of
        ``clip_grad_norm_`` would have held it all along. The last resort tightens it further.
        """
        s, cfg = self._s, self.config
        if isinstance(self.clip, float):
            return min(self.clip, cfg.fallback_bound) if s.last_resort else self.clip
        if self.clip != "auto" or not (protected or s.persistent or s.last_resort):
            return None
        isolated = s.isolated and (s.last_step is None or s.last_step >= s.protect_until)
        if isolated and not s.persistent:
            # The weights never saw the bad step: only a second wild gradient is clipped, measured
            # against whatever healthy norms exist (none yet: nothing to clip against).
            return statistics.median(s.norms) * cfg.isolated_clip_factor if s.norms else None
        typical = self.healthy_norm()
        if typical is not None:
            bound = typical
        elif s.first_norm is not None:
            bound = min(s.first_norm * cfg.restart_fraction, cfg.fallback_bound)
        else:
            bound = cfg.fallback_bound
        return min(bound, cfg.fallback_bound) if s.last_resort else bound

    def _proceed(
        self,
        obs: Observation,
        warn: Reason | None,
        trend: bool,
        culprits: tuple[str, ...],
        clipper: str,
    ) -> Decision:
        s, cfg, t = self._s, self.config, obs.step
        s.consecutive = 0
        s.last_applied_healthy = False  # until this step proves healthy below
        protected = self.protected(t)
        bound = self._bound(protected)
        if bound is not None and not bound > 0.0:  # healthy norms of exactly 0 give no scale
            bound = self.config.fallback_bound
        own = 1.0 if bound is None else min(1.0, bound / (obs.total_norm + EPS))
        clipped = bound is not None and obs.total_norm > bound
        # A clipper object ("external") scaled the gradients before this decision.
        external = 1.0 if obs.clip_coef is None else obs.clip_coef
        clipped_before = external < 1.0 - CLIP_TOLERANCE
        coef = external * own
        kind = ActionKind.CLIP if clipped or clipped_before else ActionKind.PROCEED
        scaled = [f"{clipper} scaled the gradients by {external:.3g}"] if clipped_before else []
        if clipped and bound is not None:
            scaled.append(f"gradients scaled by {own:.3g} (bound {bound:.3g})")
        done = f"{', '.join(scaled)} and the step applied" if scaled else "step applied"

        def decision(action: Action) -> Decision:
            return Decision(action, True, s.lr_scale, bound, coef)

        if protected and clipped and obs.loss is not None and math.isfinite(obs.loss):
            keep = cfg.oscillation_steps or 1
            s.incident_losses = [*s.incident_losses[-(keep - 1) :], obs.loss]
        else:
            s.incident_losses = []  # only a run of clipped steps can show the clip's failure
        oscillating = not trend and self._oscillating()
        if (
            (trend or oscillating)
            and cfg.backoff_on_trend
            and t >= s.cooldown_until
            and s.backoffs_in_incident < cfg.max_backoffs
        ):
            if oscillating:
                losses = ", ".join(f"{v:.3g}" for v in s.incident_losses)
                what = (
                    f"Loss zig-zagging ({losses}) over clipped steps: the step is past the "
                    "stability limit"
                )
                reason = Reason.OSCILLATION
            elif warn is Reason.GROWTH_TREND:
                what = f"Growth trend of the gradient norm ({obs.total_norm:.3g})"
                reason = warn
            else:
                loss = "not given" if obs.loss is None else f"{obs.loss:.4g}"
                what = (
                    f"Unstable step ({(warn or Reason.LOSS_SPIKE).value.replace('_', ' ')}, "
                    f"loss {loss}, gradient norm {obs.total_norm:.3g})"
                )
                reason = warn or Reason.GROWTH_TREND
            return self._backoff(t, reason, what, apply=True, bound=bound, coef=coef)
        if warn is not None:
            where = f" in {culprits[0]}" if culprits else ""
            message = (
                f"Warning ({warn.value.replace('_', ' ')}{where}, gradient norm "
                f"{obs.total_norm:.3g}) noted: {done}; the incident began at step "
                f"{s.incident_start}."
            )
            return decision(Action(kind, warn, message))
        typical = self.healthy_norm()
        if typical is not None and obs.total_norm > cfg.recovered_ratio * typical:
            s.healthy_streak = 0  # no warning, but the run still leans on the clip
        else:
            s.healthy_streak += 1
            s.last_applied_healthy = True
        if not protected:
            # Under the persistent bound a norm enters the baseline at most at the bound in
            # force: the bound follows the run down, never up (a slow drift upward would
            # otherwise carry it along, doubling every half window).
            norm = obs.total_norm
            if s.persistent and bound is not None:
                norm = min(norm, bound)
            s.norms = [*s.norms[-(cfg.baseline - 1) :], norm]
            if obs.loss is not None and math.isfinite(obs.loss):
                s.losses = [*s.losses[-(cfg.baseline - 1) :], obs.loss]
        if (
            s.lr_scale < s.ceiling
            and cfg.restore_after is not None
            and s.healthy_streak >= cfg.restore_after
            and not protected
        ):
            old = s.lr_scale
            s.lr_scale = min(s.ceiling, old / cfg.backoff_factor)
            s.healthy_streak = 0
            s.last_restore = [float(t), s.lr_scale]
            cap = (
                f" (its ceiling: {s.ceiling:.3g} failed soon after a raise)"
                if s.ceiling < 1
                else ""
            )
            message = (
                f"{cfg.restore_after} healthy steps since the last trouble: learning-rate scale "
                f"raised from {old:.3g} to {s.lr_scale:.3g}{cap}, {done}."
            )
            self._remember(message)
            return decision(Action(kind, Reason.RECOVERED, message))
        if kind is ActionKind.CLIP:
            why = "recovering from an incident" if protected else "above the bound"
            message = f"Gradient norm {obs.total_norm:.3g} while {why}: {done}."
            if not protected:
                above = " is above the bound" if clipped else ""  # a clipper's own rule decided
                message = f"Gradient norm {obs.total_norm:.3g}{above}: {done}."
            return decision(Action(kind, Reason.NORM_ABOVE_BOUND, message))
        message = f"Gradient norm {obs.total_norm:.3g} is within bounds: step applied."
        return decision(Action(kind, Reason.HEALTHY, message))

    def _loss_level(self) -> float | None:
        """Median of the last ``_STUCK_LEVEL`` finite losses, or ``None`` before that many."""
        recent = self._s.loss_history[-_STUCK_LEVEL:]
        if len(recent) < _STUCK_LEVEL:
            return None
        return statistics.median(loss for _, loss in recent)

    def _close_incident(self) -> None:
        s = self._s
        s.incident_start = None
        s.backoffs_in_incident = 0
        s.incident_losses = []

    def _grown_since(self, since: int) -> tuple[float, float] | None:
        """The loss level now and its ratio to the level at ``since``, if ``stuck_ratio`` apart.

        A growth trend that began long before the detectors could see it (a slow drift) has
        already poisoned the recent "healthy" baselines; the loss around its onset has not.
        """
        s = self._s
        around = [loss for step, loss in s.loss_history if abs(step - since) <= _ONSET_WINDOW]
        now = self._loss_level()
        if not around or now is None:
            return None
        then = self._loss_scale(statistics.median(around))
        if then <= 0.0 or now < self.config.stuck_ratio * then:
            return None
        return now, now / then

    def _same_after_rollback(self, obs: Observation, fault: Reason | None) -> bool:
        """Whether the weights just restored fail the way the abandoned ones did.

        Right after a rollback the weights are ones that were healthy. If they, too, give a
        finite loss far above their healthy level (``stuck_ratio`` times its median) and about
        as high as the one that triggered the rollback (at least a tenth of it), on new batches,
        the batches changed (a new task, dataset or curriculum stage), not the weights.
        Non-finite values, and a loss beyond the user's own divergence threshold, are never a
        new normal.
        """
        s, probe = self._s, self._s.probe
        if probe is None:
            return False
        step, loss = probe[0], probe[1]
        if obs.step - step > self.config.consecutive_limit:
            s.probe = None  # the restored weights got through: the rollback was right
            return False
        now = obs.loss
        if fault in (Reason.DIVERGENCE, Reason.NONFINITE_GRAD, Reason.NONFINITE_LOSS):
            return False
        if not obs.finite or now is None or not math.isfinite(now) or not math.isfinite(loss):
            return False
        if not s.losses:
            return False  # no healthy level to compare with
        typical = self._loss_scale(statistics.median(s.losses))
        high = self.config.stuck_ratio * typical
        return typical > 0.0 and loss >= high and now >= high and now >= 0.1 * loss

    def _accept_new_level(self, obs: Observation) -> Decision:
        """Take a confirmed change of the data's loss level as the new normal."""
        s, t = self._s, obs.step
        step, loss, scale, persistent = s.probe or [float(t), math.nan, s.lr_scale, 0.0]
        s.persistent = bool(persistent)  # the incident was the data's change, not instability
        if s.rollbacks and s.rollbacks[-1] == int(step):
            s.rollbacks.pop()  # the rollback was a diagnosis, not a rescue: refunded
        s.lr_scale = scale
        s.probe = None
        s.norms, s.losses, s.loss_history = [], [], []
        s.first_norm = obs.total_norm if obs.total_norm > 0.0 else None
        self._close_incident()
        s.isolated = False
        s.faults = []
        s.consecutive = 0
        s.protect_until = s.cooldown_until = t
        message = (
            f"The weights restored by the rollback at step {int(step)}, healthy before, give "
            f"a loss of {obs.loss:.4g} on new batches, as high as the {loss:.4g} that "
            "triggered it, so the data changed, not the weights: the new level is accepted "
            "(loss and gradient baselines start over, the rollback is not counted, "
            f"learning-rate scale back to {scale:.3g}) and the step applied."
        )
        self._remember(message)
        action = Action(ActionKind.PROCEED, Reason.REGIME_CHANGE, message)
        return Decision(action, apply=True, lr_scale=s.lr_scale, reset_baselines=True)

    def _escalated(self, t: int) -> None:
        s, cfg = self._s, self.config
        restore = s.last_restore
        if restore is not None and cfg.restore_after is not None:
            if t - restore[0] <= 2 * cfg.restore_after:
                # Trouble soon after the rate came back: that rate is not stable for this run.
                s.ceiling = min(s.ceiling, restore[1] * cfg.backoff_factor)
            s.last_restore = None
        s.cooldown_until = t + cfg.cooldown
        s.protect_until = t + (cfg.restore_after if cfg.restore_after is not None else cfg.quiet)
        s.healthy_streak = 0
        s.last_escalation = t
        s.incident_losses = []
        s.persistent = True

    def _backoff(
        self,
        t: int,
        reason: Reason,
        what: str,
        *,
        apply: bool,
        bound: float | None = None,
        coef: float = 1.0,
    ) -> Decision:
        s, cfg = self._s, self.config
        old = s.lr_scale
        s.lr_scale = max(old * cfg.backoff_factor, cfg.min_lr_scale)
        s.backoffs_in_incident += 1
        if not apply:
            s.faults = []
        self._escalated(t)
        done = (
            "step applied"
            + (f" with gradients scaled by {coef:.3g}" if coef < 1.0 - CLIP_TOLERANCE else "")
            if apply
            else "step skipped"
        )
        message = (
            f"{what}: {done} and the learning rate of every parameter group scaled from "
            f"{old:.3g} to {s.lr_scale:.3g} of its schedule (backoff {s.backoffs_in_incident} of "
            f"{cfg.max_backoffs} in this incident)."
        )
        self._remember(message)
        action = Action(ActionKind.BACKOFF, reason, message)
        return Decision(action, apply, s.lr_scale, bound if apply else None, coef)

    def _rollback(
        self, t: int, reason: Reason, what: str, why: str, can_rollback: bool
    ) -> Decision:
        s, cfg = self._s, self.config
        last_resort = ""
        if len(s.rollbacks) >= cfg.max_rollbacks and not s.last_resort and can_rollback:
            # Before giving up, the remedy of the literature for a model that keeps exploding:
            # tight clipping on every step, the rate capped where it is now. A fresh budget.
            s.last_resort = True
            s.rollbacks = []
            last_resort = (
                f" Last resort after {cfg.max_rollbacks} rollbacks: from now on every step is "
                "clipped tightly and the learning rate is never raised above this backoff."
            )
        if len(s.rollbacks) >= cfg.max_rollbacks:
            message = (
                f"{what}, and {why}, after {len(s.rollbacks)} rollbacks within "
                f"{cfg.rollback_window} steps: the rescue budget is spent, aborting the run."
            )
            self._remember(message)
            action = Action(ActionKind.ABORT, Reason.BUDGET_EXHAUSTED, message)
            return Decision(action, apply=False, lr_scale=s.lr_scale)
        old = s.lr_scale
        loss = s.loss_history[-1][1] if s.loss_history else math.nan
        s.probe = [float(t), loss, old, float(s.was_persistent)] if can_rollback else None
        if cfg.backoff_on_rollback:
            # The k-th rollback in the window backs off k times: a rate 100x too high is found
            # in three rollbacks (x1/64) instead of seven.
            factor = cfg.backoff_factor ** (len(s.rollbacks) + 1)
            s.lr_scale = max(old * factor, cfg.min_lr_scale)
        s.rollbacks.append(t)
        if can_rollback:  # the losses of the abandoned trajectory say nothing of the restored one
            start = s.incident_start if s.incident_start is not None else t
            s.loss_history = [entry for entry in s.loss_history if entry[0] < start]
        s.faults = []
        s.consecutive = 0
        s.backoffs_in_incident = 0
        self._escalated(t)
        if s.last_resort:
            s.ceiling = min(s.ceiling, s.lr_scale)
        before = s.incident_start if s.incident_start is not None else t
        rate = f"learning-rate scale {old:.3g} -> {s.lr_scale:.3g}"
        if can_rollback:
            moments = ", optimizer moments reset" if cfg.reset_moments else ""
            message = (
                f"{what}, and {why}: rolling back to the newest snapshot from before step "
                f"{before}{moments} and {rate}.{last_resort}"
            )
            self._remember(message)
            return Decision(
                Action(ActionKind.ROLLBACK, reason, message),
                apply=False,
                lr_scale=s.lr_scale,
                rollback_before=before,
                reset_moments=cfg.reset_moments,
            )
        message = (
            f"{what}, and {why}, but no snapshot exists to roll back to: step skipped, optimizer "
            f"state reset and {rate}."
        )
        self._remember(message)
        action = Action(ActionKind.RESET_OPTIMIZER_STATE, reason, message)
        return Decision(action, apply=False, lr_scale=s.lr_scale, reset_moments=True)

    def _remember(self, message: str) -> None:
        self._s.history = [*self._s.history[-7:], message]

    def _describe_fault(self, reason: Reason, obs: Observation, culprits: tuple[str, ...]) -> str:
        where = f" (largest in {culprits[0]})" if culprits else ""
        if reason is Reason.NONFINITE_LOSS:
            return f"Non-finite loss {obs.loss!r}"
        if reason is Reason.NONFINITE_GRAD:
            return f"Non-finite gradient norm {obs.total_norm!r}{where}"
        if reason is Reason.LOSS_SPIKE:
            typical = statistics.median(self._s.losses) if self._s.losses else math.nan
            return f"Loss spike to {obs.loss:.4g} (healthy median {typical:.3g})"
        if reason is Reason.DIVERGENCE:
            return f"Loss {obs.loss!r} beyond its divergence threshold"
        if reason is Reason.NONFINITE_PARAM:
            return f"Non-finite parameter norm {obs.param_norm!r}"
        kind = reason.value.replace("_", " ")
        return f"Critical gradient {kind} at norm {obs.total_norm:.3g}{where}"

    # ---------------------------------------------------------------- state
    def baselines(self) -> dict[str, list[float]]:
        """The healthy norms and losses the bounds and loss rules compare with (a snapshot's part).

        A rollback restores them with :meth:`load_baselines`, so the restored weights are judged
        against what was healthy for them, not against the trajectory that was abandoned; the
        budgets, the incident and the learning-rate scale stay live.
        """
        return {"norms": list(self._s.norms), "losses": list(self._s.losses)}

    def load_baselines(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`baselines`, even empty ones (a snapshot from before any history).

        The restored weights are judged against what was healthy for them: a step-0 snapshot
        brings the untrained weights back, and the baselines of a run that had since converged
        would call their ordinary loss a thousandfold spike. With none, they are relearned
        (the early-explosion rules watch that warm-up).
        """
        self._s.norms = [float(v) for v in state["norms"]]
        self._s.losses = [float(v) for v in state["losses"]]

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as plain Python values (ints, floats, lists, ``None``)."""
        out = dataclasses.asdict(self._s)
        out["skip_spikes"] = self._skip_spikes
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`.

        Raises:
            ConfigError: ``state`` lacks a field or was not produced by :meth:`state_dict`.
        """
        check_mapping("state", state, fix="Pass what EscalationPolicy.state_dict() returned.")
        names = [f.name for f in dataclasses.fields(_State)]
        state = {**_ADDED_IN_0_2, **state}  # state saved before these fields existed
        missing = [n for n in names if n not in state]
        if missing:
            raise ConfigError(
                f"policy state is missing {missing!r}; pass what EscalationPolicy.state_dict() "
                "returned."
            )
        fresh = _State(**{n: state[n] for n in names})
        fresh.faults = [int(f) for f in fresh.faults]
        fresh.rollbacks = [int(r) for r in fresh.rollbacks]
        fresh.norms = [float(v) for v in fresh.norms]
        fresh.losses = [float(v) for v in fresh.losses]
        fresh.incident_losses = [float(v) for v in fresh.incident_losses]
        fresh.loss_history = [[float(a), float(b)] for a, b in fresh.loss_history]
        fresh.last_restore = (
            None if fresh.last_restore is None else [float(v) for v in fresh.last_restore]
        )
        fresh.ceiling = float(fresh.ceiling)
        fresh.probe = None if fresh.probe is None else [float(v) for v in fresh.probe]
        fresh.isolated = bool(fresh.isolated)
        fresh.history = [str(h) for h in fresh.history]
        fresh.lr_scale = float(fresh.lr_scale)
        fresh.first_norm = None if fresh.first_norm is None else float(fresh.first_norm)
        fresh.loss_peak = float(fresh.loss_peak)
        fresh.persistent = bool(fresh.persistent)
        fresh.was_persistent = bool(fresh.was_persistent)
        fresh.last_resort = bool(fresh.last_resort)
        fresh.last_applied_healthy = bool(fresh.last_applied_healthy)
        self._s = fresh
        if "skip_spikes" in state:
            self._skip_spikes = bool(state["skip_spikes"])


def abort_advice(
    history: Sequence[str], *, lr: float | None = None, culprits: Sequence[str] = ()
) -> str:
    """The text of the abort error: what happened, then what to try, most effective first.

    Args:
        history: the last escalation messages (``EscalationPolicy.history()``).
        lr: the learning rate of the first parameter group, echoed in the advice.
        culprits: names of the tensors with the largest gradients at the end.

    Returns:
        A multi-line message for :class:`~gradguard.errors.TrainingDivergedError`.

    References:
        Pascanu, Mikolov, Bengio (2013), On the difficulty of training recurrent neural networks
        (clipping, the spectral-radius condition); Saxe, McClelland, Ganguli (2014), Exact
        solutions to the nonlinear dynamics of learning in deep linear networks (orthogonal init);
        Miyato et al. (2018), Spectral normalization for generative adversarial networks.
    """
    lines = ["gradguard stopped the run: it kept failing after every rescue it is allowed."]
    lines += [f"  - {h}" for h in history[-4:]]
    where = f" (largest gradients in {', '.join(culprits[:3])})" if culprits else ""
    lr_text = f"{lr:.3g}" if lr is not None else "the learning rate"
    lines += [
        f"What to try{where}:",
        f"  1. lower the learning rate: {lr_text} -> ten times smaller, with a warm-up;",
        "  2. clip gradients tighter: Guard(clip=0.5) or an adaptive clipper;",
        "  3. initialise recurrent and deep weights orthogonally (nn.init.orthogonal_) so their "
        "spectral radius starts near 1 (gradguard.remedies.init_for_stability);",
        "  4. bound the recurrent weights with spectral norm (torch.nn.utils.parametrizations."
        "spectral_norm);",
        "  5. for RNNs, truncate backpropagation through time to shorter segments (detach the "
        "hidden state every k steps).",
    ]
    return "\n".join(lines)
