"""The escalation ladder: from what one step looked like to what the guard does about it, and why.

Pure Python on host floats (no torch). The guard hands :meth:`EscalationPolicy.decide` the
:class:`~gradguard.records.Observation` of the step, the alerts the detectors raised and the clip
coefficient it applied; the policy answers with a :class:`Decision`: an
:class:`~gradguard.records.Action` (kind, reason, one sentence) plus what the guard must do.

The ladder, climbed only while faults keep coming and each rung guarded by a budget and a
cool-down:

1. **clip**: finite steps are applied, clipped when the norm is above the bound. Warnings open an
   *incident* (its first step is remembered, so that a rollback returns to a state from before it).
2. **skip**: a non-finite gradient or loss, a critical loss spike (and, without clipping, a
   critical gradient spike) skips the step: weights, optimizer state and schedule stay untouched.
3. **back off**: more than ``skip_budget`` faulty steps within ``window`` steps halve the learning
   rate (all parameter groups); ``restore_after`` healthy steps raise it back one rung at a time.
4. **roll back**: ``consecutive_limit`` faulty steps in a row (the weights themselves are bad), a
   fault after ``max_backoffs`` backoffs in one incident, or a divergence, restore the newest
   snapshot taken before the incident began, reset the optimizer moments and halve the rate.
5. **abort**: more than ``max_rollbacks`` rollbacks within ``rollback_window`` steps; the guard
   raises :class:`~gradguard.errors.TrainingDivergedError` with :func:`abort_advice`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from gradguard.errors import ConfigError
from gradguard.records import Action, ActionKind, Alert, AlertKind, Observation, Reason, Severity

__all__ = ["Decision", "EscalationPolicy", "PolicyConfig", "abort_advice"]


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Budgets, cool-downs and switches of the escalation ladder.

    The defaults suit a run that takes thousands of optimizer steps: a few isolated faults are
    skipped silently, a burst of them slows the run down, a stuck run is rolled back, and a run
    that keeps failing after three rollbacks stops with advice instead of burning compute.

    Attributes:
        skip_nonfinite: skip steps whose gradient or loss is NaN/Inf. Turning this off lets
            non-finite values reach the weights; it exists for experiments only.
        skip_spikes: also skip steps with a critical *finite* gradient spike or threshold alert.
            ``None`` (automatic) means "only when the guard does not clip": with clipping, a
            finite spike is already tamed by the clip and skipping would waste data.
        skip_budget: faulty steps tolerated within ``window`` steps before backing off.
        window: length, in steps, of the window in which faults are counted.
        backoff_factor: learning-rate multiplier of one backoff (0 < factor < 1).
        max_backoffs: backoffs within one incident before the next fault rolls back instead.
        min_lr_scale: the learning-rate scale never goes below this.
        restore_after: healthy steps (no alert) before the scale is raised by one rung
            (divided by ``backoff_factor``, capped at 1); ``None`` never restores it.
        consecutive_limit: faulty steps in a row that prove the weights themselves are bad
            (skipping cannot help when the weights do not change), triggering a rollback.
        max_rollbacks: rollbacks allowed within ``rollback_window`` steps; one more aborts.
        rollback_window: window, in steps, in which rollbacks are counted.
        cooldown: steps after a backoff or rollback during which faults are skipped without
            climbing the ladder, so the remedy has time to show its effect.
        quiet: steps without any warning that close an incident; the guard also takes snapshots
            only after this many quiet steps, so no snapshot holds a run already in trouble.
        reset_moments: reset the optimizer's moments (Adam's m and v, momentum buffers) when
            rolling back, so the momentum of the failed trajectory does not push it down again.
        max_scaler_overflows: with a GradScaler, a non-finite gradient under a finite loss is
            the scaler's overflow, which it fixes itself by lowering its scale: such steps are
            skipped without climbing the ladder, up to this many in a row.
    """

    skip_nonfinite: bool = True
    skip_spikes: bool | None = None
    skip_budget: int = 3
    window: int = 100
    backoff_factor: float = 0.5
    max_backoffs: int = 2
    min_lr_scale: float = 2.0**-10
    restore_after: int | None = 100
    consecutive_limit: int = 3
    max_rollbacks: int = 3
    rollback_window: int = 1000
    cooldown: int = 10
    quiet: int = 20
    reset_moments: bool = True
    max_scaler_overflows: int = 20

    def __post_init__(self) -> None:
        for name in (
            "skip_budget",
            "max_backoffs",
            "max_rollbacks",
            "cooldown",
            "quiet",
            "max_scaler_overflows",
        ):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("window", "consecutive_limit", "rollback_window"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.restore_after is not None:
            _check_int("restore_after", self.restore_after, minimum=1)
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


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{name} must be an integer >= {minimum}, got {value!r}. See PolicyConfig for what "
            "each budget means; the defaults suit most runs."
        )


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the guard must do at one step, with the action it records.

    Attributes:
        action: kind, reason and the one-sentence explanation.
        apply: whether the optimizer step is applied to the weights.
        lr_scale: multiplier of every parameter group's learning rate from now on.
        rollback_before: for a rollback, restore the newest snapshot taken before this step.
        reset_moments: whether to reset the optimizer's moments (after restoring, if rolling back).
    """

    action: Action
    apply: bool
    lr_scale: float = 1.0
    rollback_before: int | None = None
    reset_moments: bool = False


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
}


@dataclasses.dataclass
class _State:
    incident_start: int | None = None
    last_alert: int | None = None
    faults: list[int] = dataclasses.field(default_factory=list)
    consecutive: int = 0
    backoffs_in_incident: int = 0
    rollbacks: list[int] = dataclasses.field(default_factory=list)
    cooldown_until: int = -1
    lr_scale: float = 1.0
    healthy_streak: int = 0
    overflow_streak: int = 0
    last_step: int | None = None
    history: list[str] = dataclasses.field(default_factory=list)


class EscalationPolicy:
    """Turn alerts into actions along the clip → skip → backoff → rollback → abort ladder.

    Stateful but pure: all its state is host numbers behind :meth:`state_dict`, so a resumed run
    continues mid-incident with the same budgets spent.

    Args:
        config: budgets and switches; ``None`` uses :class:`PolicyConfig` defaults.
        clipping: whether the guard clips gradients; decides ``skip_spikes=None``.
    """

    def __init__(self, config: PolicyConfig | None = None, *, clipping: bool = True) -> None:
        self.config = config if config is not None else PolicyConfig()
        if not isinstance(self.config, PolicyConfig):
            raise ConfigError(
                f"config must be a PolicyConfig, got {type(self.config).__name__} "
                f"{self.config!r:.80}. Build one with gradguard.PolicyConfig(skip_budget=...)."
            )
        skip_spikes = self.config.skip_spikes
        self._skip_spikes = (not clipping) if skip_spikes is None else skip_spikes
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

    def history(self) -> list[str]:
        """The messages of the last escalations (skips excluded), oldest first; for the abort."""
        return list(self._s.history)

    # ---------------------------------------------------------------- the decision
    def decide(
        self,
        observation: Observation,
        alerts: Sequence[Alert] = (),
        *,
        clip_coef: float = 1.0,
        can_rollback: bool = True,
        scaler_overflow: bool = False,
    ) -> Decision:
        """Choose what to do with the optimizer step described by ``observation``.

        Args:
            observation: the host values of this step (norm, finiteness, loss).
            alerts: the alerts the detectors raised at this step.
            clip_coef: the factor the guard already multiplied the gradients by (1.0: no clip).
            can_rollback: whether a snapshot exists to roll back to; when not, the rollback rung
                resets the optimizer state and backs off instead.
            scaler_overflow: the guard's GradScaler found non-finite gradients under a finite
                loss (its own overflow, see ``max_scaler_overflows``).

        Returns:
            The :class:`Decision`; every field is a host value.
        """
        s, cfg, t = self._s, self.config, observation.step
        s.last_step = t
        s.overflow_streak = s.overflow_streak + 1 if scaler_overflow else 0
        if scaler_overflow and s.overflow_streak <= cfg.max_scaler_overflows:
            message = (
                f"The GradScaler's scale overflowed (gradient norm {observation.total_norm!r} "
                f"under a finite loss, {s.overflow_streak} in a row): step skipped and the scale "
                "lowered by the scaler, not counted as a fault."
            )
            action = Action(ActionKind.SKIP, Reason.SCALER_OVERFLOW, message)
            return Decision(action, apply=False, lr_scale=s.lr_scale)
        fault, warn, culprits = self._classify(observation, alerts)
        if fault is not None or warn is not None:
            if s.incident_start is None:
                s.incident_start = t
            s.last_alert = t
        elif (
            s.incident_start is not None
            and s.last_alert is not None
            and t - s.last_alert >= cfg.quiet
        ):
            s.incident_start = None
            s.backoffs_in_incident = 0

        if fault is None:
            return self._healthy(observation, warn, culprits, clip_coef)

        s.consecutive += 1
        s.healthy_streak = 0
        s.faults = [f for f in s.faults if f > t - cfg.window] + [t]
        s.rollbacks = [r for r in s.rollbacks if r > t - cfg.rollback_window]
        what = _describe_fault(fault, observation, culprits)
        if s.consecutive >= cfg.consecutive_limit:
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
            return self._backoff(t, what, count)
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
    ) -> tuple[Reason | None, Reason | None, tuple[str, ...]]:
        fault: Reason | None = None
        warn: Reason | None = None
        culprits: tuple[str, ...] = tuple(name for name, _ in obs.top[:1])
        if self.config.skip_nonfinite:
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
        return fault, warn, culprits

    def _healthy(
        self, obs: Observation, warn: Reason | None, culprits: tuple[str, ...], clip_coef: float
    ) -> Decision:
        s, cfg = self._s, self.config
        s.consecutive = 0
        clipped = clip_coef < 1.0
        kind = ActionKind.CLIP if clipped else ActionKind.PROCEED
        done = (
            f"gradients scaled by {clip_coef:.3g} and the step applied"
            if clipped
            else "step applied"
        )
        if warn is not None:
            where = f" in {culprits[0]}" if culprits else ""
            message = (
                f"Warning ({warn.value.replace('_', ' ')}{where}, gradient norm "
                f"{obs.total_norm:.3g}) noted: {done}; the incident began at step "
                f"{s.incident_start}."
            )
            return Decision(Action(kind, warn, message), apply=True, lr_scale=s.lr_scale)
        s.healthy_streak += 1
        if (
            s.lr_scale < 1.0
            and cfg.restore_after is not None
            and s.healthy_streak >= cfg.restore_after
            and s.incident_start is None
        ):
            old = s.lr_scale
            s.lr_scale = min(1.0, old / cfg.backoff_factor)
            s.healthy_streak = 0
            message = (
                f"{cfg.restore_after} healthy steps since the last trouble: learning-rate scale "
                f"raised from {old:.3g} to {s.lr_scale:.3g}, {done}."
            )
            self._remember(message)
            return Decision(Action(kind, Reason.RECOVERED, message), True, s.lr_scale)
        if clipped:
            message = f"Gradient norm {obs.total_norm:.3g} is above the bound: {done}."
            return Decision(Action(kind, Reason.NORM_ABOVE_BOUND, message), True, s.lr_scale)
        message = f"Gradient norm {obs.total_norm:.3g} is within bounds: step applied."
        return Decision(Action(kind, Reason.HEALTHY, message), True, s.lr_scale)

    def _backoff(self, t: int, what: str, count: str) -> Decision:
        s, cfg = self._s, self.config
        old = s.lr_scale
        s.lr_scale = max(old * cfg.backoff_factor, cfg.min_lr_scale)
        s.backoffs_in_incident += 1
        s.faults = []
        s.cooldown_until = t + cfg.cooldown
        message = (
            f"{what}, and {count}: step skipped and the learning rate of every parameter group "
            f"scaled from {old:.3g} to {s.lr_scale:.3g} of its schedule (backoff "
            f"{s.backoffs_in_incident} of {cfg.max_backoffs} in this incident)."
        )
        self._remember(message)
        action = Action(ActionKind.BACKOFF, Reason.REPEATED_FAULTS, message)
        return Decision(action, apply=False, lr_scale=s.lr_scale)

    def _rollback(
        self, t: int, reason: Reason, what: str, why: str, can_rollback: bool
    ) -> Decision:
        s, cfg = self._s, self.config
        if len(s.rollbacks) >= cfg.max_rollbacks:
            message = (
                f"{what}, and {why}, after {len(s.rollbacks)} rollbacks within "
                f"{cfg.rollback_window} steps: the rescue budget is spent, aborting the run."
            )
            self._remember(message)
            action = Action(ActionKind.ABORT, Reason.BUDGET_EXHAUSTED, message)
            return Decision(action, apply=False, lr_scale=s.lr_scale)
        old = s.lr_scale
        s.lr_scale = max(old * cfg.backoff_factor, cfg.min_lr_scale)
        s.rollbacks.append(t)
        s.faults = []
        s.consecutive = 0
        s.backoffs_in_incident = 0
        s.healthy_streak = 0
        s.cooldown_until = t + cfg.cooldown
        before = s.incident_start if s.incident_start is not None else t
        if can_rollback:
            moments = ", optimizer moments reset" if cfg.reset_moments else ""
            message = (
                f"{what}, and {why}: rolling back to the newest snapshot from before step "
                f"{before}{moments} and learning-rate scale {old:.3g} -> {s.lr_scale:.3g}."
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
            f"state reset and learning-rate scale {old:.3g} -> {s.lr_scale:.3g}."
        )
        self._remember(message)
        action = Action(ActionKind.RESET_OPTIMIZER_STATE, reason, message)
        return Decision(action, apply=False, lr_scale=s.lr_scale, reset_moments=True)

    def _remember(self, message: str) -> None:
        self._s.history = [*self._s.history[-7:], message]

    # ---------------------------------------------------------------- state
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
        names = [f.name for f in dataclasses.fields(_State)]
        missing = [n for n in names if n not in state]
        if missing:
            raise ConfigError(
                f"policy state is missing {missing!r}; pass what EscalationPolicy.state_dict() "
                "returned."
            )
        fresh = _State(**{n: state[n] for n in names})
        fresh.faults = [int(f) for f in fresh.faults]
        fresh.rollbacks = [int(r) for r in fresh.rollbacks]
        fresh.history = [str(h) for h in fresh.history]
        fresh.lr_scale = float(fresh.lr_scale)
        self._s = fresh
        if "skip_spikes" in state:
            self._skip_spikes = bool(state["skip_spikes"])


def _describe_fault(reason: Reason, obs: Observation, culprits: tuple[str, ...]) -> str:
    where = f" (largest in {culprits[0]})" if culprits else ""
    if reason is Reason.NONFINITE_LOSS:
        return f"Non-finite loss {obs.loss!r}"
    if reason is Reason.NONFINITE_GRAD:
        return f"Non-finite gradient norm {obs.total_norm!r}{where}"
    if reason is Reason.LOSS_SPIKE:
        return f"Critical loss spike to {obs.loss:.4g}" if obs.loss is not None else "Loss spike"
    if reason is Reason.DIVERGENCE:
        return f"Loss {obs.loss!r} beyond its divergence threshold"
    return f"Critical gradient {reason.value.replace('_', ' ')} at norm {obs.total_norm:.3g}{where}"


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
