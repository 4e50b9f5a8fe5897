"""Measure gradients on the device: per-tensor norms, the global norm and a finiteness flag.

This is the hot path. It never synchronises with the host: gradients are grouped by
(device, dtype), each group is reduced by one ``torch._foreach_norm`` kernel, and the global norm
comes from the stacked per-tensor norms. Half-precision gradients are reduced in float32.

A gradient that holds NaN/Inf, or whose finite values are large enough that its float32 norm
overflows, gives a non-finite norm. Both count as an explosion, and cost no extra pass.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from gradguard.errors import ConfigError, NoGradientsError, UnsupportedGradientError
from gradguard.stats.params import Parameters, named_tensors

__all__ = ["GradStats", "check_norm_type", "measure"]

_REDUCED_IN_FLOAT32 = (torch.float16, torch.bfloat16, torch.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class GradStats:
    """Gradient statistics of one step, as device tensors (reading them is a host sync).

    Attributes:
        total_norm: 0-d float32, the global ``norm_type``-norm over all gradients.
        norms: 1-d float32, one norm per tensor that has a gradient, aligned with ``names``.
        finite: 0-d bool, ``False`` when any gradient is NaN/Inf or a norm overflowed.
        names: names of the measured tensors. They follow the order of the parameters given,
            grouped by (device, dtype) when gradients live on several devices or dtypes.
        norm_type: the ``p`` of the p-norm (``math.inf`` for the max-norm).
        grads: the measured gradient tensors, aligned with ``names``; clipping reuses them.
        params: the parameters owning ``grads``, aligned with ``names``.
    """

    total_norm: Tensor
    norms: Tensor
    finite: Tensor
    names: tuple[str, ...]
    norm_type: float
    grads: tuple[Tensor, ...]
    params: tuple[Tensor, ...]

    @property
    def device(self) -> torch.device:
        """Device holding ``total_norm`` and ``norms`` (that of the first gradient)."""
        return self.total_norm.device

    def groups(self) -> list[list[Tensor]]:
        """``grads`` split into lists that share device and dtype, for foreach kernels."""
        grouped = _group_tensors_by_device_and_dtype([list(self.grads)])
        return [tensors[0] for tensors, _ in grouped.values()]  # type: ignore[misc]


def check_norm_type(norm_type: float | str) -> float:
    """Return ``norm_type`` as a float p > 0 (``inf`` allowed), or raise :class:`ConfigError`."""
    if isinstance(norm_type, str) and norm_type.lower() in ("inf", "max"):
        return math.inf
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        p = math.nan
    if not p > 0:
        raise ConfigError(
            f"norm_type must be a number > 0 or 'inf', got {norm_type!r}. Use 2.0 for the "
            "Euclidean norm (the usual choice), 1.0, or 'inf' for the largest absolute value."
        )
    return p


def measure(parameters: Parameters, norm_type: float | str = 2.0) -> GradStats:
    """Measure the gradients of ``parameters`` without a host synchronisation.

    Args:
        parameters: an ``nn.Module``, a tensor, or an iterable of tensors or ``(name, tensor)``
            pairs. Tensors without a gradient are skipped.
        norm_type: p of the p-norm; ``inf`` (or ``"inf"``) for the largest absolute value.

    Returns:
        A :class:`GradStats` of device tensors. An empty parameter list gives a zero norm.

    Raises:
        EmptyParametersError: ``parameters`` is an iterator that was already consumed.
        NoGradientsError: tensors were given but none has a gradient (call ``backward`` first).
        ConfigError: ``norm_type`` is not a number > 0.
    """
    p = check_norm_type(norm_type)
    named = named_tensors(parameters)
    with_grad = [(name, t) for name, t in named if t.grad is not None]
    if not with_grad:
        if named:
            shown = ", ".join(name for name, _ in named[:3]) + (", ..." if len(named) > 3 else "")
            raise NoGradientsError(
                f"none of the {len(named)} tensors given ({shown}) "
                "has a gradient. Call loss.backward() before measuring, and check that the "
                "parameters require grad."
            )
        zero = torch.zeros((), dtype=torch.float32)
        return GradStats(zero, torch.zeros(0), torch.ones((), dtype=torch.bool), (), p, (), ())
    names = [name for name, _ in with_grad]
    params = [t for _, t in with_grad]
    grads = [_dense_grad(name, t) for name, t in with_grad]

    grouped = _group_tensors_by_device_and_dtype([grads], with_indices=True)  # type: ignore[list-item]
    first_device = grads[0].device
    order: list[int] = []
    group_norms: list[Tensor] = []
    for (_device, dtype), ([group], indices) in grouped.items():
        accumulate = torch.float32 if dtype in _REDUCED_IN_FLOAT32 else None
        norms = torch._foreach_norm(group, p, dtype=accumulate)  # type: ignore[arg-type]
        # Async device-to-device copy when gradients live on several devices; no host sync.
        group_norms.append(torch.stack(norms).to(first_device))
        order.extend(indices)
    stacked = group_norms[0] if len(group_norms) == 1 else torch.cat(group_norms)
    total = torch.linalg.vector_norm(stacked, p).to(torch.float32)
    if order != list(range(len(order))):
        names = [names[i] for i in order]
        params = [params[i] for i in order]
        grads = [grads[i] for i in order]
    return GradStats(
        total_norm=total,
        norms=stacked.to(torch.float32),
        finite=torch.isfinite(total),
        names=tuple(names),
        norm_type=p,
        grads=tuple(grads),
        params=tuple(params),
    )


def _dense_grad(name: str, tensor: Tensor) -> Tensor:
    grad = tensor.grad
    if grad is None:  # pragma: no cover - filtered by the caller
        raise NoGradientsError(f"{name} has no gradient")
    if grad.layout == torch.strided:
        return grad
    raise UnsupportedGradientError(
        f"the gradient of {name!r} has layout {grad.layout}; gradguard measures and clips dense "
        "(strided) gradients only. Use nn.Embedding(sparse=False), or convert with "
        "grad.to_dense() before measuring."
    )
