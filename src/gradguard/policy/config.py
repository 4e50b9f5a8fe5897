"""The settings of the escalation ladder and the decision it hands the guard."""

from __future__ import annotations

import dataclasses
from typing import Literal, TypeAlias

from gradguard.errors import (
    ConfigError,
    check_bool,
    check_int,
    check_positive,
    check_real,
)
from gradguard.records import (
    Action,
)

__all__ = ["EPS", "ClipMode", "Decision", "PolicyConfig"]

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
            grows geometrically), an early explosion, or, when no bound clips the step, a
            loss-spike warning (the loss jumped tenfold): the step size is past the stability
            limit, and clipping alone leaves the run oscillating at the edge; once per
            ``cooldown``, at most ``max_backoffs`` times per incident.
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
        undo_rollback: the last rollback was a diagnosis, and the weights it abandoned did
            better at the new loss level than the restored ones: restore the training state it
            abandoned (this step's gradient, of the restored weights, is not applied).
    """

    action: Action
    apply: bool
    lr_scale: float = 1.0
    clip_bound: float | None = None
    clip_coef: float = 1.0
    rollback_before: int | None = None
    reset_moments: bool = False
    reset_baselines: bool = False
    undo_rollback: bool = False
