"""AutoClip: clip to a percentile of the recent gradient norms, kept in a device ring buffer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard.clip._args import check_eps, check_stats
from gradguard.clip._state import TensorState
from gradguard.clip.apply import _apply_global_bound_
from gradguard.errors import ConfigError, check_int, check_real
from gradguard.stats import GradStats

__all__ = ["PercentileClipper"]

_MAX_WINDOW = 10_000_000  # 40 MB of float32 history, and a quantile over it at every step
_FLOAT32_MAX = torch.finfo(torch.float32).max


class PercentileClipper:
    """Clip the global norm to the ``percentile``-th percentile of the recent finite norms.

    Each step the current norm enters a ring of the last ``window`` finite norms (a float32
    device tensor that starts as NaN, so ``torch.nanquantile`` ignores the empty slots), and the
    bound is the percentile of the ring, the current norm included, as in AutoClip. A
    non-finite norm is not written and does not advance the ring, so the bound at the next step
    is exactly what it would have been without it; its gradients are left as they were
    (coefficient 1). No host sync: the slot to write is chosen with ``torch.where``.

    Unlike the reference implementation, history is bounded (``window`` norms, not the whole
    run) so memory and cost stay flat.

    Args:
        percentile: which percentile of recent norms to clip to, in (0, 100]. AutoClip's
            authors recommend 10: most steps are clipped a little.
        window: how many recent finite norms to keep; from 1 to 10**7.
        eps: added to the norm before dividing.

    Raises:
        ConfigError: a setting is out of range.

    References:
        Seetharaman, Wichern, Pardo, Le Roux (2020), AutoClip: Adaptive gradient clipping for
        source separation networks. IEEE MLSP.
    """

    def __init__(self, percentile: float = 10.0, window: int = 1000, *, eps: float = 1e-6) -> None:
        fix = "AutoClip's authors recommend 10; use 50 to clip only steps above the median norm."
        self.percentile = check_real("percentile", percentile, fix=fix)
        if not 0 < self.percentile <= 100:
            raise ConfigError(f"percentile must lie in (0, 100], got {percentile!r}. {fix}")
        self.window = check_int(
            "window",
            window,
            minimum=1,
            maximum=_MAX_WINDOW,
            fix="A few hundred to a few thousand steps is typical.",
        )
        self.eps = check_eps(eps)
        self._state = TensorState(
            "PercentileClipper",
            history=torch.full((self.window,), math.nan, dtype=torch.float32),
            head=torch.zeros((), dtype=torch.int64),
            seen=torch.zeros((), dtype=torch.int64),
        )
        self._slots = torch.arange(self.window)

    def __repr__(self) -> str:
        return f"PercentileClipper(percentile={self.percentile!r}, window={self.window!r})"

    @torch.no_grad()
    def clip_(self, stats: GradStats) -> Tensor:
        """Record the norm if finite, clip to the percentile bound; return the 0-d coefficient."""
        stats = check_stats("PercentileClipper.clip_", stats)
        if not stats.grads:
            return torch.ones((), dtype=torch.float32, device=stats.device)
        state = self._state
        state.follow(stats.device)
        if self._slots.device != stats.device:
            self._slots = self._slots.to(stats.device)
        head, finite = state["head"], stats.finite
        write = (self._slots == head) & finite
        norm = stats.total_norm
        # The history is float32. A float32 norm needs no clamp: only a finite one is written,
        # and GradStats' finite is ``total_norm < inf``. A float64 norm beyond float32's range
        # enters as float32's largest (clamped in place on the converted copy).
        if norm.dtype != torch.float32:
            norm = norm.to(torch.float32).clamp_(max=_FLOAT32_MAX)
        history = torch.where(write, norm, state["history"])
        step = finite.to(torch.int64)
        state.update(history=history, head=(head + step) % self.window, seen=state["seen"] + step)
        bound = torch.nanquantile(history, self.percentile / 100.0)
        return _apply_global_bound_(stats, bound, self.eps)

    def state_dict(self) -> dict[str, Any]:
        """``history`` (the ring of norms, NaN where empty), ``head`` and ``seen`` (tensors)."""
        return self._state.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot from ``state_dict()`` of a clipper with the same ``window``."""
        self._state.load_state_dict(state)
