"""Helpers for adaptive-clipper tests: one parameter whose gradient has a chosen global norm."""

from __future__ import annotations

import torch

import gradguard as gg
from gradguard.clip import Clipper


def param_with_norm(norm: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A parameter whose gradient is ``[0.6, 0.8] * norm`` (global norm ``norm``)."""
    p = torch.zeros(2, dtype=dtype, requires_grad=True)
    p.grad = torch.tensor([0.6, 0.8], dtype=torch.float64).mul(norm).to(dtype)
    return p


def run(clipper: Clipper, norms: list[float]) -> list[float]:
    """Feed one gradient per norm; return the coefficients (host floats, for assertions)."""
    out = []
    for norm in norms:
        coef = clipper.clip_(gg.measure([param_with_norm(norm)]))
        out.append(coef.item())
    return out
