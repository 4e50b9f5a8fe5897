"""constrain_recurrent_: LSTM/GRU keep working (PyTorch #39311) and sigma_max stays bounded."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gradguard.analysis import largest_singular_value, recurrent_report
from gradguard.errors import ConfigError, UnsupportedModelError
from gradguard.remedies import constrain_recurrent_

MODULES = [
    lambda: nn.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True),
    lambda: nn.GRU(3, 6, num_layers=2),
    lambda: nn.RNN(3, 6, bidirectional=True),
    lambda: nn.LSTM(3, 6, proj_size=4),
]


BOUND = 0.9 * (1 + 1e-5)  # float32 weights: the bound holds to float32 rounding


def _blow_up(module: nn.Module) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "weight_hh" in name:
                p.mul_(6.0)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("method", ["spectral_norm", "orthogonal"])
@pytest.mark.parametrize("make", MODULES)
def test_shapes_gradients_and_bound_during_training(make: object, method: str) -> None:
    torch.manual_seed(0)
    module = make()  # type: ignore[operator]
    _blow_up(module)
    reference = copy.deepcopy(module)
    names = constrain_recurrent_(module, max_radius=0.9, method=method)  # type: ignore[arg-type]
    assert all("weight_hh" in n for n in names)
    optimizer = torch.optim.SGD(module.parameters(), lr=1.0)
    batch_first = getattr(module, "batch_first", False)
    for _ in range(4):
        x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
        out, state = module(x)
        ref_out, ref_state = reference(x)
        assert out.shape == ref_out.shape
        flat = state if isinstance(state, tuple) else (state,)
        ref_flat = ref_state if isinstance(ref_state, tuple) else (ref_state,)
        assert [t.shape for t in flat] == [t.shape for t in ref_flat]
        loss = out.pow(2).sum() + 10 * flat[0].pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        originals = [p for n, p in module.named_parameters() if n.endswith("original")]
        assert originals and all(p.grad is not None for p in originals)
        optimizer.step()
        report = recurrent_report(module)
        for weight in (b for b in report.blocks if b.shape[0] == b.shape[1] == 6):
            assert weight.sigma_max <= BOUND, weight
        for name in names:
            attr = name.split(".")[-1]
            w = getattr(module, attr)
            gates = w.shape[0] // 6
            for k in range(gates):
                sigma = largest_singular_value(w[k * 6 : (k + 1) * 6].detach())
                assert sigma <= BOUND
                if method == "orthogonal":
                    assert sigma == pytest.approx(0.9, rel=1e-5)


def test_the_fused_kernel_sees_the_constrained_weights() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4, num_layers=2)
    _blow_up(lstm)
    constrain_recurrent_(lstm, max_radius=0.5)
    plain = nn.LSTM(3, 4, num_layers=2)
    with torch.no_grad():
        for name, _ in plain.named_parameters():
            getattr(plain, name).copy_(getattr(lstm, name))
    x = torch.randn(6, 2, 3)
    torch.testing.assert_close(lstm(x)[0], plain(x)[0])


def test_blocks_inside_the_bound_are_left_alone() -> None:
    gru = nn.GRU(3, 8)
    with torch.no_grad():
        gru.weight_hh_l0.mul_(0.1)
    before = gru.weight_hh_l0.detach().clone()
    constrain_recurrent_(gru, max_radius=1.0)
    assert torch.equal(gru.weight_hh_l0, before)


def test_power_iteration_for_large_blocks_converges_to_the_bound() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(3, 40)
    _blow_up(rnn)
    constrain_recurrent_(rnn, max_radius=1.0, exact_max=8)
    for _ in range(20):
        rnn(torch.randn(2, 1, 3))
    assert largest_singular_value(rnn.weight_hh_l0.detach()) == pytest.approx(1.0, rel=1e-3)


def test_cells_and_errors() -> None:
    cell = nn.LSTMCell(3, 4)
    _blow_up(cell)
    assert constrain_recurrent_(cell, 0.7) == ("weight_hh",)
    h, _ = cell(torch.randn(2, 3))
    assert h.shape == (2, 4) and parametrize.is_parametrized(cell, "weight_hh")
    with pytest.raises(ConfigError, match="already parametrised"):
        constrain_recurrent_(cell)
    with pytest.raises(UnsupportedModelError, match="spectral_norm"):
        constrain_recurrent_(nn.Linear(2, 2))
    with pytest.raises(ConfigError):
        constrain_recurrent_(nn.RNN(2, 2), max_radius=0.0)
    with pytest.raises(ConfigError):
        constrain_recurrent_(nn.RNN(2, 2), method="clip")  # type: ignore[arg-type]


def test_each_parametrisation_runs_once_per_call_and_the_cache_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gradguard.remedies.constrain import SpectralBound

    calls: list[int] = []
    forward = SpectralBound.forward

    def counting(self: SpectralBound, weight: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return forward(self, weight)

    monkeypatch.setattr(SpectralBound, "forward", counting)
    lstm = nn.LSTM(3, 4, num_layers=2)
    constrain_recurrent_(lstm)
    calls.clear()
    lstm(torch.randn(5, 2, 3))[0].sum().backward()
    assert len(calls) == 2  # one per constrained weight
    with pytest.raises(RuntimeError):
        lstm(torch.randn(5, 2, 7))  # wrong input size: the fused kernel raises
    calls.clear()
    lstm(torch.randn(5, 2, 3))
    assert len(calls) == 2  # the cache was closed: weights are recomputed on the next call
