"""Turn one step's device measurements into an :class:`Observation`: the ONE host transfer per step.

Everything the detectors need (global norm, finite flag, loss, parameter norm, the top-k
per-tensor norms and their indices, optionally every per-tensor norm), and the Guard's clipping
coefficient when a clipper object ran, is packed into one device tensor and copied to the host
once. Nothing else in a monitored step reads a device value.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradguard.errors import ConfigError, ConfigTypeError, check_int
from gradguard.records import Observation
from gradguard.stats.measure import GradStats, check_norm_type, norms_in_groups
from gradguard.stats.params import Parameters, local_tensor, named_tensors

__all__ = ["observe", "param_norm"]

_PLAIN = {Tensor, torch.nn.Parameter}


def observe(
    stats: GradStats,
    loss: Tensor | float | None,
    step: int,
    *,
    top_k: int = 5,
    param_norm: Tensor | None = None,
    want_tensor_norms: bool = False,
    clip_coef: Tensor | float | None = None,
) -> Observation:
    """Copy what one step's detectors need to the host in a single transfer.

    Args:
        stats: the step's gradient measurement (device tensors), from :func:`gradguard.measure`.
        loss: the step's loss as a 0-d (or one-element) tensor on any device, a Python number,
            or ``None``. A tensor is detached; it is not kept.
        step: optimizer step index written into the observation.
        top_k: how many of the largest per-tensor norms to transfer, with their names (>= 0).
        param_norm: a 0-d device tensor from :func:`param_norm`, or ``None`` when not measured
            this step.
        clip_coef: the step's clipping coefficient as a one-element device tensor (from
            :func:`gradguard.clip.step_coefficient`), packed into the same transfer; a Python
            number is taken as is; ``None`` when no clipper ran. It lands in
            ``Observation.clip_coef``.
        want_tensor_norms: also transfer every per-tensor norm (for detectors that keep a
            baseline per tensor). It is still one copy; only its size grows.

    Returns:
        An :class:`Observation` of host floats.

    Raises:
        ConfigError: ``top_k`` is negative, or ``loss`` or ``clip_coef`` is not a single number.
    """
    check_int("top_k", top_k, minimum=0, fix="The default is 5.")
    device = stats.total_norm.device
    # float64 keeps a float64 loss and tensor indices exact; MPS has no float64.
    dtype = torch.float32 if device.type == "mps" else torch.float64
    host_loss: float | None = None
    # The first part in ``dtype``: cat promotes the others to it (exactly, as .to would), one
    # cast where a cast per part cost a kernel each.
    parts = [stats.total_norm.reshape(1).to(dtype), stats.finite.reshape(1)]
    if isinstance(loss, Tensor):
        if loss.is_complex():
            raise ConfigTypeError(
                f"loss must be a real number, got a complex tensor ({loss.dtype}). Pass the real "
                "scalar you called backward() on (loss.real or loss.abs() if that is your loss)."
            )
        if loss.numel() != 1:
            raise ConfigError(
                f"loss must be a single number, got a tensor of shape {tuple(loss.shape)}. "
                "Reduce it first (loss.mean()) or pass the scalar you called backward() on."
            )
        parts.append(loss.detach().reshape(1).to(device))
    elif loss is not None:
        host_loss = _host_number(loss, "loss")
    if param_norm is not None:
        parts.append(param_norm.detach().reshape(1).to(device))
    host_coef: float | None = None
    if isinstance(clip_coef, Tensor):
        if clip_coef.numel() != 1:
            raise ConfigError(
                f"clip_coef must be a single number, got a tensor of shape "
                f"{tuple(clip_coef.shape)}. Reduce a clipper's coefficients to one with "
                "gradguard.clip.step_coefficient(stats, coef) first."
            )
        parts.append(clip_coef.detach().reshape(1).to(device))
    elif clip_coef is not None:
        host_coef = _host_number(clip_coef, "clip_coef")
    count = stats.norms.numel()
    k = min(top_k, count)
    if k:
        top_values, top_indices = torch.topk(stats.norms, k)
        parts += [top_values, top_indices]
    if want_tensor_norms:
        parts.append(stats.norms)
    packed = torch.cat(parts)
    values: list[float] = packed.tolist()  # HOST SYNC: the one transfer of this step.

    total_norm, finite = values[0], values[1] != 0.0
    i = 2
    if isinstance(loss, Tensor):
        host_loss, i = values[i], i + 1
    host_param_norm: float | None = None
    if param_norm is not None:
        host_param_norm, i = values[i], i + 1
    if isinstance(clip_coef, Tensor):
        host_coef, i = values[i], i + 1
    names = stats.names
    top = tuple(
        (names[int(index)], value)
        for value, index in zip(values[i : i + k], values[i + k : i + 2 * k], strict=True)
    )
    i += 2 * k
    tensor_norms = (
        tuple(zip(names, values[i : i + count], strict=True)) if want_tensor_norms else None
    )
    return Observation(
        step=step,
        loss=host_loss,
        total_norm=total_norm,
        finite=finite and math.isfinite(total_norm),
        top=top,
        num_tensors=count,
        param_norm=host_param_norm,
        tensor_norms=tensor_norms,
        clip_coef=host_coef,
    )


def param_norm(parameters: Parameters, norm_type: float | str = 2.0) -> Tensor:
    """Measure the global norm of the parameters themselves on the device, without a host sync.

    ``DTensor`` parameters (FSDP2) are measured on their local shards; a :class:`Monitor`
    reduces the result across ranks.

    Cost tier: one fused ``torch._foreach_norm`` pass over the weights per (device, dtype) group,
    about as much as measuring the gradients, so detectors that want it ask for it every N steps.

    Args:
        parameters: an ``nn.Module``, a tensor, or an iterable of tensors or ``(name, tensor)``.
        norm_type: p of the p-norm; ``inf`` for the largest absolute value.

    Returns:
        A 0-d float32 tensor on the device of the first parameter (0 for no parameters).

    Raises:
        ConfigError: ``norm_type`` is not a number > 0.
    """
    p = check_norm_type(norm_type)
    _, tensors = named_tensors(parameters).columns()
    if not tensors:
        return torch.zeros((), dtype=torch.float32)
    if not set(map(type, tensors)) <= _PLAIN:  # a DTensor among them: measure its local shard
        tensors = tuple(local_tensor(t) for t in tensors)
    with torch.no_grad():
        stacked, _, _ = norms_in_groups(tensors, p)
        total: Tensor = torch.linalg.vector_norm(stacked, p).to(torch.float32)
    return total


def _host_number(value: object, name: str) -> float:
    """A Python (or NumPy) real number as a float; NaN and Inf are kept, they are observations."""
    if isinstance(value, (bool, str, bytes, complex)):
        raise ConfigTypeError(
            f"{name} must be a tensor, a number or None, got {type(value).__name__} {value!r:.80}."
        )
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigTypeError(
            f"{name} must be a tensor, a number or None, got {type(value).__name__} {value!r:.80}."
        ) from None
