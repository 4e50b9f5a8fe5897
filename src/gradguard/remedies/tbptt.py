"""Truncated back-propagation through time for hand-written recurrent loops.

TBPTT(k1, k2): every k1 steps, back-propagate the losses of those k1 steps through at most the
last k2 steps (k2 >= k1), then let the caller step the optimizer. A gradient can then be
multiplied by the recurrent Jacobian at most k2 times, so its growth is bounded by ρ^k2 however
long the sequence is — at the price of not learning dependencies longer than k2 steps.

With k1 == k2 the state is simply detached every k steps. With k2 > k1 the windows overlap, and the
last k2 steps are recomputed from the stored state at the start of the window (with the current
weights) before each backward pass, which costs about k2/k1 extra forward steps per step.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar, cast

import torch
from torch import Tensor

from gradguard.errors import ConfigError

__all__ = ["TBPTTResult", "TruncatedBPTT", "detach_state"]

X = TypeVar("X")
S = TypeVar("S")

StepFn = Callable[[X, S], tuple[S, Tensor | None]]


def detach_state(state: S) -> S:
    """Detach every tensor in a (nested tuple/list/dict) recurrent state from the graph."""
    value: Any = state
    if isinstance(value, Tensor):
        value = value.detach()
    elif isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        value = type(value)(*(detach_state(v) for v in value))
    elif isinstance(value, (tuple, list)):
        value = type(value)(detach_state(v) for v in value)
    elif isinstance(value, dict):
        value = {k: detach_state(v) for k, v in value.items()}
    return cast(S, value)


@dataclasses.dataclass(frozen=True, eq=False)
class TBPTTResult(Generic[S]):
    """What :meth:`TruncatedBPTT.run` did.

    Attributes:
        state: the final state, detached.
        steps: number of time steps processed.
        backward_steps: the (0-based) steps after which a backward pass ran.
        losses: the summed loss of each backward pass.
    """

    state: S
    steps: int
    backward_steps: tuple[int, ...]
    losses: tuple[float, ...]


class TruncatedBPTT:
    """Run a recurrent loop with truncated back-propagation through time, TBPTT(k1, k2).

    Example::

        tbptt = TruncatedBPTT(k1=20, k2=20)

        def step(x_t, h):
            h = cell(x_t, h)
            return h, loss_fn(head(h), y_t)      # or None when step t has no target

        def update(t):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        tbptt.run(step, h0, xs, on_backward=update)

    Args:
        k1: steps between backward passes, >= 1.
        k2: steps each backward pass reaches back, >= k1 (default k1).

    Raises:
        ConfigError: ``k1`` < 1 or ``k2`` < ``k1``.

    References:
        Williams and Peng, "An efficient gradient-based algorithm for on-line training of
        recurrent network trajectories", Neural Computation 1990; Sutskever, "Training recurrent
        neural networks", PhD thesis, 2013, §2.8.6.
    """

    def __init__(self, k1: int, k2: int | None = None) -> None:
        if isinstance(k1, bool) or not isinstance(k1, int) or k1 < 1:
            raise ConfigError(f"k1 must be an integer >= 1, got {k1!r}; e.g. k1=20.")
        k2 = k1 if k2 is None else k2
        if isinstance(k2, bool) or not isinstance(k2, int) or k2 < k1:
            raise ConfigError(
                f"k2 must be an integer >= k1={k1}, got {k2!r}: each backward pass must reach "
                "back over at least the k1 steps whose losses it carries."
            )
        self.k1 = k1
        self.k2 = k2

    def __repr__(self) -> str:
        return f"TruncatedBPTT(k1={self.k1}, k2={self.k2})"

    def run(
        self,
        step: StepFn[X, S],
        state: S,
        inputs: Iterable[X],
        *,
        on_backward: Callable[[int], None] | None = None,
    ) -> TBPTTResult[S]:
        """Feed ``inputs`` through ``step`` one at a time, back-propagating as TBPTT(k1, k2).

        Args:
            step: ``step(x_t, state) -> (new_state, loss_t or None)``; it must be a pure function
                of its arguments and the model's weights (it is re-run when k2 > k1).
            state: the initial state (tensor or nested tuple/list/dict of tensors).
            inputs: the sequence, one element per time step.
            on_backward: called with the step index after each backward pass (step the
                optimizer and zero the gradients there). Also called after the last, partial
                window.

        Returns:
            A :class:`TBPTTResult`.
        """
        if self.k2 == self.k1:
            return self._run_chunks(step, state, inputs, on_backward)
        return self._run_windows(step, state, inputs, on_backward)

    def _run_chunks(
        self,
        step: StepFn[X, S],
        state: S,
        inputs: Iterable[X],
        on_backward: Callable[[int], None] | None,
    ) -> TBPTTResult[S]:
        state = detach_state(state)
        pending: list[Tensor] = []
        marks: list[int] = []
        losses: list[float] = []
        t = -1
        for t, x in enumerate(inputs):
            state, loss = step(x, state)
            if loss is not None:
                pending.append(loss)
            if (t + 1) % self.k1 == 0:
                self._backward(pending, t, marks, losses, on_backward)
                pending = []
                state = detach_state(state)
        if pending:
            self._backward(pending, t, marks, losses, on_backward)
        return TBPTTResult(detach_state(state), t + 1, tuple(marks), tuple(losses))

    def _run_windows(
        self,
        step: StepFn[X, S],
        state: S,
        inputs: Iterable[X],
        on_backward: Callable[[int], None] | None,
    ) -> TBPTTResult[S]:
        # history[i] = (x_t, state before step t), detached, for the last k2 steps.
        history: collections.deque[tuple[X, S]] = collections.deque(maxlen=self.k2)
        state = detach_state(state)
        marks: list[int] = []
        losses: list[float] = []
        t = -1
        since = 0
        for t, x in enumerate(inputs):
            history.append((x, state))
            since += 1
            if since == self.k1:
                state = self._window(step, history, since, t, marks, losses, on_backward)
                since = 0
            else:
                with torch.no_grad():
                    state, _ = step(x, state)
        if since:
            state = self._window(step, history, since, t, marks, losses, on_backward)
        return TBPTTResult(detach_state(state), t + 1, tuple(marks), tuple(losses))

    def _window(
        self,
        step: StepFn[X, S],
        history: collections.deque[tuple[X, S]],
        fresh: int,
        t: int,
        marks: list[int],
        losses: list[float],
        on_backward: Callable[[int], None] | None,
    ) -> S:
        """Recompute the stored window with grad, back-propagate the last ``fresh`` losses."""
        state = history[0][1]
        pending: list[Tensor] = []
        for i, (x, _) in enumerate(history):
            state, loss = step(x, state)
            if loss is not None and i >= len(history) - fresh:
                pending.append(loss)
        self._backward(pending, t, marks, losses, on_backward)
        return detach_state(state)

    @staticmethod
    def _backward(
        pending: list[Tensor],
        t: int,
        marks: list[int],
        losses: list[float],
        on_backward: Callable[[int], None] | None,
    ) -> None:
        if not pending:
            return
        total = torch.stack([loss.reshape(()) for loss in pending]).sum()
        torch.autograd.backward(total)
        marks.append(t)
        losses.append(float(total.detach()))
        if on_backward is not None:
            on_backward(t)
