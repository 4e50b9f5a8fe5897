"""The ladder itself: an ordered table of rungs over a frozen :class:`Situation`.

Each :class:`Rung` is a condition on the step's alerts and the budgets left, a :class:`Move`
and the reason it records; the first rung that holds decides. Read top to bottom, it is the
whole policy: :mod:`gradguard.policy.escalation` only keeps the counts and carries moves out.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence

from gradguard.detect.base import culprit_names
from gradguard.records import (
    Alert,
    AlertKind,
    Observation,
    Reason,
    Severity,
)

__all__ = [
    "FAULT_KINDS",
    "INCIDENT_KINDS",
    "INFO_READ",
    "LADDER",
    "SPIKE_KINDS",
    "UNSTABLE_KINDS",
    "Move",
    "Rung",
    "Situation",
    "classify",
]

FAULT_KINDS = {
    AlertKind.NONFINITE_GRAD: Reason.NONFINITE_GRAD,
    AlertKind.NONFINITE_LOSS: Reason.NONFINITE_LOSS,
    AlertKind.LOSS_SPIKE: Reason.LOSS_SPIKE,
    AlertKind.LOSS_JUMP: Reason.LOSS_SPIKE,
    AlertKind.LOSS_THRESHOLD: Reason.DIVERGENCE,
}
SPIKE_KINDS = {
    AlertKind.GRAD_NORM_SPIKE: Reason.SPIKE,
    AlertKind.GRAD_NORM_THRESHOLD: Reason.NORM_ABOVE_BOUND,
}
INCIDENT_KINDS = {
    **FAULT_KINDS,
    **SPIKE_KINDS,
    AlertKind.GROWTH_TREND: Reason.GROWTH_TREND,
    AlertKind.PARAM_NORM_GROWTH: Reason.GROWTH_TREND,
    AlertKind.EARLY_EXPLOSION: Reason.EARLY_EXPLOSION,
}
"""Alerts that open or extend an incident; the others (stuck, oscillation, a high loss, a
culprit) are read by their own rungs only."""

UNSTABLE_KINDS = (AlertKind.GROWTH_TREND, AlertKind.EARLY_EXPLOSION)
"""Alerts that say the step size is past the stability limit: the learning rate backs off. A
loss-spike warning says so only where no bound clips the step (see :attr:`Situation.grows`)."""

INFO_READ = (AlertKind.LOSS_HIGH, AlertKind.OSCILLATION, AlertKind.LOSS_DRIFT)
"""Information alerts the rungs read; other info alerts are for people only."""


def classify(
    obs: Observation, alerts: Sequence[Alert], *, skip_nonfinite: bool, skip_spikes: bool
) -> tuple[Reason | None, Reason | None, bool, tuple[str, ...]]:
    """The step's fault (it must not be applied), first warning, instability, and culprit.

    A critical alert of a fault kind is a fault (a gradient spike only when ``skip_spikes``);
    any other warning or critical alert of an incident kind is a warning.
    """
    fault: Reason | None = None
    warn: Reason | None = None
    unstable = False
    culprits = culprit_names(obs, limit=1)
    if obs.param_norm is not None and not math.isfinite(obs.param_norm):
        fault = Reason.NONFINITE_PARAM  # the weights themselves are corrupt
    elif skip_nonfinite:
        if not obs.loss_finite:
            fault = Reason.NONFINITE_LOSS
        elif not obs.finite or not math.isfinite(obs.total_norm):
            fault = Reason.NONFINITE_GRAD
    for alert in alerts:
        if alert.severity is Severity.INFO:
            continue
        if alert.culprits and not culprits:
            culprits = alert.culprits[:1]
        reason = INCIDENT_KINDS.get(alert.kind)
        if reason is None:
            continue
        critical = alert.severity is Severity.CRITICAL
        is_fault = alert.kind in FAULT_KINDS or (alert.kind in SPIKE_KINDS and skip_spikes)
        if alert.kind in (AlertKind.NONFINITE_GRAD, AlertKind.NONFINITE_LOSS):
            is_fault = skip_nonfinite
        if critical and is_fault:
            fault = fault or reason
        else:
            warn = warn or reason
        unstable = unstable or alert.kind in UNSTABLE_KINDS
    return fault, warn, unstable, culprits


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
        typical: the healthy gradient norm (median of recent healthy norms), if known yet.
        bound: the clip bound of the step; ``clipped``: the norm exceeds it.
        clipped_streak: clipped, applied steps in a row under protection, this one included.
        consecutive: faulty steps in a row, this one included; ``fault_limit``: the rollback
            threshold for them.
        cooling: a cool-down runs: the last backoff or rollback is too recent to judge.
        over_budget: more faults in the window than ``skip_budget``, and no cool-down running.
        may_back_off: a backoff on instability is allowed now (cool-down over, budget left).
        backoffs: backoffs spent in this incident; ``max_backoffs``: the most it may spend.
        faults: the faults counted in the window, in words.
        new_level: right after a rollback, the restored weights' loss came nearer the one that
            triggered it than their own, on ``consecutive_limit`` batches in a row (see
            ``_fails_alike``): the loss changed, not the weights.
        can_undo: the guard still holds the training state the last rollback abandoned.
        loss_moved: a new loss level was accepted and no snapshot was taken since: the loss
            level moved without the weights, so the rules that read it roll nothing back.
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
    typical: float | None
    bound: float | None
    clipped: bool
    clipped_streak: int
    consecutive: int
    fault_limit: int
    cooling: bool
    over_budget: bool
    may_back_off: bool
    backoffs: int
    max_backoffs: int
    faults: str
    new_level: bool
    can_undo: bool
    loss_moved: bool
    can_rollback: bool

    @property
    def step(self) -> int:
        """The optimizer step decided on."""
        return self.obs.step

    def alert(self, kind: AlertKind) -> Alert | None:
        """The step's first alert of ``kind`` that the ladder reads (see ``INFO_READ``)."""
        return self.alerts.get(kind)

    @property
    def stuck(self) -> bool:
        """The loss level stayed far above healthy through an incident the remedies did not end
        (and the last of them had its cool-down to show an effect)."""
        return self.protected and not self.cooling and self.loss_says(AlertKind.LOSS_STUCK)

    @property
    def grows(self) -> bool:
        """A warning says the step size is past the stability limit, and no accepted change of the
        loss level explains the growth instead (see ``loss_moved``).

        A loss-spike warning is one batch's evidence: where a bound clips the step, the clipped
        step is the remedy (a corrupt batch must not halve the rate for the rest of the run, and
        a rate truly too high shows next as a growth, an oscillation or more faults); where
        nothing clips it (``clip=None``, LBFGS), backing off is the only way to shorten it.
        """
        spiked = self.bound is None and AlertKind.LOSS_SPIKE in self.alerts
        return (self.unstable or spiked) and not self.loss_moved

    def loss_says(self, kind: AlertKind) -> bool:
        """A finite step whose loss-level alert ``kind`` may indict the weights (see
        ``loss_moved``)."""
        return self.fault is None and not self.loss_moved and kind in self.alerts

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
        lambda s: s.loss_says(AlertKind.EARLY_EXPLOSION),
        Move.RESTART,
        Reason.EARLY_EXPLOSION,
        "the run is exploding from its first steps",
    ),
    Rung(
        "drift since a growth began",
        lambda s: s.loss_says(AlertKind.LOSS_DRIFT),
        Move.ROLLBACK,
        Reason.GROWTH_TREND,
        "the weights have drifted since then",
    ),
    Rung(
        "unstable step",
        lambda s: s.fault is None and (s.grows or s.oscillating) and s.may_back_off,
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
