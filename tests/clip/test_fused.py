"""fused_clipped_step: folding the clip coefficient and the skip into a fused optimizer step."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.clip import fused_clipped_step, safe_coefficient
from gradguard.errors import ConfigError

_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, fused=True),
}


def _grads(model: nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen) * 5.0
        if step == 2:  # a non-finite step, to be skipped
            p.grad[0] = math.nan


@pytest.mark.parametrize("kind", sorted(_OPTIMIZERS))
def test_folded_step_equals_clip_then_step_and_skips_nonfinite(kind: str) -> None:
    torch.manual_seed(0)
    folded_model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    plain_model = copy.deepcopy(folded_model)
    folded = _OPTIMIZERS[kind](list(folded_model.parameters()))
    plain = _OPTIMIZERS[kind](list(plain_model.parameters()))
    for step in range(5):
        _grads(folded_model, step)
        _grads(plain_model, step)
        stats = gg.measure(folded_model)
        coef = safe_coefficient(1.0, stats.total_norm, stats.finite, 1e-6)
        fused_clipped_step(folded, coef, skip=~stats.finite)
        assert not hasattr(folded, "grad_scale") and not hasattr(folded, "found_inf")
        reference = gg.measure(plain_model)
        if bool(reference.finite):  # the two-pass version, with a host branch
            gg.clip_by_global_norm_(None, 1.0, stats=reference)
            plain.step()
    for a, b in zip(folded_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(folded_model.parameters(), plain_model.parameters(), strict=True):
        if "step" in plain.state[b]:
            assert folded.state[a]["step"].item() == plain.state[b]["step"].item() == 4


def test_rejects_an_optimizer_that_is_not_fused() -> None:
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters())
    with pytest.raises(ConfigError, match="fused=True"):
        fused_clipped_step(opt, torch.ones(()))


def test_rejects_an_optimizer_driven_by_a_grad_scaler() -> None:
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), fused=True)
    opt.grad_scale = torch.ones(())  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="GradScaler"):
        fused_clipped_step(opt, torch.ones(()))


def test_rejects_per_tensor_coefficients() -> None:
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1, fused=True)
    with pytest.raises(ConfigError, match="0-d"):
        fused_clipped_step(opt, torch.ones(2))
