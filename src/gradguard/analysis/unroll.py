"""Run ``nn.RNN``/``nn.LSTM``/``nn.GRU`` step by step with the module's own weights.

The fused kernels of PyTorch's recurrent modules hide the hidden state of every step inside one
operation, so no hook can see ∂L/∂h_t. :func:`unrolled_forward` computes the same function as
``module.forward`` (same arguments, same outputs, all layers, both directions, ``batch_first``,
unbatched input, LSTM ``proj_size``, inter-layer dropout) as an explicit loop of small operations,
and hands every step's hidden (and cell) state to a callback, where it is a node of the autograd
graph that later steps consume.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradguard.errors import ConfigError, UnsupportedModelError

__all__ = ["StateCallback", "unrolled_forward"]

StateCallback = Callable[[int, str, str, int, Tensor], None]
"""``callback(layer, direction, state, t, tensor)``: ``state`` is ``"h"`` or ``"c"``, ``t`` the
position in the input sequence the state was computed at."""


def _weights(module: nn.RNNBase, layer: int, reverse: bool) -> dict[str, Tensor | None]:
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    out: dict[str, Tensor | None] = {}
    for name in names:
        value = getattr(module, name + suffix, None)
        out[name] = value if isinstance(value, Tensor) else None
    return out


def _check_input(module: nn.RNNBase, data: object) -> tuple[Tensor, bool]:
    """Return the input as time-major ``(T, N, F)`` and whether it was unbatched."""
    if isinstance(data, nn.utils.rnn.PackedSequence):
        raise UnsupportedModelError(
            "bptt_profile cannot unroll a PackedSequence input. Pad the batch instead (all "
            "sequences the same length, e.g. nn.utils.rnn.pad_packed_sequence) and pass a tensor."
        )
    if not isinstance(data, Tensor) or data.ndim not in (2, 3):
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ConfigError(
            f"{type(module).__name__} input must be a 3-D tensor (T, N, {module.input_size}) "
            f"(or (N, T, {module.input_size}) with batch_first) or an unbatched 2-D tensor, "
            f"got {shape!r}."
        )
    if data.shape[-1] != module.input_size:
        raise ConfigError(
            f"{type(module).__name__} expects {module.input_size} input features, got input of "
            f"shape {tuple(data.shape)!r}."
        )
    if data.shape[0] == 0 or (data.ndim == 3 and data.shape[1] == 0):
        raise ConfigError(f"the input sequence is empty (shape {tuple(data.shape)!r}).")
    if data.ndim == 2:
        return data.unsqueeze(1), True
    return (data.transpose(0, 1) if module.batch_first else data), False


def _initial(
    module: nn.RNNBase, hx: Any, batch: int, unbatched: bool, like: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Initial hidden (and cell) state as ``(L*D, N, H_out)`` / ``(L*D, N, H)``."""
    directions = 2 if module.bidirectional else 1
    out_size = module.proj_size if module.proj_size > 0 else module.hidden_size
    is_lstm = module.mode == "LSTM"
    c0: Tensor | None = None
    if hx is None:
        h0 = like.new_zeros(module.num_layers * directions, batch, out_size)
        if is_lstm:
            c0 = like.new_zeros(module.num_layers * directions, batch, module.hidden_size)
        return h0, c0
    if is_lstm:
        if not (isinstance(hx, tuple) and len(hx) == 2):
            raise ConfigError("an LSTM's hx must be a tuple (h_0, c_0).")
        h0, c0 = hx
    else:
        h0 = hx
    if unbatched:
        h0 = h0.unsqueeze(1)
        c0 = c0.unsqueeze(1) if c0 is not None else None
    layers = module.num_layers * directions
    if h0.shape != (layers, batch, out_size) or (
        c0 is not None and c0.shape != (layers, batch, module.hidden_size)
    ):
        raise ConfigError(
            f"hx has shape {tuple(h0.shape)!r}, expected {(layers, batch, out_size)!r} "
            "(num_layers * num_directions, batch, hidden or proj size)."
        )
    return h0, c0


