"""bptt_profile: exact on a linear RNN, consistent across its three sources of hidden states."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor, nn

from gradguard.analysis import bptt_profile
from gradguard.errors import ConfigError, UnsupportedModelError


class LinearRNN(nn.Module):
    """h_t = W h_{t-1} + U x_t with W = rho * Q, Q orthogonal; returns (h_T, [h_1..h_T])."""

    def __init__(self, rho: float, n: int = 6) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(7)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        self.W = nn.Parameter(rho * q)
        self.U = nn.Parameter(torch.randn(n, 3, generator=generator, dtype=torch.float64))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = x.new_zeros(x.shape[1], self.W.shape[0])
        states = []
        for x_t in x:
            h = h @ self.W.T + x_t @ self.U.T
            states.append(h)
        return h, states


@pytest.mark.parametrize("rho", [0.9, 1.0, 1.1])
def test_linear_rnn_gives_exact_rho_powers(rho: float) -> None:
    model = LinearRNN(rho)
    x = torch.randn(30, 2, 3, dtype=torch.float64)
    target = torch.randn(2, 6, dtype=torch.float64)
    profile = bptt_profile(
        model, x, target, lambda out, y: ((out - y) ** 2).sum(), hidden="returned"
    )
    last = profile.norms[-1]
    assert profile.seq_len == 30
    for t, value in enumerate(profile.norms):
        assert value == pytest.approx(rho ** (29 - t) * last, rel=1e-5)
    assert profile.growth_factor == pytest.approx(rho, rel=1e-5)
    if rho < 1:
        assert profile.horizon == pytest.approx(math.log(0.01) / math.log(rho), rel=1e-4)
    else:
        assert profile.horizon == math.inf
    assert model.W.grad is None  # autograd.grad: the parameters' .grad are untouched


def _loss(out: tuple[Tensor, Tensor] | Tensor, y: Tensor) -> Tensor:
    value = out[0] if isinstance(out, tuple) else out
    return ((value[-1] - y) ** 2).sum()


def test_rnn_module_cell_loop_and_returned_states_agree() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 5).double()
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(2.5)
    cell = nn.RNNCell(3, 5).double()
    cell.load_state_dict({k.replace("_l0", ""): v for k, v in rnn.state_dict().items()})

    class CellLoop(nn.Module):
        def __init__(self, returned: bool) -> None:
            super().__init__()
            self.cell = cell
            self.returned = returned

        def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]] | Tensor:
            h = x.new_zeros(x.shape[1], 5)
            states = []
            for x_t in x:
                h = self.cell(x_t, h)
                states.append(h)
            out = torch.stack(states)
            return (out, states) if self.returned else out

    x = torch.randn(12, 2, 3, dtype=torch.float64)
    y = torch.randn(2, 5, dtype=torch.float64)
    unrolled = bptt_profile(rnn, x, y, _loss)
    hooked = bptt_profile(CellLoop(False), x, y, _loss)
    returned = bptt_profile(CellLoop(True), x, y, _loss, hidden="returned")
    assert unrolled.source == "unrolled" and hooked.source == "cells"
    for other in (hooked, returned):
        assert other.norms == pytest.approx(unrolled.norms, rel=1e-10)
    # At the last step only the direct term remains: the fused kernel's output gradient.
    out, _ = rnn(x)
    (g_out,) = torch.autograd.grad(_loss(out, y), out)
    assert unrolled.norms[-1] == pytest.approx(float(g_out[-1].norm()), rel=1e-12)
    assert float(g_out[0].norm()) == 0.0 < unrolled.norms[0]  # BPTT reaches t=0, the output not
    assert [s.name for s in unrolled.series] == ["l0.forward.h"]


def test_lstm_bidirectional_multilayer_series() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
            self.head = nn.Linear(8, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.encoder(x)[0][:, -1])

    net = Net()
    x = torch.randn(2, 9, 3)
    profile = bptt_profile(net, x, torch.zeros(2, 1), nn.functional.mse_loss)
    names = [s.name for s in profile.series]
    assert "encoder.l1.reverse.c" in names and "encoder.l0.forward.h" in names
    assert len(names) == 2 * 2 * 2
    assert profile.seq_len == 9 and profile.reverse_norms is not None
    forward = [s for s in profile.series if s.direction == "forward"]
    for t in range(9):
        combined = math.sqrt(sum(s.norms[t] ** 2 for s in forward))
        assert profile.norms[t] == pytest.approx(combined)
    assert all(p.grad is None for p in net.parameters())
    data = json.loads(json.dumps(profile.to_dict(), allow_nan=False))
    assert data["kind"] == "bptt_profile" and len(data["series"]) == 8
    assert "encoder.l1.reverse.c" in str(profile)


def test_module_called_on_chunks_continues_the_time_axis() -> None:
    gru = nn.GRU(2, 3)

    class Chunked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = gru

        def forward(self, x: Tensor) -> Tensor:
            _, h = self.gru(x[:4])
            out2, _ = self.gru(x[4:], h)
            return out2[-1]

    profile = bptt_profile(Chunked(), torch.randn(10, 1, 2), None, lambda o, _y: o.sum())
    assert profile.seq_len == 10
    assert all(v > 0 for v in profile.norms)


def test_errors_say_what_to_do() -> None:
    with pytest.raises(UnsupportedModelError, match="hidden='returned'"):
        bptt_profile(nn.Linear(3, 1), torch.randn(4, 3), None, lambda o, _y: o.sum())
    with pytest.raises(UnsupportedModelError, match="hidden='returned'"):
        bptt_profile(lambda x: x, torch.randn(4, 3), None, lambda o, _y: o.sum())
    with pytest.raises(ConfigError, match=r"\(output, states\)"):
        bptt_profile(
            nn.Linear(3, 1), torch.randn(4, 3), None, lambda o, _y: o.sum(), hidden="returned"
        )
    frozen = nn.RNN(3, 4).requires_grad_(False)
    with pytest.raises(ConfigError, match="require grad"):
        bptt_profile(frozen, torch.randn(5, 3), None, lambda o, _y: o[0].sum())
    with pytest.raises(ConfigError, match="scalar"):
        bptt_profile(nn.RNN(3, 4), torch.randn(5, 3), None, lambda o, _y: o[0])
    with pytest.raises(ConfigError):
        bptt_profile(nn.RNN(3, 4), torch.randn(5, 3), None, lambda o, _y: o[0].sum(), tol=2.0)
    with pytest.raises(ConfigError):
        bptt_profile(nn.RNN(3, 4), torch.randn(5, 3), None, lambda o, _y: o[0].sum(), hidden="x")  # type: ignore[arg-type]
