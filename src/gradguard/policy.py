"""The escalation ladder: from what one step looked like to what the guard does about it, and why.

Pure Python on host floats (no torch). The guard hands :meth:`EscalationPolicy.decide` the
:class:`~gradguard.records.Observation` of the step (the result of its one host transfer) and the
alerts the detectors raised; every rule that reads raw losses and norms is a detector (see
:mod:`gradguard.detect`). The policy reads those alerts and its own budgets into a frozen
:class:`Situation`, and the first rung of :data:`LADDER` whose condition holds decides: an
:class:`~gradguard.records.Action` (kind, reason, one sentence) plus what the guard must do,
including the clip bound for this step.

The rungs, climbed only while trouble keeps coming, each guarded by a budget and a cool-down:

1. **clip**: finite steps are applied. With the automatic bound (``clip="auto"``) a healthy run
   is never clipped; a warning opens an *incident* (its first step is remembered so that a
   rollback returns to a state from before it), and while it is open the gradients are clipped
   to the run's own healthy scale (the median of recent healthy norms; the first norm, at most
   ``fallback_bound``, before there is any). After skipped faults alone the bound is
   ``isolated_clip_factor`` times that median: ordinary steps go through untouched. Once the run
   needed an escalation, the bound stays on for good and follows the norms down, never up.
2. **skip**: a non-finite gradient or loss, a critical loss spike or jump (and, without
   clipping, a critical gradient spike) skips the step: weights, optimizer state and schedule
   stay untouched. A finite loss spike between healthy steps is the data's and spends no budget.
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
import enum
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
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

__all__ = [
    "LADDER",
    "ClipMode",
    "Decision",
    "EscalationPolicy",
    "Move",
    "PolicyConfig",
    "Rung",
    "Situation",
    "abort_advice",
]

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
        baseline: how many recent healthy norms form the baseline of the automatic bound.
        min_history: healthy norms needed before their median replaces ``fallback_bound``.
        drift_ratio: a growth trend of the gradient norm whose loss level has grown this many
            times since the trend began rolls back to before it: the weights have drifted, and
            the slow drift has already poisoned the recent healthy baselines.
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
    drift_ratio: float = 10.0
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
        if not self.drift_ratio > 1.0:
            raise ConfigError(f"drift_ratio must be a number > 1, got {self.drift_ratio!r}.")
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
        reset_baselines: the loss level changed for good (the ``new loss level`` rung): the
            detectors' baselines must start over, as the policy's did.
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
    AlertKind.LOSS_JUMP: Reason.LOSS_SPIKE,
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
"""Alerts that open or extend an incident; the others (stuck, oscillation, a high loss, a
culprit) are read by their own rungs only."""

_UNSTABLE_KINDS = (AlertKind.GROWTH_TREND, AlertKind.LOSS_SPIKE, AlertKind.EARLY_EXPLOSION)
"""Alerts that say the step size is past the stability limit: the learning rate backs off."""

_INFO_READ = (AlertKind.LOSS_HIGH, AlertKind.OSCILLATION)
"""Information alerts the rungs read; other info alerts are for people only."""

_LEVEL = 5
"""Losses whose median is the loss level the drift rule compares with its onset's."""

_HISTORY = 512
"""Losses kept with their steps, to read the loss level at a growth trend's onset."""

_ONSET_WINDOW = 8
"""Steps either side of a trend's onset whose losses give the level it began from."""


class Move(enum.Enum):
    """What a rung does; :meth:`EscalationPolicy.decide` carries it out."""

    SKIP_FREE = "skip, spending no budget"
    SKIP = "skip"
    APPLY = "apply"
    BACKOFF = "back off"
    ROLLBACK = "roll back"
    RESTART = "roll back and relearn the baselines"
    ACCEPT = "accept the new loss level"


