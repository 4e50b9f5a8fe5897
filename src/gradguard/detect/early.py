"""Explosions from the first step: judged on scale-free evidence, before any baseline exists.

Every other detector learns what "healthy" looks like from the run's first steps. A run that
explodes from step 0 fills that baseline with the explosion itself (an LSTM language model at
ten times its learning rate goes from loss 7.6 to 3000 in five steps, every norm "within
bounds"). This detector needs no baseline: it compares each early step with the run's own first
step and with the step before.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping
from typing import Any

from gradguard.detect.base import check_int, check_ratio, culprit_names, fmt
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["EarlyExplosionDetector"]


class EarlyExplosionDetector:
    """Critical alert when, within the first ``window`` steps, the run blows up from its start.

    Two rules, both ratios to the run's own earlier values, so they hold at any scale, and both
    only while the loss is above the run's first loss (an explosion leaves the run worse than it
    began; a classifier near zero loss whose tiny norm jumps on a hard batch is not exploding):

    * the loss is ``loss_factor`` times the median of the run's earlier losses, the gradient norm
      ``norm_factor`` times the median of its earlier norms, and the norm has grown at each of
      the last ``rising`` steps: training from a random start lowers the loss, so a loss
      several-fold above where it began while the gradients grow step after step is divergence
      (a noisy batch lifts one loss, not a steady climb of both; medians, not the first value,
      so a lucky first batch sets no low bar); without the climb, both must be ``order`` times
      every earlier value at once (an RMSprop LSTM whose first step multiplies the norm 40-100x
      and the loss 10-80x);
    * the gradient norm jumps ``jump`` times between two consecutive finite steps: healthy early
      steps measured in our runs change it by at most about 7x (a zero-initialised head waking
      up), an explosion by orders of magnitude.

    After ``window`` steps the calibrated detectors (spike, trend, loss) have their baselines and
    this one falls silent.

    Args:
        window: steps from the first observation during which the rules apply.
        loss_factor: loss over its first finite value that, with ``norm_factor``, is critical.
        norm_factor: gradient norm over its first finite value required with ``loss_factor``.
        jump: step-to-step gradient-norm ratio that is critical on its own.
        rising: consecutive norm increases the first rule requires.
        order: without such a climb, the loss and the norm must both be this many times every
            earlier value at once (healthy first steps measured: at most 5.7x and 6.9x).
    """

    name = "early_explosion"
    keep_on_rollback = ("seen",)
    """The run's own clock: a rollback to an early snapshot does not make later steps early
    again (a cause that outlives the weights would otherwise be rolled back to step 0 over and
    over, each time read as an explosion from the start)."""

    def __init__(
        self,
        *,
        window: int = 32,
        loss_factor: float = 4.0,
        norm_factor: float = 4.0,
        jump: float = 100.0,
        rising: int = 3,
        order: float = 10.0,
    ) -> None:
        self.window = check_int("window", window, minimum=1)
        self.loss_factor = check_ratio("loss_factor", loss_factor)
        self.norm_factor = check_ratio("norm_factor", norm_factor)
        self.jump = check_ratio("jump", jump)
        self.rising = check_int("rising", rising, minimum=1)
        self.order = check_ratio("order", order)
        self.seen = 0
        self.losses: list[float] = []  # finite positive losses so far (at most ``window``)
        self.norms: list[float] = []  # finite norms so far (at most ``window``)

    def update(self, obs: Observation) -> list[Alert]:
        """Compare this step's loss and norm with the run's first ones and the previous norm."""
        self.seen += 1
        if self.seen > self.window or not obs.finite or not math.isfinite(obs.total_norm):
            return []
        norm, loss = obs.total_norm, obs.loss
        loss_ok = loss is not None and math.isfinite(loss) and loss > 0.0
        norms, losses = self.norms, self.losses
        previous = norms[-1] if norms else None
        message, since = None, obs.step
        # An explosion leaves the run worse than it started; a converging run whose tiny norm
        # jumps on a hard batch (a classifier near zero loss) does not.
        known = loss is not None and math.isfinite(loss) and bool(losses)
        above_start = not known or (loss is not None and loss > losses[0])
        if above_start and previous is not None and previous > 0.0 and norm >= self.jump * previous:
            message = (
                f"Gradient norm jumped {fmt(norm / previous)}x in one step ({fmt(previous)} -> "
                f"{fmt(norm)}) at step {obs.step}, before the run had a healthy history: the "
                "run is exploding from the start."
            )
        elif above_start and loss is not None and losses and norms:
            loss_then, norm_then = statistics.median(losses), statistics.median(norms)
            recent = [*norms[-self.rising :], norm]
            climbing = (
                len(norms) >= self.rising
                and len(losses) >= 2
                and all(b > a for a, b in itertools.pairwise(recent))
            )
            # Several-fold over the medians on a climb, or, without one, an order of magnitude
            # above every earlier value in both (one lucky first batch is no reference).
            if climbing:
                exploding = (
                    loss >= self.loss_factor * loss_then and norm >= self.norm_factor * norm_then
                )
            else:
                exploding = (
                    len(losses) >= 2
                    and loss >= self.order * max(losses)
                    and norm >= self.order * max(norms)
                )
            if exploding:
                # The climb is no history to compare with: later steps (after a rollback, say)
                # are judged against what came before it.
                climb = self.rising if climbing else 0
                since = obs.step - climb
                if climb:
                    del norms[-climb:]
                    del losses[-climb:]
                how = f", up at each of the last {self.rising} steps," if climbing else ""
                message = (
                    f"Loss {fmt(loss)} is {fmt(loss / loss_then)}x its earlier median and the "
                    f"gradient norm {fmt(norm)}{how} {fmt(norm / norm_then)}x its earlier median, "
                    f"{obs.step} steps in: the run is exploding from the start."
                )
        if message is not None:
            return [
                Alert(
                    step=obs.step,
                    severity=Severity.CRITICAL,
                    kind=AlertKind.EARLY_EXPLOSION,
                    message=message,
                    detector=self.name,
                    culprits=culprit_names(obs),
                    value=norm,
                    since=max(since, 0),
                )
            ]
        norms.append(norm)
        if loss_ok and loss is not None:
            losses.append(loss)
        return []

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as plain values."""
        return {"seen": self.seen, "losses": list(self.losses), "norms": list(self.norms)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.seen = int(state["seen"])
        self.losses = [float(v) for v in state["losses"]]
        self.norms = [float(v) for v in state["norms"]]
