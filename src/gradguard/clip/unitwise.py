"""AGC: clip each unit's gradient relative to the norm of the weights it updates."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard.clip._args import check_eps, check_stats, check_writable
from gradguard.clip._state import check_empty_state
from gradguard.errors import check_names, check_positive
from gradguard.stats import GradStats
from gradguard.stats.measure import accumulation_dtype

__all__ = ["AdaptiveUnitClipper"]


class AdaptiveUnitClipper:
    """Adaptive gradient clipping (AGC): bound each unit's gradient by ``clipping`` × its weights.

    A unit is one output row of a weight (all dimensions but the first: one neuron of a linear
    layer, one filter of a convolution); vectors and scalars (biases, gains) are one unit. Each
    unit's gradient ``G`` is scaled by ``min(1, clipping * max(||W||, eps) / ||G||)`` with
    Frobenius norms, so a step can change a unit's weights by at most a fixed fraction of their
    size. It needs the parameters themselves, which ``stats.params`` holds.

    ``clip_(stats)`` returns, per tensor, the factor by which its gradient norm shrank (1-d,
    aligned with ``stats.norms``). Tensors whose norm is non-finite, whose weights are non-finite,
    and those named in ``exclude`` are left exactly as they were. The loop is per tensor (units
    have different shapes), with no host sync.

    Args:
        clipping: the bound on ``||G|| / ||W||`` per unit, > 0. Brock et al. use 0.01 for large
            batches; larger values clip less.
        eps: floor on the weight norm, so that zero-initialised units can still move; >= 0.
        exclude: names (as in ``stats.names``) of tensors not to clip. Brock et al. leave the
            final classifier layer unclipped.

    Raises:
        ConfigError: a setting is out of range.

    References:
        Brock, De, Smith, Simonyan (2021), High-Performance Large-Scale Image Recognition
        Without Normalization. ICML.
    """

    def __init__(
        self, clipping: float = 0.01, *, eps: float = 1e-3, exclude: Collection[str] = ()
    ) -> None:
        self.clipping = check_positive(
            "clipping", clipping, fix="Brock et al. use 0.01 to 0.16 depending on batch size."
        )
        self.eps = check_eps(eps)
        self.exclude = check_names(
            "exclude", exclude, fix="Use the names in gg.measure(model).names, e.g. ['fc.weight']."
        )

    def __repr__(self) -> str:
        return f"AdaptiveUnitClipper(clipping={self.clipping!r}, eps={self.eps!r})"

    @torch.no_grad()
    def clip_(self, stats: GradStats) -> Tensor:
        """Clip every unit in place; return per tensor the factor by which its norm shrank."""
        stats = check_stats("AdaptiveUnitClipper.clip_", stats)
        if not stats.grads:
            return torch.ones(0, dtype=torch.float32, device=stats.device)
        check_writable(stats.names, stats.grads)
        tensor_finite = torch.isfinite(stats.norms).unbind(0)
        one = torch.ones((), dtype=stats.norms.dtype, device=stats.device)
        factors: list[Tensor] = []
        for name, param, grad, finite in zip(
            stats.names, stats.params, stats.grads, tensor_finite, strict=True
        ):
            if name in self.exclude:
                factors.append(one)
                continue
            grad_units = _unit_norms(grad)
            allowed = _unit_norms(param.detach()).clamp(min=self.eps) * self.clipping
            coef = torch.clamp(allowed / grad_units.clamp(min=1e-6), max=1.0)
            # A NaN weight or gradient gives a NaN coefficient: leave such a tensor alone.
            keep = finite.to(coef.device) & torch.isfinite(coef)
            coef = torch.where(keep, coef, torch.ones_like(coef))
            grad.mul_(coef)
            before = torch.linalg.vector_norm(grad_units)
            after = torch.linalg.vector_norm(coef * grad_units)
            # A non-finite or zero gradient was left as it was: report 1.
            usable = (before > 0) & (before < math.inf)
            factors.append(torch.where(usable, after / before, 1.0).to(one))
        return torch.stack(factors)

    def state_dict(self) -> dict[str, Any]:
        """The empty dict: AGC keeps no state between steps."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accept only ``{}``, what ``state_dict()`` gives."""
        check_empty_state("AdaptiveUnitClipper", state)


def _unit_norms(tensor: Tensor) -> Tensor:
    """Frobenius norm per output unit (keepdim, to broadcast), accumulated as measure() does."""
    dtype = accumulation_dtype(tensor.dtype)
    dims = tuple(range(1, tensor.ndim)) if tensor.ndim > 1 else None
    norms: Tensor = torch.linalg.vector_norm(
        tensor, dim=dims, keepdim=dims is not None, dtype=dtype
    )
    return norms