@dataclasses.dataclass(frozen=True)
class Situation:
    """Everything the rungs read at one step, frozen: the step's evidence and the budgets left.

    Attributes:
        obs: the observation of the step.
        fault: why the step must not be applied (a critical alert, a non-finite value), if so.
        warn: the first warning of the step, as a reason, if any.
        unstable: a warning says the step size is past the stability limit.
        alerts: the step's alerts by kind (the first of each).
        culprits: the tensor the alerts blame, if any.
        overflow: the GradScaler's own overflow, within its budget.
        protected: the step lies in an incident or the protection window after an escalation.
        bound: the clip bound of the step; ``clipped``: the norm exceeds it.
        clipped_streak: clipped, applied steps in a row under protection, this one included.
        consecutive: faulty steps in a row, this one included; ``fault_limit``: the rollback
            threshold for them.
        over_budget: more faults in the window than ``skip_budget``, and no cool-down running.
        may_back_off: a backoff on instability is allowed now (cool-down over, budget left).
        backoffs: backoffs spent in this incident; ``max_backoffs``: the most it may spend.
        faults: the faults counted in the window, in words.
        new_level: right after a rollback, the restored weights failed as high as the abandoned
            ones did, on ``consecutive_limit`` batches in a row (see ``_fails_alike``).
        drift: for a growth trend, the loss level now and its ratio to the level at its onset.
        can_rollback: a snapshot exists to roll back to.
    """

    obs: Observation
    fault: Reason | None
    warn: Reason | None
    unstable: bool
    alerts: Mapping[AlertKind, Alert]
    culprits: tuple[str, ...]
    overflow: bool
    protected: bool
    bound: float | None
    clipped: bool
    clipped_streak: int
    consecutive: int
    fault_limit: int
    over_budget: bool
    may_back_off: bool
    backoffs: int
    max_backoffs: int
    faults: str
    new_level: bool
    drift: tuple[int, float, float] | None
    can_rollback: bool

    @property
    def step(self) -> int:
        """The optimizer step decided on."""
        return self.obs.step

    def alert(self, kind: AlertKind) -> Alert | None:
        """The step's first alert of ``kind`` that the ladder reads (see ``_INFO_READ``)."""
        return self.alerts.get(kind)

    @property
    def stuck(self) -> bool:
        """The loss level stayed far above healthy through an incident the remedies did not end."""
        return self.fault is None and AlertKind.LOSS_STUCK in self.alerts and self.protected

    @property
    def oscillating(self) -> bool:
        """The losses zig-zag (an ``oscillation`` alert) over steps that were all clipped."""
        zigzag = self.alerts.get(AlertKind.OSCILLATION)
        if zigzag is None or zigzag.since is None or self.unstable:
            return False
        return self.clipped_streak >= self.step - zigzag.since + 1


@dataclasses.dataclass(frozen=True)
class Rung:
    """One rung of the ladder: when it holds, what it does, why (``why``: the second clause)."""

    name: str
    when: Callable[[Situation], bool]
    move: Move
    reason: Reason | None = None  # None: the step's fault or warning
    why: str = ""


def _fault(kind: Reason | None = None) -> Callable[[Situation], bool]:
    return (lambda s: s.fault is not None) if kind is None else (lambda s: s.fault is kind)


