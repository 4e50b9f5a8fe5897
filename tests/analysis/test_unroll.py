"""The unrolled forward computes exactly what the fused RNN/LSTM/GRU kernels compute."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from gradguard.analysis import unrolled_forward
from gradguard.errors import ConfigError, UnsupportedModelError


def _flat(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    return [t for item in value for t in _flat(item)]


def _native(module: nn.Module, *args: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN notes it cannot run LSTM projections
        return module(*args)


CASES = [
    ("rnn tanh 2 layers bidirectional", lambda: nn.RNN(3, 5, num_layers=2, bidirectional=True)),
    ("rnn relu batch_first", lambda: nn.RNN(3, 5, nonlinearity="relu", batch_first=True)),
    ("lstm 2 layers batch_first", lambda: nn.LSTM(3, 5, num_layers=2, batch_first=True)),
    ("lstm proj bidirectional", lambda: nn.LSTM(3, 5, proj_size=2, bidirectional=True)),
    ("gru bidirectional batch_first", lambda: nn.GRU(3, 5, bidirectional=True, batch_first=True)),
    ("gru no bias, dropout in eval", lambda: nn.GRU(3, 5, num_layers=2, bias=False, dropout=0.5)),
]


@pytest.mark.parametrize(("name", "make"), CASES)
def test_outputs_and_parameter_gradients_match_the_fused_kernel(name: str, make: Any) -> None:
    module = make().double().eval()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    native = _flat(_native(module, x))
    states: list[tuple[int, str, str, int]] = []
    unrolled = _flat(
        unrolled_forward(
            module, x, callback=lambda layer, d, s, t, _h: states.append((layer, d, s, t))
        )
    )
    assert len(native) == len(unrolled)
    for a, b in zip(native, unrolled, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    params = list(module.parameters())
    grads_native = torch.autograd.grad(sum(t.sum() for t in native), params)
    grads_unrolled = torch.autograd.grad(sum(t.sum() for t in unrolled), params)
    for a, b in zip(grads_native, grads_unrolled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    steps = 6 if module.batch_first else 4
    per_state = 2 if isinstance(module, nn.LSTM) else 1
    directions = 2 if module.bidirectional else 1
    assert len(states) == module.num_layers * directions * steps * per_state


def test_unbatched_input_and_given_initial_state() -> None:
    lstm = nn.LSTM(3, 4, num_layers=2).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    hx = (torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64))
    for a, b in zip(_flat(lstm(x, hx)), _flat(unrolled_forward(lstm, x, hx)), strict=True):
        torch.testing.assert_close(a, b)
    gru = nn.GRU(3, 4).double()
    h0 = torch.randn(1, 2, 4, dtype=torch.float64)
    xb = torch.randn(5, 2, 3, dtype=torch.float64)
    for a, b in zip(_flat(gru(xb, h0)), _flat(unrolled_forward(gru, xb, h0)), strict=True):
        torch.testing.assert_close(a, b)


def test_errors() -> None:
    rnn = nn.RNN(3, 4)
    packed = nn.utils.rnn.pack_sequence([torch.randn(3, 3), torch.randn(2, 3)])
    with pytest.raises(UnsupportedModelError, match="PackedSequence"):
        unrolled_forward(rnn, packed)
    with pytest.raises(ConfigError, match="3 input features"):
        unrolled_forward(rnn, torch.randn(5, 2, 4))
    with pytest.raises(ConfigError, match="expected"):
        unrolled_forward(rnn, torch.randn(5, 2, 3), torch.zeros(2, 2, 4))
    with pytest.raises(ConfigError, match="empty"):
        unrolled_forward(rnn, torch.randn(0, 2, 3))
    with pytest.raises(UnsupportedModelError):
        unrolled_forward(nn.Linear(3, 3), torch.randn(5, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tuple"):
        unrolled_forward(nn.LSTM(3, 4), torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
