"""ZClip: clip a global norm whose log is an outlier against EMA statistics of past log-norms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard.clip._args import check_eps, check_stats
from gradguard.clip._state import TensorState
from gradguard.clip.apply import _apply_global_bound_
from gradguard.errors import check_int, check_open_interval, check_positive
from gradguard.stats import GradStats

__all__ = ["ZScoreClipper"]


class ZScoreClipper:
    """Clip spikes of the global norm, judged by the z-score of its log against EMA statistics.

    With ``x = log(norm)``, ``mu`` and ``var`` its running mean and variance:

    * warm-up (the first ``warmup_steps`` finite norms): ``mu``/``var`` are the plain mean and
      variance of the log-norms seen, and only the optional fixed ``max_norm`` clips;
    * then ``z = (x - mu) / (sqrt(var) + eps)``; when ``z > z_threshold`` the norm is clipped to
      ``exp(mu + z_threshold**2 * sigma / z)`` (ZClip's reciprocal rule: the larger the spike, the
      harder the clip), and ``mu``/``var`` are updated by EMA with factor ``alpha`` using the
      *clipped* log-norm, so one spike cannot inflate the statistics. ``max_norm``, if given,
      stays a fixed ceiling on top (as ZClip's ``max_grad_norm``).

    A non-finite (or zero) norm changes nothing: its gradients are left as they were and the
    statistics at the next step are exactly those before it. Everything runs on the device with
    ``torch.where``; no host sync.

    ZClip works on the norm itself; this rule works on its logarithm, which makes it
    scale-free (a spike is a *factor* above the typical norm) and keeps the variance meaningful
    when norms span orders of magnitude.

    Args:
        z_threshold: z-score above which a norm is clipped; > 0. ZClip's default 2.5.
        alpha: EMA smoothing factor in (0, 1); closer to 1 remembers longer. ZClip's 0.97.
        warmup_steps: finite norms to collect before clipping; >= 1. ZClip's 25.
        max_norm: optional fixed bound on the global norm at every step (warm-up included).
        eps: added to the standard deviation and to the norm before dividing.

    Raises:
        ConfigError: a setting is out of range.

    References:
        Kumar, Owen, Roy Chowdhury, Güra (2025), ZClip: Adaptive Spike Mitigation for LLM
        Pre-Training. arXiv:2504.02507.
    """

    def __init__(
        self,
        z_threshold: float = 2.5,
        alpha: float = 0.97,
        warmup_steps: int = 25,
        *,
        max_norm: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        self.z_threshold = check_positive(
            "z_threshold", z_threshold, fix="ZClip uses 2.5; lower clips more often."
        )
        self.alpha = check_open_interval(
            "alpha", alpha, 0.0, 1.0, fix="ZClip uses 0.97; 0.99 smooths over more steps."
        )
        self.warmup_steps = check_int(
            "warmup_steps", warmup_steps, minimum=1, fix="ZClip uses 25 steps."
        )
        self.max_norm = (
            None
            if max_norm is None
            else check_positive("max_norm", max_norm, fix="Or None for no fixed ceiling.")
        )
        self.eps = check_eps(eps)
        self._state = TensorState(
            "ZScoreClipper",
            seen=torch.zeros((), dtype=torch.int64),
            mean=torch.zeros((), dtype=torch.float32),
            var=torch.zeros((), dtype=torch.float32),
        )

    def __repr__(self) -> str:
        return (
            f"ZScoreClipper(z_threshold={self.z_threshold!r}, alpha={self.alpha!r}, "
            f"warmup_steps={self.warmup_steps!r})"
        )

    @torch.no_grad()
    def clip_(self, stats: GradStats) -> Tensor:
        """Update the statistics with a finite norm and clip a spike; return the 0-d coefficient."""
        stats = check_stats("ZScoreClipper.clip_", stats)
        if not stats.grads:
            return torch.ones((), dtype=torch.float32, device=stats.device)
        state = self._state
        state.follow(stats.device)
        seen, mean, var = state["seen"], state["mean"], state["var"]
        norm = stats.total_norm
        valid = stats.finite & (norm > 0)
        # The statistics are float32; the log of even a float64 norm fits in it.
        x = torch.log(torch.where(valid, norm, torch.ones_like(norm))).to(torch.float32)
        warming = seen < self.warmup_steps

        # Warm-up: running mean and (population) variance of the log-norms, Welford's update.
        n = (seen + 1).to(torch.float32)
        delta = x - mean
        warm_mean = mean + delta / n
        warm_var = var + (delta * (x - warm_mean) - var) / n

        # After warm-up: z-score, ZClip's reciprocal clip, EMA update with the clipped value.
        std = torch.sqrt(var)
        z = (x - mean) / (std + self.eps)
        spike = valid & ~warming & (z > self.z_threshold)
        # Where spike is False the division may give inf/NaN; torch.where discards it.
        clipped_x = torch.where(spike, mean + self.z_threshold**2 * std / z, x)
        ema_mean = self.alpha * mean + (1 - self.alpha) * clipped_x
        ema_var = self.alpha * var + (1 - self.alpha) * (clipped_x - ema_mean) ** 2

        state.update(
            seen=seen + valid.to(torch.int64),
            mean=torch.where(valid, torch.where(warming, warm_mean, ema_mean), mean),
            var=torch.where(valid, torch.where(warming, warm_var, ema_var), var),
        )
        ceiling = math.inf if self.max_norm is None else self.max_norm
        bound = torch.where(spike, torch.exp(clipped_x).clamp(max=ceiling), ceiling)
        return _apply_global_bound_(stats, bound, self.eps)

    def state_dict(self) -> dict[str, Any]:
        """``seen`` (finite norms counted), ``mean`` and ``var`` of the log-norm (tensors)."""
        return self._state.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot from ``state_dict()``."""
        self._state.load_state_dict(state)