LADDER: tuple[Rung, ...] = (
    Rung("scaler overflow", lambda s: s.overflow, Move.SKIP_FREE, Reason.SCALER_OVERFLOW),
    Rung(
        "stuck loss",
        lambda s: s.stuck,
        Move.ROLLBACK,
        Reason.DIVERGENCE,
        "clipping and backoffs kept the run finite but not on track",
    ),
    Rung("new loss level", lambda s: s.new_level, Move.ACCEPT, Reason.REGIME_CHANGE),
    Rung(
        "early explosion",
        lambda s: s.fault is None and s.alert(AlertKind.EARLY_EXPLOSION) is not None,
        Move.RESTART,
        Reason.EARLY_EXPLOSION,
        "the run is exploding from its first steps",
    ),
    Rung(
        "drift since a growth began",
        lambda s: s.fault is None and s.drift is not None,
        Move.ROLLBACK,
        Reason.GROWTH_TREND,
        "the weights have drifted since then",
    ),
    Rung(
        "unstable step",
        lambda s: s.fault is None and (s.unstable or s.oscillating) and s.may_back_off,
        Move.BACKOFF,
    ),
    Rung("finite step", lambda s: s.fault is None, Move.APPLY),
    Rung(
        "corrupt weights",
        _fault(Reason.NONFINITE_PARAM),
        Move.ROLLBACK,
        Reason.NONFINITE_PARAM,
        "a non-finite weight cannot be trained back: only a snapshot restores it",
    ),
    Rung(
        "faults in a row",
        lambda s: s.consecutive >= s.fault_limit,
        Move.ROLLBACK,
        Reason.REPEATED_FAULTS,
        "{consecutive} faulty steps in a row show the weights themselves are bad",
    ),
    Rung(
        "divergence",
        _fault(Reason.DIVERGENCE),
        Move.ROLLBACK,
        Reason.DIVERGENCE,
        "the loss has diverged from its healthy level",
    ),
    Rung(
        "faults after backoffs",
        lambda s: s.over_budget and s.backoffs >= s.max_backoffs,
        Move.ROLLBACK,
        Reason.REPEATED_FAULTS,
        "{faults} after {backoffs} backoffs in this incident",
    ),
    Rung("fault budget", lambda s: s.over_budget, Move.BACKOFF),
    Rung("fault", _fault(), Move.SKIP),
)
"""The ladder, first matching rung wins. Budgets and cool-downs are in the conditions (and, for
rollbacks, in :meth:`EscalationPolicy._rollback`: the last resort, then giving up)."""


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
    clipped_streak: int = 0
    norms: list[float] = dataclasses.field(default_factory=list)
    first_norm: float | None = None
    last_step: int | None = None
    loss_history: list[list[float]] = dataclasses.field(default_factory=list)  # [step, loss]
    last_restore: list[float] | None = None  # [step, scale] of the last raise of the rate
    ceiling: float = 1.0  # the rate is never raised back above this (a level that failed)
    # [step, loss, lr scale, persistent] before the last rollback, and the steps since that
    # failed alike
    probe: list[float] | None = None
    persistent: bool = False  # an escalation happened: the automatic bound stays on for good
    was_persistent: bool = False  # ``persistent`` when the open incident began
    last_resort: bool = False  # the rollback budget was spent once: tight clip, rate capped
    last_applied_healthy: bool = False  # the last applied step was a healthy one
    history: list[str] = dataclasses.field(default_factory=list)


