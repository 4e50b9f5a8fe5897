"""The escalation policy: keeps the counts, freezes the :class:`~gradguard.policy.ladder.Situation`
of each step, and carries out the move of the first rung of the ladder that holds."""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gradguard._ring import keep_last
from gradguard.errors import (
    ConfigError,
    check_mapping,
    check_positive,
)
from gradguard.policy.config import EPS, ClipMode, Decision, PolicyConfig
from gradguard.policy.ladder import (
    INFO_READ,
    LADDER,
    Move,
    Rung,
    Situation,
    classify,
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

__all__ = ["EscalationPolicy"]

SNAPSHOT_LOSSES = 5
"""How many of the last finite losses give, by their median, the loss of a snapshot's weights
(one batch's loss alone may be an outlier either way)."""

NEW_LEVEL_RATIO = 2.0
"""A rollback's probe compares losses only this far apart or more: the loss that led to the
rollback and the one the restored weights gave when current, and the one they give now and then
(closer than twice, one batch's noise could decide)."""


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
    lr_scale: float = 1.0
    incident_scale: float = 1.0  # ``lr_scale`` when the open incident began
    healthy_streak: int = 0
    overflow_streak: int = 0
    clipped_streak: int = 0
    norms: list[float] = dataclasses.field(default_factory=list)
    first_norm: float | None = None
    last_step: int | None = None
    # the last few finite losses: their median is the loss a snapshot's weights gave
    losses: list[float] = dataclasses.field(default_factory=list)
    first_loss: float = math.nan  # the loss of the weights the guard started from
    last_restore: list[float] | None = None  # [step, scale] of the last raise of the rate
    ceiling: float = 1.0  # the rate is never raised back above this (a level that failed)
    # [step, loss] of the last rollback, two slots unused since 0.3 (kept so that a state saved
    # by 0.2 loads), the steps since it that failed alike, and the loss the restored weights
    # gave when they were current (NaN: unknown)
    probe: list[float] | None = None
    loss_moved: bool = False  # a new loss level was accepted since the newest snapshot
    persistent: bool = False  # an escalation, or a warned step clipped: the bound stays on
    last_resort: bool = False  # the rollback budget was spent once: tight clip, rate capped
    last_applied_healthy: bool = False  # the last applied step was a healthy one
    history: list[str] = dataclasses.field(default_factory=list)


_ADDED_IN_0_2 = {
    "last_applied_healthy": False,
    "persistent": False,
    "last_resort": False,
    "clipped_streak": 0,
    "first_loss": math.nan,
    "loss_moved": False,
    "losses": [],
    "incident_scale": 1.0,
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

    @property
    def probing(self) -> bool:
        """Whether the steps right after a rollback are being watched for a new loss level (the
        guard keeps the abandoned state until then, for :attr:`Decision.undo_rollback`)."""
        return self._s.probe is not None

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
        can_undo: bool = False,
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
            can_undo: the caller still holds the training state the last rollback abandoned
                and restores it on :attr:`Decision.undo_rollback`.

        Returns:
            The :class:`Decision`; every field is a host value.
        """
        situation = self._situation(observation, alerts, can_rollback, scaler_overflow, can_undo)
        rung = next(r for r in LADDER if r.when(situation))
        return self._carry_out(rung, situation, clipper)

    def _situation(
        self,
        obs: Observation,
        alerts: Sequence[Alert],
        can_rollback: bool,
        overflow: bool,
        can_undo: bool,
    ) -> Situation:
        """Update the running counts with this step and freeze what the rungs read."""
        s, cfg, t = self._s, self.config, obs.step
        s.last_step = t
        if obs.loss is not None and math.isfinite(obs.loss):
            s.losses = keep_last(s.losses, obs.loss, SNAPSHOT_LOSSES)
            if math.isnan(s.first_loss):
                s.first_loss = obs.loss
        if s.first_norm is None and obs.finite and obs.total_norm > 0.0:
            s.first_norm = obs.total_norm
        s.overflow_streak = s.overflow_streak + 1 if overflow else 0
        overflow = overflow and s.overflow_streak <= cfg.max_scaler_overflows
        read: dict[AlertKind, Alert] = {}
        for alert in alerts:
            if alert.severity is not Severity.INFO or alert.kind in INFO_READ:
                read.setdefault(alert.kind, alert)
        fault, warn, unstable, culprits = classify(
            obs, alerts, skip_nonfinite=cfg.skip_nonfinite, skip_spikes=self._skip_spikes
        )
        if overflow:
            fault = warn = None
        elif fault is not None or warn is not None:
            # An incident of skipped faults only is isolated until a warning comes: the weights
            # never saw a bad step, so the next steps need no clipping.
            s.isolated = (s.incident_start is None or s.isolated) and fault is not None
            if s.incident_start is None:
                self._open_incident(t)
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
            alike = self._fails_alike(obs, read, fault, before=s.probe[1], then=s.probe[5])
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
        typical = self.healthy_norm()
        bound = self._bound(protected, typical)
        if bound is not None and not bound > 0.0:  # healthy norms of exactly 0 give no scale
            bound = cfg.fallback_bound
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
            typical=typical,
            bound=bound,
            clipped=clipped,
            clipped_streak=s.clipped_streak,
            consecutive=s.consecutive,
            fault_limit=fault_limit,
            cooling=t < s.cooldown_until,
            over_budget=len(s.faults) > cfg.skip_budget and t >= s.cooldown_until,
            may_back_off=cfg.backoff_on_trend
            and t >= s.cooldown_until
            and s.backoffs_in_incident < cfg.max_backoffs,
            backoffs=s.backoffs_in_incident,
            max_backoffs=cfg.max_backoffs,
            faults=f"{len(s.faults)} faulty steps within {cfg.window} steps",
            new_level=new_level,
            can_undo=can_undo,
            loss_moved=s.loss_moved,
            can_rollback=can_rollback,
        )

    @staticmethod
    def _fails_alike(
        obs: Observation,
        alerts: Mapping[AlertKind, Alert],
        fault: Reason | None,
        *,
        before: float,
        then: float,
    ) -> bool:
        """Whether restored weights give a loss on this batch that says the loss changed.

        The restored weights gave a loss ``then`` when they were current, and the rollback was
        about a loss ``before`` at least ``NEW_LEVEL_RATIO`` times that. When on new batches
        they give a loss nearer ``before`` than ``then`` (above their geometric mean, and at
        least ``NEW_LEVEL_RATIO`` times ``then``), the loss changed, not the weights: a new
        task, dataset or curriculum stage, or a loss weight on a schedule. (With ``then``
        unknown, a snapshot from an older version, a ``loss_high`` alert at a tenth of
        ``before`` or more is the evidence.) It counts once as many batches in a row say so as
        triggered the rollback. Non-finite values, and a loss beyond the user's divergence
        threshold, are never a new normal.
        """
        if fault in (Reason.DIVERGENCE, Reason.NONFINITE_GRAD, Reason.NONFINITE_LOSS):
            return False
        loss = obs.loss
        if not obs.finite or loss is None or not math.isfinite(loss) or not math.isfinite(before):
            return False
        if math.isfinite(then) and then > 0.0:
            return before >= NEW_LEVEL_RATIO * then and loss >= max(
                math.sqrt(before * then), NEW_LEVEL_RATIO * then
            )
        high = alerts.get(AlertKind.LOSS_HIGH)
        if high is None or high.value is None or high.threshold is None:
            return False
        return before >= high.threshold and high.value >= 0.1 * before

    def _bound(self, protected: bool, typical: float | None) -> float | None:
        """The clip bound of this step: none on a run never rescued, the healthy scale after.

        Once the run needed an escalation, or the bound to shorten a warned step, it keeps the
        bound on every step (``persistent``): a model that exploded once explodes again when
        released, and one line of ``clip_grad_norm_`` would have held it all along. The last
        resort tightens it further.
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
        if typical is not None:
            bound = typical
        elif s.first_norm is not None:
            bound = min(s.first_norm * cfg.restart_fraction, cfg.fallback_bound)
        else:
            bound = cfg.fallback_bound
        return min(bound, cfg.fallback_bound) if s.last_resort else bound

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
                current = s.incident_start
                if current is None:
                    self._open_incident(start)
                s.incident_start = start if current is None else min(current, start)
                s.norms = []
            why = rung.why.format(
                consecutive=sit.consecutive, faults=sit.faults, backoffs=sit.backoffs
            )
            return self._rollback(sit, rung.reason or sit.fault, what, why)
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
        if stuck is not None and sit.stuck:
            return stuck.message.split(":")[0]
        early = sit.alert(AlertKind.EARLY_EXPLOSION)
        if sit.fault is None and early is not None:
            return early.message.split(":")[0]
        drift = sit.alert(AlertKind.LOSS_DRIFT)
        if sit.fault is None and drift is not None:
            return drift.message.rstrip(".")
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
        external, own, coef = _coefficients(obs, bound)
        clipped_before = external < 1.0 - CLIP_TOLERANCE
        kind = ActionKind.CLIP if sit.clipped or clipped_before else ActionKind.PROCEED
        done = _done(clipper, external, own, bound, sit.clipped)

        def decision(action: Action) -> Decision:
            return Decision(action, True, s.lr_scale, bound, coef)

        if sit.warn is not None:
            # A warned step the bound had to shorten keeps the bound on for good, as an
            # escalation does: the model made a wild gradient once and can again.
            s.persistent = s.persistent or sit.clipped
            where = f" in {sit.culprits[0]}" if sit.culprits else ""
            message = (
                f"Warning ({sit.warn.value.replace('_', ' ')}{where}, gradient norm "
                f"{obs.total_norm:.3g}) noted: {done}; the incident began at step "
                f"{s.incident_start}."
            )
            return decision(Action(kind, sit.warn, message))
        typical = sit.typical
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
            s.norms = keep_last(s.norms, norm, cfg.baseline)
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

    def _open_incident(self, t: int) -> None:
        self._s.incident_start = t
        self._s.incident_scale = self._s.lr_scale

    def _close_incident(self) -> None:
        s = self._s
        s.incident_start = None
        s.backoffs_in_incident = 0
        s.clipped_streak = 0

    def _accept_new_level(self, sit: Situation) -> Decision:
        """Take a confirmed change of the data's loss level as the new normal."""
        s, t, obs = self._s, sit.step, sit.obs
        step, loss, _, _, _, then = s.probe or [float(t), math.nan, 0.0, 0.0, 0.0, math.nan]
        # The incident's warnings were the loss's doing, not the step size's: its backoffs
        # are undone with the rollback's (never above a ceiling a raise failed at).
        scale = min(max(s.lr_scale, s.incident_scale), s.ceiling)
        if s.rollbacks and s.rollbacks[-1] == int(step):
            s.rollbacks.pop()  # the rollback was a diagnosis, not a rescue: refunded
        s.lr_scale = scale
        s.probe = None
        s.norms = []
        s.first_norm = obs.total_norm if obs.total_norm > 0.0 else None
        self._close_incident()
        s.isolated = False
        s.faults = []
        s.consecutive = 0
        s.protect_until = s.cooldown_until = t
        # The rollback blamed the weights, and the loss moved without them: the weights it
        # abandoned come back (a task half learned, progress made under a growing loss weight
        # or before a stretch of noisy labels is not thrown away). Comparing the two weights'
        # losses instead would compare different batches of a level that is moving.
        undo = sit.can_undo
        # The bound stays on (``persistent``, set by the rollback), from the new level's first
        # norm: a loss scale that moved once may move again (a loss weight on a schedule), and
        # clipping is what keeps plain SGD through it.
        bound = None if undo else self._bound(True, None)
        coef = 1.0 if undo else _coefficients(obs, bound)[2]
        # Every snapshot so far holds weights from before the change, which a rollback's probe
        # would find "as bad" again: until a newer one exists (see snapshot_taken), the rules
        # that read the loss level (stuck, drift, early explosion) roll nothing back.
        s.loss_moved = True
        own = f" than to the {then:.4g} they gave when current" if math.isfinite(then) else ""
        message = (
            f"The weights restored by the rollback at step {int(step)} give a loss of "
            f"{obs.loss:.4g} on new batches, closer to the {loss:.4g} that triggered it{own}, "
            "so the data changed, not the weights: the new level is accepted (loss and "
            "gradient baselines start over, the rollback is not counted, learning-rate scale "
            f"back to {scale:.3g})"
        )
        if undo:
            message += "; the weights it abandoned are restored, this step skipped."
        else:
            scaled = f" with gradients scaled by {coef:.3g}" if coef < 1.0 - CLIP_TOLERANCE else ""
            message += f" and the step applied{scaled}."
        self._remember(message)
        kind = ActionKind.SKIP if undo else ActionKind.PROCEED
        action = Action(kind, Reason.REGIME_CHANGE, message)
        return Decision(
            action,
            not undo,
            s.lr_scale,
            bound,
            coef,
            # The abandoned moments remember the gradients before the bound: reset, as the
            # rollback reset the restored ones.
            reset_moments=undo and self.config.reset_moments,
            reset_baselines=True,
            undo_rollback=undo,
        )

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
        s.clipped_streak = 0
        s.persistent = True

    def _backoff(self, t: int, reason: Reason, what: str, sit: Situation) -> Decision:
        s, cfg = self._s, self.config
        apply = sit.fault is None
        bound = sit.bound if apply else None
        coef = _coefficients(sit.obs, bound)[2] if apply else 1.0
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

    def _rollback(self, sit: Situation, reason: Reason | None, what: str, why: str) -> Decision:
        s, cfg, t, can_rollback = self._s, self.config, sit.step, sit.can_rollback
        reason = reason or Reason.REPEATED_FAULTS
        last_resort = ""
        if len(s.rollbacks) >= cfg.max_rollbacks and not s.last_resort and can_rollback:
            # Before giving up, the remedy of the literature for a model that keeps exploding:
            # tight clipping on every step, the rate capped where it is now. A fresh budget.
            s.last_resort = True
            s.rollbacks = []
            last_resort = (
                f" Last resort after {cfg.max_rollbacks} rollbacks: from now on "
                + ("every step is clipped tightly and " if self.clip is not None else "")
                + "the learning rate is never raised above this backoff."
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
        # A rollback over a finite loss and finite gradients was about the loss level: the next
        # steps probe whether the loss, not the weights, changed. Non-finite values are never
        # a new normal, and the last finite loss before them says nothing of the level.
        loss = sit.obs.loss if sit.obs.loss is not None else math.nan
        about_level = sit.obs.finite and math.isfinite(loss)
        s.probe = (
            [float(t), loss, 0.0, 0.0, 0.0, math.nan] if can_rollback and about_level else None
        )
        if cfg.backoff_on_rollback:
            # The k-th rollback in the window backs off k times: a rate 100x too high is found
            # in three rollbacks (x1/64) instead of seven.
            factor = cfg.backoff_factor ** (len(s.rollbacks) + 1)
            s.lr_scale = max(old * factor, cfg.min_lr_scale)
        s.rollbacks.append(t)
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

    def snapshot_taken(self) -> None:
        """The guard took a snapshot: a rollback can reach weights from after an accepted change
        of the loss level, so that level is evidence about the weights again."""
        self._s.loss_moved = False

    def _remember(self, message: str) -> None:
        self._s.history = [*self._s.history[-7:], message]

    # ---------------------------------------------------------------- state
    def baselines(self) -> dict[str, list[float]]:
        """The healthy norms the automatic bound follows, and the loss level (a snapshot's part).

        A rollback restores them with :meth:`load_baselines`, so the restored weights are judged
        against what was healthy for them, not against the trajectory that was abandoned; the
        budgets, the incident and the learning-rate scale stay live.
        """
        losses = self._s.losses
        # An empty "loss": taken before any step (the run's first loss is these weights').
        return {"norms": list(self._s.norms), "loss": [statistics.median(losses)] if losses else []}

    def load_baselines(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`baselines`, even empty ones (a snapshot from before any history).

        With none, they are relearned (the early-explosion detector watches that warm-up). The
        loss the restored weights gave when current goes to the rollback's probe: the median of
        the last losses before the snapshot, or, for one taken before any step, the run's first
        loss (the loss of exactly those weights).
        """
        s = self._s
        s.norms = [float(v) for v in state["norms"]]
        saved = state.get("loss")  # missing in snapshots of older versions: unknown
        then = math.nan if saved is None else float(saved[0]) if saved else s.first_loss
        if s.probe is not None:
            s.probe[5] = then

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
        probe = self._s.probe
        if probe is not None:  # saved by 0.2: without the count of alike steps, or ``then``
            probe.extend([0.0, math.nan][len(probe) - 4 :])
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


def _coefficients(obs: Observation, bound: float | None) -> tuple[float, float, float]:
    """The factors of an applied step: a clipper object's (``external``, it scaled the
    gradients before the decision), the bound's (``own``), and their product."""
    own = 1.0 if bound is None else min(1.0, bound / (obs.total_norm + EPS))
    external = 1.0 if obs.clip_coef is None else obs.clip_coef
    return external, own, external * own


def _done(clipper: str, external: float, own: float, bound: float | None, clipped: bool) -> str:
    """The clause saying how the step was applied: who scaled the gradients, by how much."""
    scaled = []
    if external < 1.0 - CLIP_TOLERANCE:
        scaled.append(f"{clipper} scaled the gradients by {external:.3g}")
    if clipped and bound is not None:
        scaled.append(f"gradients scaled by {own:.3g} (bound {bound:.3g})")
    return f"{', '.join(scaled)} and the step applied" if scaled else "step applied"
