"""TruncatedBPTT: no gradient reaches past k2 steps; the seeds' exploding RNN trains stably."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

from gradguard.errors import ConfigError
from gradguard.remedies import TruncatedBPTT, detach_state


def _setup(steps: int) -> tuple[nn.RNNCell, Tensor]:
    torch.manual_seed(0)
    cell = nn.RNNCell(2, 3).double()
    xs = torch.randn(steps, 1, 2, dtype=torch.float64, requires_grad=True)
    return cell, xs


@pytest.mark.parametrize(("k1", "k2"), [(4, 4), (2, 5), (3, 7)])
def test_gradients_beyond_k2_steps_are_zero(k1: int, k2: int) -> None:
    steps = 12
    cell, xs = _setup(steps)

    def step(item: tuple[int, Tensor], h: Tensor) -> tuple[Tensor, Tensor | None]:
        t, x = item
        h = cell(x, h)
        return h, (h.sum() if t == steps - 1 else None)

    result = TruncatedBPTT(k1, k2).run(step, torch.zeros(1, 3, dtype=torch.float64), enumerate(xs))
    assert result.steps == steps and result.backward_steps == (steps - 1,)
    grad = xs.grad
    assert grad is not None
    reach = k2 if steps % k1 == 0 else steps % k1 + (k2 - k1)  # the last window's length
    reach = min(reach, k2)
    for s in range(steps):
        touched = bool(grad[s].abs().sum() > 0)
        assert touched == (s >= steps - reach), (s, k1, k2)


def test_parameter_gradient_equals_the_truncated_reference() -> None:
    steps, k = 10, 4
    cell, xs = _setup(steps)
    xs = xs.detach()

    def step(item: tuple[int, Tensor], h: Tensor) -> tuple[Tensor, Tensor | None]:
        t, x = item
        h = cell(x, h)
        return h, ((h - 1) ** 2).sum() if t == steps - 1 else None

    TruncatedBPTT(2, k).run(step, torch.zeros(1, 3, dtype=torch.float64), enumerate(xs))
    got = [p.grad.clone() for p in cell.parameters()]  # type: ignore[union-attr]
    with torch.no_grad():
        h = torch.zeros(1, 3, dtype=torch.float64)
        for x in xs[: steps - k]:
            h = cell(x, h)
    for x in xs[steps - k :]:
        h = cell(x, h)
    expected = torch.autograd.grad(((h - 1) ** 2).sum(), list(cell.parameters()))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_every_chunk_backpropagates_its_own_losses() -> None:
    cell, xs = _setup(10)
    seen: list[int] = []

    def step(x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        h = cell(x, h)
        return h, h.pow(2).sum()

    result = TruncatedBPTT(4).run(
        step, torch.zeros(1, 3, dtype=torch.float64), xs, on_backward=seen.append
    )
    assert seen == [3, 7, 9] == list(result.backward_steps)  # the last, partial window too
    assert len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)
    assert not result.state.requires_grad


class State(NamedTuple):
    h: Tensor
    c: Tensor


def test_detach_state_handles_nested_states() -> None:
    t = torch.ones(2, requires_grad=True) * 2
    nested = {"a": (t, [t]), "b": State(t, t), "n": 3}
    out = detach_state(nested)
    assert not out["a"][0].requires_grad and not out["a"][1][0].requires_grad
    assert isinstance(out["b"], State) and not out["b"].c.requires_grad
    assert out["n"] == 3


def test_bad_windows() -> None:
    with pytest.raises(ConfigError, match="k1"):
        TruncatedBPTT(0)
    with pytest.raises(ConfigError, match="k2"):
        TruncatedBPTT(5, 3)
    assert repr(TruncatedBPTT(5, 8)) == "TruncatedBPTT(k1=5, k2=8)"


def test_the_seeds_exploding_rnn_trains_stably() -> None:
    torch.manual_seed(0)
    rnn = nn.RNN(10, 50)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(3.0)
    head = nn.Linear(50, 1)
    state = {k: v.clone() for k, v in [*rnn.state_dict().items(), *head.state_dict().items()]}
    params = [*rnn.parameters(), *head.parameters()]

    def run(tbptt: TruncatedBPTT | None) -> list[float]:
        with torch.no_grad():
            for p, v in zip(params, state.values(), strict=True):
                p.copy_(v)
        optimizer = torch.optim.SGD(params, lr=0.01)
        generator = torch.Generator().manual_seed(1)
        norms: list[float] = []

        def update(_t: int) -> None:
            norms.append(float(nn.utils.clip_grad_norm_(params, math.inf)))
            optimizer.step()
            optimizer.zero_grad()

        for _ in range(20):
            x = torch.randn(100, 1, 10, generator=generator)
            y = torch.randn(1, 1, generator=generator)
            if tbptt is None:
                nn.functional.mse_loss(head(rnn(x)[0][-1]), y).backward()
                update(99)
                continue

            def step(
                item: tuple[int, Tensor], h: Tensor, y: Tensor = y
            ) -> tuple[Tensor, Tensor | None]:
                t, x_t = item
                out, h = rnn(x_t[None], h)
                loss = nn.functional.mse_loss(head(out[-1]), y) if t == 99 else None
                return h, loss

            tbptt.run(step, torch.zeros(1, 1, 50), enumerate(x), on_backward=update)
        return norms

    full, truncated = run(None), run(TruncatedBPTT(10))
    assert len(truncated) == 20
    assert all(math.isfinite(n) for n in truncated)
    # The seeds' monitor calls a gradient norm above 10 x its bound of 10 a "high" explosion:
    # full BPTT through 100 steps has them, TBPTT(10) has none, and its steps stay finite.
    assert sum(n > 100 for n in full) >= 2
    assert max(truncated) < 100 and truncated[0] < full[0] / 10