def _step_cell(
    mode: str,
    xw_t: Tensor,
    h: Tensor,
    c: Tensor | None,
    w: dict[str, Tensor | None],
    hh_t: Tensor,
    hidden: int,
) -> tuple[Tensor, Tensor | None]:
    """One step of one layer and direction; ``xw_t`` holds the input projection (+ biases)."""
    if mode == "GRU":
        gh = F.linear(h, w["weight_hh"], w["bias_hh"])  # type: ignore[arg-type]
        ir, iz, inn = xw_t.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r = torch.sigmoid(ir + hr)
        z = torch.sigmoid(iz + hz)
        n = torch.tanh(inn + r * hn)
        return (1 - z) * n + z * h, None
    pre = torch.addmm(xw_t, h, hh_t)
    if mode == "RNN_TANH":
        return torch.tanh(pre), None
    if mode == "RNN_RELU":
        return torch.relu(pre), None
    i, f, g, o = pre.chunk(4, dim=1)
    assert c is not None  # internal invariant: LSTM always carries a cell state
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if w["weight_hr"] is not None:
        h_new = F.linear(h_new, w["weight_hr"])
    return h_new, c_new


def unrolled_forward(
    module: nn.RNNBase,
    input: Any,
    hx: Any = None,
    *,
    callback: StateCallback | None = None,
) -> tuple[Tensor, Any]:
    """Compute ``module(input, hx)`` as an explicit loop over time steps.

    Args:
        module: an ``nn.RNN``, ``nn.LSTM`` or ``nn.GRU``.
        input: as for ``module.forward``: ``(T, N, F)``, ``(N, T, F)`` with ``batch_first``, or
            unbatched ``(T, F)``.
        hx: initial state as for ``module.forward`` (``(h_0, c_0)`` for an LSTM), or ``None``.
        callback: called with every step's new state, in computation order.

    Returns:
        ``(output, h_n)`` or, for an LSTM, ``(output, (h_n, c_n))``, shaped as the module's own.

    Raises:
        UnsupportedModelError: ``module`` is of another kind, or ``input`` is a PackedSequence.
        ConfigError: ``input`` or ``hx`` has the wrong shape.

    References:
        The update equations of ``torch.nn.RNN``, ``torch.nn.LSTM`` (Hochreiter and
        Schmidhuber, 1997; projections: Sak et al., 2014) and ``torch.nn.GRU`` (Cho et al.,
        2014), with PyTorch's gate order and bias placement.
    """
    mode = getattr(module, "mode", None)
    if not isinstance(module, nn.RNNBase) or mode not in ("RNN_TANH", "RNN_RELU", "LSTM", "GRU"):
        raise UnsupportedModelError(
            f"unrolled_forward needs an nn.RNN, nn.LSTM or nn.GRU, got {type(module).__name__}."
        )
    x, unbatched = _check_input(module, input)
    steps, batch = x.shape[0], x.shape[1]
    h0, c0 = _initial(module, hx, batch, unbatched, x)
    directions = 2 if module.bidirectional else 1
    hidden = module.hidden_size
    layer_input = x
    h_last: list[Tensor] = []
    c_last: list[Tensor] = []
    for layer in range(module.num_layers):
        outputs = []
        for d in range(directions):
            reverse = d == 1
            direction = "reverse" if reverse else "forward"
            w = _weights(module, layer, reverse)
            bias = w["bias_ih"]
            if mode != "GRU" and bias is not None and w["bias_hh"] is not None:
                bias = bias + w["bias_hh"]  # the recurrent bias folds into the input projection
            xw = F.linear(layer_input, w["weight_ih"], bias).unbind(0)  # type: ignore[arg-type]
            hh_t = w["weight_hh"].t().contiguous()  # type: ignore[union-attr]
            index = layer * directions + d
            h = h0[index]
            c = c0[index] if c0 is not None else None
            per_step: list[Tensor] = [h] * steps
            order = range(steps - 1, -1, -1) if reverse else range(steps)
            for t in order:
                h, c = _step_cell(mode, xw[t], h, c, w, hh_t, hidden)
                per_step[t] = h
                if callback is not None:
                    callback(layer, direction, "h", t, h)
                    if c is not None:
                        callback(layer, direction, "c", t, c)
            outputs.append(torch.stack(per_step))
            h_last.append(h)
            if c is not None:
                c_last.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=2)
        if layer < module.num_layers - 1 and module.dropout > 0:
            layer_input = F.dropout(layer_input, module.dropout, training=module.training)
    output = layer_input
    h_n = torch.stack(h_last)
    c_n = torch.stack(c_last) if c_last else None
    if unbatched:
        output = output.squeeze(1)
        h_n = h_n.squeeze(1)
        c_n = c_n.squeeze(1) if c_n is not None else None
    elif module.batch_first:
        output = output.transpose(0, 1)
    if mode == "LSTM":
        return output, (h_n, c_n)
    return output, h_n
