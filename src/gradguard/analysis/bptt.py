"""‖∂L/∂h_t‖ for every time step: how the gradient grows or fades as BPTT walks back in time.

By the chain rule, ∂L/∂h_t = (∂h_{t+1}/∂h_t)ᵀ ∂L/∂h_{t+1} + (direct terms), so in a recurrence with
per-step Jacobian of norm γ the back-propagated gradient behaves like γ^(T-t) (Pascanu et al.,
2013). :func:`bptt_profile` measures that profile on a real model and batch, fits γ, and turns it
into an effective memory horizon.

The hidden states must be nodes of the autograd graph that later steps consume. Three sources:

* ``nn.RNN``/``nn.LSTM``/``nn.GRU`` submodules are temporarily run step by step with their own
  weights (:func:`gradguard.analysis.unroll.unrolled_forward`), same function as the fused kernel;
* ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell`` submodules called in a user loop are observed by a
  forward hook: each call's output is that step's state;
* any callable returning ``(output, states)`` with ``hidden="returned"``, where ``states`` is the
  list of per-step state tensors (or tuples of them) the loop carried.

Gradients come from ``torch.autograd.grad``: the parameters' ``.grad`` are not touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradguard.analysis._common import LossFn, Result, call_model, grad_norm, scalar_loss
from gradguard.analysis._fit import fit_growth, horizon
from gradguard.analysis.unroll import StateCallback, unrolled_forward
from gradguard.errors import ConfigError, UnsupportedModelError

__all__ = ["BPTTProfile", "StateSeries", "bptt_profile"]


@dataclasses.dataclass(frozen=True)
class StateSeries:
    """‖∂L/∂s_t‖ for one recurrent state s (one module, layer, direction, and h or c).

    Attributes:
        name: e.g. ``"encoder.l1.reverse.c"``, ``"cell.h"`` or ``"state[0]"``.
        module: path of the module that produced it (``""`` when returned by the model).
        layer: layer index (0 for cells and returned states).
        direction: ``"forward"`` or ``"reverse"`` (time order of the recurrence).
        state: ``"h"``, ``"c"``, or ``"state"``/``"state[i]"`` for returned states.
        norms: ‖∂L/∂s_t‖ for t = 0 .. T-1 (position in the sequence).
        growth_factor: fitted γ: norms ≈ a·γ^(lag), lag = steps back from the end of this
            recurrence (T-1-t forward, t reverse).
        horizon: steps back until the fitted gradient falls to ``tol`` of its start
            (``ln tol / ln γ``); ``inf`` when γ >= 1: the gradient never fades.
    """

    name: str
    module: str
    layer: int
    direction: str
    state: str
    norms: tuple[float, ...]
    growth_factor: float
    horizon: float


@dataclasses.dataclass(frozen=True)
class BPTTProfile(Result):
    """Result of :func:`bptt_profile`.

    Attributes:
        norms: ‖∂L/∂s_t‖ of the whole forward-in-time state at position t (all forward-direction
            series of the sequence length combined: sqrt of the sum of squares).
        reverse_norms: the same for the reverse directions of bidirectional layers, else None.
        seq_len: T, the length of ``norms``.
        growth_factor: γ fitted to ``norms`` against lag T-1-t: the per-step growth (> 1
            explodes, < 1 vanishes).
        horizon: effective memory horizon in steps (see :class:`StateSeries`).
        tol: the fraction defining ``horizon``.
        loss: the loss value.
        source: ``"unrolled"`` (RNN modules), ``"cells"`` (RNN cells), ``"returned"``, or
            ``"unrolled+cells"``.
        series: the individual state series.
    """

    kind = "bptt_profile"

    norms: tuple[float, ...]
    reverse_norms: tuple[float, ...] | None
    seq_len: int
    growth_factor: float
    horizon: float
    tol: float
    loss: float
    source: str
    series: tuple[StateSeries, ...]

    @property
    def ratio(self) -> float:
        """‖∂L/∂s_0‖ / ‖∂L/∂s_{T-1}‖: total amplification from the last step back to the first."""
        last = self.norms[-1]
        return self.norms[0] / last if last > 0 else math.inf

    def __str__(self) -> str:
        lines = [
            f"BPTT profile over T={self.seq_len} ({self.source}): per-step growth "
            f"{self.growth_factor:.4g}, memory horizon {self.horizon:.4g} steps, "
            f"||dL/ds_0|| / ||dL/ds_T-1|| = {self.ratio:.3g}"
        ]
        for s in self.series:
            lines.append(
                f"  {s.name:<32.32} growth {s.growth_factor:8.4g}  horizon {s.horizon:8.4g}  "
                f"first {s.norms[0]:.3g}  last {s.norms[-1]:.3g}"
            )
        return "\n".join(lines)


@dataclasses.dataclass
class _Trace:
    module: str
    layer: int
    direction: str
    state: str
    unrolled: bool = False
    tensors: list[Tensor] = dataclasses.field(default_factory=list)
    positions: list[int] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        parts = [self.module] if self.module else []
        if self.unrolled:
            parts += [f"l{self.layer}", self.direction]
        return ".".join([*parts, self.state])


_Traces = dict[tuple[str, int, str, str], _Trace]


def _install_unrolling(stack: ExitStack, model: nn.Module, traces: _Traces) -> int:
    """Make every RNN module of ``model`` run unrolled while ``stack`` is open."""
    count = 0
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.RNNBase):
            continue
        count += 1
        offset = [0]  # a module called again (e.g. on the next chunk) continues the time axis

        def record(
            layer: int,
            direction: str,
            state: str,
            t: int,
            tensor: Tensor,
            _name: str = module_name,
            _offset: list[int] = offset,
        ) -> None:
            key = (_name, layer, direction, state)
            trace = traces.setdefault(key, _Trace(_name, layer, direction, state, unrolled=True))
            trace.tensors.append(tensor)
            trace.positions.append(_offset[0] + t)

        def forward(
            input: Any,
            hx: Any = None,
            _module: nn.RNNBase = module,
            _record: StateCallback = record,
            _offset: list[int] = offset,
        ) -> tuple[Tensor, Any]:
            output, state = unrolled_forward(_module, input, hx, callback=_record)
            time_dim = 1 if (_module.batch_first and output.ndim == 3) else 0
            _offset[0] += output.shape[time_dim]
            return output, state

        had_own = "forward" in module.__dict__
        previous = module.__dict__.get("forward")
        module.forward = forward
        stack.callback(_restore_forward, module, had_own, previous)
    return count


def _restore_forward(module: nn.Module, had_own: bool, previous: Any) -> None:
    if had_own:
        module.forward = previous
    else:
        del module.forward


def _install_cell_hooks(stack: ExitStack, model: nn.Module, traces: _Traces) -> int:
    """Record the output of every call of every RNN cell of ``model`` while ``stack`` is open."""
    count = 0
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.RNNCellBase):
            continue
        count += 1

        def hook(_module: nn.Module, _args: Any, output: Any, _name: str = module_name) -> None:
            states = output if isinstance(output, tuple) else (output,)
            for label, tensor in zip(("h", "c"), states, strict=False):
                key = (_name, 0, "forward", label)
                trace = traces.setdefault(key, _Trace(_name, 0, "forward", label))
                trace.positions.append(len(trace.tensors))
                trace.tensors.append(tensor)

        stack.enter_context(module.register_forward_hook(hook))
    return count


def _returned_traces(result: Any) -> tuple[Any, _Traces]:
    """Split ``(output, states)`` returned by the model into output and traces."""
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], Sequence)):
        raise ConfigError(
            "with hidden='returned' the model must return (output, states), states being the "
            f"list of per-step hidden states; it returned {type(result).__name__}."
        )
    output, states = result
    if len(states) == 0:
        raise ConfigError("the model returned an empty list of states; return one per step.")
    traces: _Traces = {}
    for t, step in enumerate(states):
        parts = (step,) if isinstance(step, Tensor) else step
        if not isinstance(parts, (tuple, list)) or not all(isinstance(p, Tensor) for p in parts):
            raise ConfigError(
                f"states[{t}] must be a tensor or a tuple of tensors (e.g. (h, c)), got "
                f"{type(step).__name__}."
            )
        for i, tensor in enumerate(parts):
            label = "state" if isinstance(step, Tensor) else f"state[{i}]"
            trace = traces.setdefault(("", 0, "forward", label), _Trace("", 0, "forward", label))
            trace.positions.append(t)
            trace.tensors.append(tensor)
    return output, traces


def bptt_profile(
    model: nn.Module | Callable[..., Any],
    inputs: Any,
    targets: Any,
    loss_fn: LossFn,
    *,
    hidden: Literal["auto", "returned"] = "auto",
    tol: float = 0.01,
) -> BPTTProfile:
    """Measure ‖∂L/∂h_t‖ for every time step t, fit the per-step growth and the memory horizon.

    Runs ``loss = loss_fn(model(inputs), targets)`` once with every hidden state kept as a graph
    node, then ``torch.autograd.grad(loss, states)``: ∂L/∂h_t is the *total* derivative, through
    all later steps. A least-squares fit of log‖∂L/∂h_t‖ against the lag T-1-t gives the per-step
    growth γ (exactly ρ for a linear RNN h_t = W h_{t-1} + U x_t with W = ρ·Q, Q orthogonal, and a
    loss on h_T); the horizon is ln(tol)/ln γ steps (``inf`` for γ >= 1).

    Args:
        model: an ``nn.Module`` holding ``nn.RNN``/``nn.LSTM``/``nn.GRU`` layers or RNN cells called
            in a loop (``hidden="auto"``), or any module or function returning
            ``(output, states)`` (``hidden="returned"``).
        inputs: the model's input; a tuple is unpacked as positional arguments.
        targets: passed to ``loss_fn`` as its second argument.
        loss_fn: ``loss_fn(output, targets)`` returning a scalar tensor.
        hidden: where the per-step states come from (see the module docstring).
        tol: the fraction of the starting gradient that defines the horizon, in (0, 1).

    Returns:
        A :class:`BPTTProfile`.

    Raises:
        UnsupportedModelError: ``hidden="auto"`` and the model has no recurrent module.
        ConfigError: bad ``hidden``/``tol``, inputs of the wrong shape, a non-scalar loss, a
            ``"returned"`` model that does not return ``(output, states)``, or states that do
            not require grad.
        NonFiniteError: the loss is NaN or infinite.

    References:
        Werbos, "Backpropagation through time: what it does and how to do it", Proc. IEEE 1990;
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013.
    """
    if hidden not in ("auto", "returned"):
        raise ConfigError(f"hidden must be 'auto' or 'returned', got {hidden!r}.")
    if not (isinstance(tol, (int, float)) and 0.0 < tol < 1.0):
        raise ConfigError(f"tol must be a number in (0, 1), got {tol!r}; 0.01 means 1%.")
    if not callable(model):
        raise UnsupportedModelError(f"model must be callable, got {type(model).__name__}.")
    traces: _Traces
    with torch.enable_grad():
        if hidden == "returned":
            output, traces = _returned_traces(call_model(model, inputs))
            source = "returned"
        else:
            if not isinstance(model, nn.Module):
                raise UnsupportedModelError(
                    f"hidden='auto' looks for RNN modules inside an nn.Module, got "
                    f"{type(model).__name__}. Return (output, per_step_states) from your loop and "
                    "pass hidden='returned'."
                )
            traces = {}
            with ExitStack() as stack:
                rnns = _install_unrolling(stack, model, traces)
                cells = _install_cell_hooks(stack, model, traces)
                if rnns + cells == 0:
                    raise UnsupportedModelError(
                        f"{type(model).__name__} holds no nn.RNN/nn.LSTM/nn.GRU or RNN cell. For a "
                        "hand-written recurrence, return (output, per_step_states) from forward "
                        "and pass hidden='returned'; for feed-forward stacks use depth_profile."
                    )
                output = call_model(model, inputs)
            source = "+".join(s for s, n in (("unrolled", rnns), ("cells", cells)) if n)
        loss = scalar_loss(loss_fn(output, targets))
        if not traces:
            raise ConfigError(
                "no hidden state was recorded: the recurrent modules were not called by forward."
            )
        ordered = list(traces.values())
        tensors = [t for trace in ordered for t in trace.tensors]
        wanted = [t for t in tensors if t.requires_grad]
        if not wanted:
            raise ConfigError(
                "the hidden states do not require grad, so no gradient reaches them. Run with "
                "gradients enabled and trainable recurrent weights (requires_grad=True)."
            )
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    by_id = {id(t): g for t, g in zip(wanted, grads, strict=True)}
    zero = loss.new_zeros((), dtype=torch.float64)
    norm_tensors = [grad_norm(g) if (g := by_id.get(id(t))) is not None else zero for t in tensors]
    # HOST SYNC: one transfer of all per-step norms (analysis, off the hot path).
    flat = torch.stack(norm_tensors).tolist() if norm_tensors else []
    loss_value = float(loss.detach())
    series = []
    offset = 0
    for trace in ordered:
        count = len(trace.tensors)
        values = flat[offset : offset + count]
        offset += count
        length = max(trace.positions) + 1
        norms = [0.0] * length
        for position, value in zip(trace.positions, values, strict=True):
            norms[position] = value
        lags = [t if trace.direction == "reverse" else length - 1 - t for t in range(length)]
        growth = fit_growth(norms, lags)
        series.append(
            StateSeries(
                name=trace.name,
                module=trace.module,
                layer=trace.layer,
                direction=trace.direction,
                state=trace.state,
                norms=tuple(norms),
                growth_factor=growth,
                horizon=horizon(growth, tol),
            )
        )
    forward = _combine([s for s in series if s.direction == "forward"])
    reverse = _combine([s for s in series if s.direction == "reverse"]) or None
    main = forward or (reverse if reverse is not None else ())
    lags = list(range(len(main) - 1, -1, -1)) if forward else list(range(len(main)))
    growth = fit_growth(main, lags)
    return BPTTProfile(
        norms=tuple(main),
        reverse_norms=tuple(reverse) if (reverse and forward) else None,
        seq_len=len(main),
        growth_factor=growth,
        horizon=horizon(growth, tol),
        tol=float(tol),
        loss=loss_value,
        source=source,
        series=tuple(series),
    )


def _combine(series: list[StateSeries]) -> list[float]:
    """sqrt of the summed squares of the series sharing the first one's length."""
    if not series:
        return []
    length = len(series[0].norms)
    total = [0.0] * length
    for s in series:
        if len(s.norms) != length:
            continue
        for t, value in enumerate(s.norms):
            total[t] += value * value
    return [math.sqrt(v) for v in total]