_ADDED_IN_0_2 = {
    "last_applied_healthy": False,
    "persistent": False,
    "was_persistent": False,
    "last_resort": False,
    "clipped_streak": 0,
}
"""Defaults of fields a state saved by an older version lacks (fields it has that this version
dropped are ignored)."""


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

        The step's evidence and the budgets left become a frozen :class:`Situation`; the first
        rung of :data:`LADDER` that holds for it decides.

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
        situation = self._situation(observation, alerts, can_rollback, scaler_overflow)
        rung = next(r for r in LADDER if r.when(situation))
        return self._carry_out(rung, situation, clipper)

    def _situation(
        self, obs: Observation, alerts: Sequence[Alert], can_rollback: bool, overflow: bool
    ) -> Situation:
        """Update the running counts with this step and freeze what the rungs read."""
        s, cfg, t = self._s, self.config, obs.step
        s.last_step = t
        if obs.loss is not None and math.isfinite(obs.loss):
            s.loss_history.append([float(t), obs.loss])  # in place: 512 entries
            if len(s.loss_history) > _HISTORY:
                del s.loss_history[0]
        if s.first_norm is None and obs.finite and obs.total_norm > 0.0:
            s.first_norm = obs.total_norm
        s.overflow_streak = s.overflow_streak + 1 if overflow else 0
        overflow = overflow and s.overflow_streak <= cfg.max_scaler_overflows
        read: dict[AlertKind, Alert] = {}
        for alert in alerts:
            if alert.severity is not Severity.INFO or alert.kind in _INFO_READ:
                read.setdefault(alert.kind, alert)
        fault, warn, unstable, culprits = self._classify(obs, alerts)
        if overflow:
            fault = warn = None
        elif fault is not None or warn is not None:
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
        trend = read.get(AlertKind.GROWTH_TREND)
        since = trend.since if trend is not None else None
        if since is not None and s.incident_start is not None and since < s.incident_start:
            s.incident_start = since  # the trouble began where the growth did
        new_level = False
        if s.probe is not None and t - s.probe[0] > cfg.consecutive_limit:
            s.probe = None  # the restored weights got through: the rollback was right
        elif s.probe is not None:
            alike = self._fails_alike(obs, read, fault, s.probe[1])
            s.probe[4] = s.probe[4] + 1.0 if alike else 0.0
            new_level = alike and s.probe[4] >= cfg.consecutive_limit
        fault_limit = cfg.consecutive_limit
        if fault is not None:
            s.consecutive += 1
            s.healthy_streak = 0
            # A finite loss spike in an incident of skipped faults alone is the data's: the
            # weights never saw it and the steps between were healthy, so it spends no budget (a
            # stream with a poisoned batch every few steps is skipped, not slowed down).
            # Non-finite gradients, which the model's own numerics can produce, always count.
            data = fault is Reason.LOSS_SPIKE and s.isolated and s.consecutive == 1
            s.faults = [f for f in s.faults if f > t - cfg.window] + ([] if data else [t])
            # A healthy update cannot have made the weights a hundred times worse: after one,
            # finite loss spikes in a row are first taken for bad batches (a poisoned pair), and
            # twice the evidence is asked before the weights are blamed.
            if fault is Reason.LOSS_SPIKE and s.last_applied_healthy:
                fault_limit *= 2
        elif not overflow:
            s.consecutive = 0
            s.last_applied_healthy = False  # until the step proves healthy
        s.rollbacks = [r for r in s.rollbacks if r > t - cfg.rollback_window]
        protected = self.protected(t)
        bound = self._bound(protected)
        clipped = bound is not None and obs.total_norm > bound
        if fault is None and not overflow:
            loss_ok = obs.loss is not None and math.isfinite(obs.loss)
            s.clipped_streak = s.clipped_streak + 1 if protected and clipped and loss_ok else 0
        return Situation(
            obs=obs,
            fault=fault,
            warn=warn,
            unstable=unstable,
            alerts=read,
            culprits=culprits,
            overflow=overflow,
            protected=protected,
            bound=bound,
            clipped=clipped,
            clipped_streak=s.clipped_streak,
            consecutive=s.consecutive,
            fault_limit=fault_limit,
            over_budget=len(s.faults) > cfg.skip_budget and t >= s.cooldown_until,
            may_back_off=cfg.backoff_on_trend
            and t >= s.cooldown_until
            and s.backoffs_in_incident < cfg.max_backoffs,
            backoffs=s.backoffs_in_incident,
            max_backoffs=cfg.max_backoffs,
            faults=f"{len(s.faults)} faulty steps within {cfg.window} steps",
            new_level=new_level,
            drift=self._drift(since) if fault is None and since is not None else None,
            can_rollback=can_rollback,
        )

    @staticmethod
    def _fails_alike(
        obs: Observation, alerts: Mapping[AlertKind, Alert], fault: Reason | None, before: float
    ) -> bool:
        """Whether restored weights fail on this batch as high as the abandoned ones did.

        Restored weights were healthy; a finite loss far above their healthy level (a
        ``loss_high`` alert), at least a tenth of the loss ``before`` the rollback, which was as
        far above, says the batches changed (a new task, dataset or curriculum stage), once the
        same evidence that triggered the rollback is in: as many batches in a row. Non-finite
        values, and a loss beyond the user's divergence threshold, are never a new normal.
        """
        high = alerts.get(AlertKind.LOSS_HIGH)
        if high is None or high.value is None or high.threshold is None:
            return False
        if fault in (Reason.DIVERGENCE, Reason.NONFINITE_GRAD, Reason.NONFINITE_LOSS):
            return False
        if not obs.finite or not math.isfinite(before):
            return False
        return before >= high.threshold and high.value >= 0.1 * before

    def _classify(
        self, obs: Observation, alerts: Sequence[Alert]
    ) -> tuple[Reason | None, Reason | None, bool, tuple[str, ...]]:
        fault: Reason | None = None
        warn: Reason | None = None
        unstable = False
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
            unstable = unstable or alert.kind in _UNSTABLE_KINDS
        return fault, warn, unstable, culprits

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

    def _drift(self, since: int) -> tuple[int, float, float] | None:
        """For a trend begun at ``since``: the loss level now and its ratio to the one then.

        A growth trend that began long before the detectors could see it (a slow drift) has
        already poisoned the recent healthy baselines; the loss around its onset has not.
        ``None`` unless they are ``drift_ratio`` apart.
        """
        history = self._s.loss_history
        around = [loss for step, loss in history if abs(step - since) <= _ONSET_WINDOW]
        recent = history[-_LEVEL:]
        if not around or len(recent) < _LEVEL:
            return None
        now, then = statistics.median(v for _, v in recent), statistics.median(around)
        if then <= 0.0 or now < self.config.drift_ratio * then:
            return None
        return since, now, now / then

    # ---------------------------------------------------------------- the moves
    def _carry_out(self, rung: Rung, sit: Situation, clipper: str) -> Decision:
        """Carry out ``rung`` 's move: update the budgets and word the action."""
        move, t = rung.move, sit.step
        if move is Move.APPLY:
            return self._apply(sit, clipper)
        if move is Move.SKIP_FREE:
            obs = sit.obs
            message = (
                f"The GradScaler's scale overflowed (gradient norm {obs.total_norm!r} under a "
                f"finite loss, {self._s.overflow_streak} in a row): step skipped and the scale "
                "lowered by the scaler, not counted as a fault."
            )
            action = Action(ActionKind.SKIP, Reason.SCALER_OVERFLOW, message)
            return Decision(action, apply=False, lr_scale=self._s.lr_scale)
        if move is Move.ACCEPT:
            return self._accept_new_level(sit)
        what = self._describe(sit)
        if move is Move.BACKOFF:
            reason = rung.reason or sit.fault or self._unstable_reason(sit)
            if sit.fault is not None:
                what = f"{what}, and {sit.faults}"
            return self._backoff(t, reason, what, sit)
        if move in (Move.ROLLBACK, Move.RESTART):
            if move is Move.RESTART:
                # What the policy learned so far is the explosion itself, and the weights it
                # reached are not worth keeping: back to before it, baselines relearned.
                early = sit.alert(AlertKind.EARLY_EXPLOSION)
                start = early.since if early is not None and early.since is not None else t
                s = self._s
                s.incident_start = min(s.incident_start or start, start)
                s.norms = []
            why = rung.why.format(
                consecutive=sit.consecutive, faults=sit.faults, backoffs=sit.backoffs
            )
            return self._rollback(t, rung.reason or sit.fault, what, why, sit.can_rollback)
        return self._skip(sit, what)

    def _unstable_reason(self, sit: Situation) -> Reason:
        if sit.oscillating:
            return Reason.OSCILLATION
        return sit.warn or Reason.GROWTH_TREND

    def _describe(self, sit: Situation) -> str:
        """The first clause of the action's sentence: what was seen."""
        obs, culprits = sit.obs, sit.culprits
        where = f" (largest in {culprits[0]})" if culprits else ""
        stuck = sit.alert(AlertKind.LOSS_STUCK)
        if sit.stuck and stuck is not None:
            return stuck.message.split(":")[0]
        early = sit.alert(AlertKind.EARLY_EXPLOSION)
        if sit.fault is None and early is not None:
            return early.message.split(":")[0]
        if sit.fault is None and sit.drift is not None:
            since, now, ratio = sit.drift
            return (
                f"Loss level {now:.4g}, {ratio:.3g}x what it was at step {since} when the "
                "gradient norm began to grow"
            )
        if sit.fault is None:
            if sit.oscillating:
                zigzag = sit.alert(AlertKind.OSCILLATION)
                return zigzag.message.split(":")[0] if zigzag is not None else "Loss zig-zagging"
            if sit.warn is Reason.GROWTH_TREND:
                return f"Growth trend of the gradient norm ({obs.total_norm:.3g})"
            loss = "not given" if obs.loss is None else f"{obs.loss:.4g}"
            kind = (sit.warn or Reason.LOSS_SPIKE).value.replace("_", " ")
            return f"Unstable step ({kind}, loss {loss}, gradient norm {obs.total_norm:.3g})"
        reason = sit.fault
        if reason is Reason.NONFINITE_LOSS:
            return f"Non-finite loss {obs.loss!r}"
        if reason is Reason.NONFINITE_GRAD:
            return f"Non-finite gradient norm {obs.total_norm!r}{where}"
        if reason is Reason.LOSS_SPIKE:
            spike = sit.alert(AlertKind.LOSS_SPIKE) or sit.alert(AlertKind.LOSS_JUMP)
            detail = f" ({spike.message.split(':')[0]})" if spike is not None else ""
            return f"Loss spike to {obs.loss:.4g}{detail}"
        if reason is Reason.DIVERGENCE:
            return f"Loss {obs.loss!r} beyond its divergence threshold"
        if reason is Reason.NONFINITE_PARAM:
            return f"Non-finite parameter norm {obs.param_norm!r}"
        kind = reason.value.replace("_", " ")
        return f"Critical gradient {kind} at norm {obs.total_norm:.3g}{where}"

    def _skip(self, sit: Situation, what: str) -> Decision:
        s, cfg = self._s, self.config
        left = max(cfg.skip_budget - len(s.faults), 0)
        note = (
            f"cooling down until step {s.cooldown_until}"
            if sit.step < s.cooldown_until
            else f"{left} more within {cfg.window} steps before the learning rate is backed off"
        )
        message = f"{what}: step skipped, weights and optimizer state untouched ({note})."
        reason = sit.fault or Reason.LOSS_SPIKE
        return Decision(Action(ActionKind.SKIP, reason, message), apply=False, lr_scale=s.lr_scale)

    def _apply(self, sit: Situation, clipper: str) -> Decision:
        """Apply the step (clipped to the bound); count it healthy; raise the rate when due."""
        s, cfg, obs, t = self._s, self.config, sit.obs, sit.step
        bound, protected = sit.bound, sit.protected
        own = 1.0 if bound is None else min(1.0, bound / (obs.total_norm + EPS))
        # A clipper object ("external") scaled the gradients before this decision.
        external = 1.0 if obs.clip_coef is None else obs.clip_coef
        clipped_before = external < 1.0 - CLIP_TOLERANCE
        coef = external * own
        kind = ActionKind.CLIP if sit.clipped or clipped_before else ActionKind.PROCEED
        done = _done(clipper, external, own, bound, sit.clipped)

        def decision(action: Action) -> Decision:
            return Decision(action, True, s.lr_scale, bound, coef)

        if sit.warn is not None:
            where = f" in {sit.culprits[0]}" if sit.culprits else ""
            message = (
                f"Warning ({sit.warn.value.replace('_', ' ')}{where}, gradient norm "
                f"{obs.total_norm:.3g}) noted: {done}; the incident began at step "
                f"{s.incident_start}."
            )
            return decision(Action(kind, sit.warn, message))
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
                above = " is above the bound" if sit.clipped else ""  # a clipper's rule decided
                message = f"Gradient norm {obs.total_norm:.3g}{above}: {done}."
            return decision(Action(kind, Reason.NORM_ABOVE_BOUND, message))
        message = f"Gradient norm {obs.total_norm:.3g} is within bounds: step applied."
        return decision(Action(kind, Reason.HEALTHY, message))

    def _close_incident(self) -> None:
        s = self._s
        s.incident_start = None
        s.backoffs_in_incident = 0
        s.clipped_streak = 0

    def _accept_new_level(self, sit: Situation) -> Decision:
        """Take a confirmed change of the data's loss level as the new normal."""
        s, t, obs = self._s, sit.step, sit.obs
        step, loss, scale, persistent, _ = s.probe or [float(t), math.nan, s.lr_scale, 0.0, 0.0]
        s.persistent = bool(persistent)  # the incident was the data's change, not instability
        if s.rollbacks and s.rollbacks[-1] == int(step):
            s.rollbacks.pop()  # the rollback was a diagnosis, not a rescue: refunded
        s.lr_scale = scale
        s.probe = None
        s.norms, s.loss_history = [], []
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
        s.clipped_streak = 0
        s.persistent = True

    def _backoff(self, t: int, reason: Reason, what: str, sit: Situation) -> Decision:
        s, cfg = self._s, self.config
        apply = sit.fault is None
        bound = sit.bound if apply else None
        coef = 1.0
        if apply:
            own = 1.0 if bound is None else min(1.0, bound / (sit.obs.total_norm + EPS))
            coef = (1.0 if sit.obs.clip_coef is None else sit.obs.clip_coef) * own
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
        return Decision(action, apply, s.lr_scale, bound, coef)

    def _rollback(
        self, t: int, reason: Reason | None, what: str, why: str, can_rollback: bool
    ) -> Decision:
        s, cfg = self._s, self.config
        reason = reason or Reason.REPEATED_FAULTS
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
        s.probe = [float(t), loss, old, float(s.was_persistent), 0.0] if can_rollback else None
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

    # ---------------------------------------------------------------- state
    def baselines(self) -> dict[str, list[float]]:
        """The healthy norms the automatic bound follows (a snapshot's part).

        A rollback restores them with :meth:`load_baselines`, so the restored weights are judged
        against what was healthy for them, not against the trajectory that was abandoned; the
        budgets, the incident and the learning-rate scale stay live.
        """
        return {"norms": list(self._s.norms)}

    def load_baselines(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`baselines`, even empty ones (a snapshot from before any history).

        With none, they are relearned (the early-explosion detector watches that warm-up).
        """
        self._s.norms = [float(v) for v in state["norms"]]

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
        state = {**_ADDED_IN_0_2, **state}  # state saved before these fields existed
        missing = [f.name for f in dataclasses.fields(_State) if f.name not in state]
        if missing:
            raise ConfigError(
                f"policy state is missing {missing!r}; pass what EscalationPolicy.state_dict() "
                "returned."
            )
        fields = dataclasses.fields(_State)
        self._s = _State(**{f.name: _convert(str(f.type), state[f.name]) for f in fields})
        if self._s.probe is not None and len(self._s.probe) == 4:  # saved by 0.2
            self._s.probe.append(0.0)
        if "skip_spikes" in state:
            self._skip_spikes = bool(state["skip_spikes"])


_SCALARS: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": bool, "str": str}


def _convert(annotation: str, value: Any) -> Any:
    """``value`` as the plain type of a :class:`_State` field annotated ``annotation``."""
    base = annotation.removesuffix(" | None")
    if value is None and base != annotation:
        return None
    if base.startswith("list[") and base.endswith("]"):
        return [_convert(base[5:-1], v) for v in value]
    return _SCALARS[base](value)


def _done(clipper: str, external: float, own: float, bound: float | None, clipped: bool) -> str:
    """The clause saying how the step was applied: who scaled the gradients, by how much."""
    scaled = []
    if external < 1.0 - CLIP_TOLERANCE:
        scaled.append(f"{clipper} scaled the gradients by {external:.3g}")
    if clipped and bound is not None:
        scaled.append(f"gradients scaled by {own:.3g} (bound {bound:.3g})")
    return f"{', '.join(scaled)} and the step applied" if scaled else "step applied"


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
