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

from gradguard.policy.advice import abort_advice
from gradguard.policy.config import EPS, ClipMode, Decision, PolicyConfig
from gradguard.policy.escalation import EscalationPolicy
from gradguard.policy.ladder import LADDER, Move, Rung, Situation

__all__ = [
    "EPS",
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
