"""Per-layer back-propagated signal and weight gradient: where in depth a gradient grows.

Back-propagation multiplies the signal by each layer's Jacobian on the way from the loss to the
input. In a chain of scalar layers a_k = w·a_{k-1} with L = a_K, ∂L/∂a_k = w^(K-k): w = 2 gives
[16, 8, 4, 2, 1] over five layers, w = 0.5 gives [0.0625, 0.125, 0.25, 0.5, 1].

Convention: the *signal* of layer k is ‖∂L/∂a_k‖, the gradient with respect to the layer's
**output** a_k. The gradient with respect to its **input**, ‖∂L/∂a_{k-1}‖, is reported beside it as
``input_grad_norm`` (for w = 0.5 that gives [0.03125, 0.0625, 0.125, 0.25, 0.5]); the layer's
growth factor is the ratio of the two, ‖∂L/∂input‖ / ‖∂L/∂output‖ (w in the scalar chain).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from gradguard.analysis._common import LossFn, Result, call_model, grad_norm, scalar_loss
from gradguard.analysis._fit import fit_growth
from gradguard.errors import UnsupportedModelError

__all__ = ["DepthProfile", "LayerGradient", "depth_profile"]


@dataclasses.dataclass(frozen=True)
class LayerGradient:
    """Gradient magnitudes at one layer (one call of a leaf module that owns parameters).

    Attributes:
        name: module path; a module called several times gets ``"#2"``, ``"#3"`` ... appended.
        module_type: class name, e.g. ``"Linear"``.
        signal_norm: ‖∂L/∂a_k‖, gradient with respect to the layer's output.
        input_grad_norm: ‖∂L/∂(layer input)‖, or ``None`` when the input is not a floating tensor.
        weight_grad_norm: ‖∂L/∂θ_k‖ over the parameters the module owns (weight and bias), summed
            over all its calls.
        growth: ``input_grad_norm / signal_norm``, how much the layer amplifies the signal on the
            way back (``None`` without an input gradient, ``inf`` when the signal is 0).
    """

    name: str
    module_type: str
    signal_norm: float
    input_grad_norm: float | None
    weight_grad_norm: float
    growth: float | None


@dataclasses.dataclass(frozen=True)
class DepthProfile(Result):
    """Result of :func:`depth_profile`, layers from input to output.

    Attributes:
        layers: per-layer gradients, in forward call order.
        growth_factor: geometric mean per-layer growth fitted to the signal norms against depth
            from the output (> 1: the gradient grows toward the input).
        loss: the loss value.
    """

    kind = "depth_profile"

    layers: tuple[LayerGradient, ...]
    growth_factor: float
    loss: float

    @property
    def signal(self) -> tuple[float, ...]:
        """‖∂L/∂a_k‖ per layer, input to output."""
        return tuple(layer.signal_norm for layer in self.layers)

    @property
    def input_signal(self) -> tuple[float | None, ...]:
        """‖∂L/∂(input of layer k)‖ per layer, input to output."""
        return tuple(layer.input_grad_norm for layer in self.layers)

    @property
    def weight_grads(self) -> tuple[float, ...]:
        """‖∂L/∂θ_k‖ per layer, input to output."""
        return tuple(layer.weight_grad_norm for layer in self.layers)

    @property
    def amplification(self) -> float:
        """Signal at the first layer over signal at the last one."""
        last = self.layers[-1].signal_norm
        return self.layers[0].signal_norm / last if last > 0 else math.inf

    def __str__(self) -> str:
        lines = [
            f"Depth profile: {len(self.layers)} layers, per-layer growth "
            f"{self.growth_factor:.4g}, first/last signal {self.amplification:.3g}",
            "  layer                          type            dL/da_k  dL/dinput      dL/dW"
            "   growth",
        ]
        for layer in self.layers:
            inp = "-" if layer.input_grad_norm is None else f"{layer.input_grad_norm:.4g}"
            growth = "-" if layer.growth is None else f"{layer.growth:.4g}"
            lines.append(
                f"  {layer.name:<30.30} {layer.module_type:<12.12} {layer.signal_norm:10.4g} "
                f"{inp:>10} {layer.weight_grad_norm:10.4g} {growth:>8}"
            )
        return "\n".join(lines)


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


@dataclasses.dataclass
class _Call:
    name: str
    module: nn.Module
    output: Tensor | None = None
    input: Tensor | None = None


def depth_profile(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    loss_fn: LossFn,
    *,
    include: Callable[[str, nn.Module], bool] | None = None,
) -> DepthProfile:
    """Per layer: ‖∂L/∂a_k‖ (output), ‖∂L/∂input‖, ‖∂L/∂θ_k‖ and the layer's growth factor.

    A layer is a call of a leaf module that owns parameters (``nn.Linear``, ``nn.Conv2d``,
    ``nn.LayerNorm``, ``nn.LSTM`` ...), observed by forward hooks during one
    ``loss_fn(model(inputs), targets)``; gradients come from ``torch.autograd.grad``, so the
    parameters' ``.grad`` are left alone. For a module whose input is a floating tensor that
    needs no grad (the first layer), a pre-hook makes it a leaf that requires grad (same values).

    Args:
        model: any ``nn.Module``.
        inputs: the model's input; a tuple is unpacked as positional arguments.
        targets: passed to ``loss_fn`` as its second argument.
        loss_fn: ``loss_fn(output, targets)`` returning a scalar tensor.
        include: optional filter ``include(name, module)`` selecting which leaf modules count.

    Returns:
        A :class:`DepthProfile`. Scalar chain x = 1, a_k = w·a_{k-1}, L = a_5: w = 2 gives signal
        [16, 8, 4, 2, 1] and weight gradients all 16; w = 1 all ones.

    Raises:
        UnsupportedModelError: ``model`` is not an ``nn.Module`` or no parameterised leaf module
            ran during the forward pass.
        ConfigError: the loss is not a scalar tensor.
        NonFiniteError: the loss is NaN or infinite.

    References:
        Glorot and Bengio, "Understanding the difficulty of training deep feedforward neural
        networks", AISTATS 2010 (per-layer back-propagated gradient statistics).
    """
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"depth_profile needs an nn.Module to hook its layers, got {type(model).__name__}."
        )
    leaves = [
        (name, module)
        for name, module in model.named_modules()
        if not any(True for _ in module.children())
        and any(True for _ in module.parameters(recurse=False))
        and (include is None or include(name, module))
    ]
    calls: list[_Call] = []
    counts: dict[int, int] = {}
    with torch.enable_grad(), ExitStack() as stack:
        for name, module in leaves:

            def pre_hook(mod: nn.Module, args: tuple[Any, ...], _name: str = name) -> Any:
                seen = counts.get(id(mod), 0) + 1
                counts[id(mod)] = seen
                label = _name if seen == 1 else f"{_name}#{seen}"
                call = _Call(label or type(mod).__name__, mod)
                calls.append(call)
                first = _first_tensor(args)
                if first is None or not first.is_floating_point():
                    return None
                if not first.requires_grad:
                    leaf = first.detach().requires_grad_(True)
                    call.input = leaf
                    return tuple(leaf if a is first else a for a in args)
                call.input = first
                return None

            def post_hook(mod: nn.Module, _args: Any, output: Any) -> None:
                for call in reversed(calls):
                    if call.module is mod and call.output is None:
                        call.output = _first_tensor(output)
                        break

            stack.enter_context(module.register_forward_pre_hook(pre_hook))
            stack.enter_context(module.register_forward_hook(post_hook))
        output = call_model(model, inputs)
        loss = scalar_loss(loss_fn(output, targets))
        calls = [c for c in calls if c.output is not None and c.output.requires_grad]
        if not calls:
            raise UnsupportedModelError(
                f"no leaf module with parameters of {type(model).__name__} produced a tensor that "
                "requires grad during forward; depth_profile needs trainable layers such as "
                "nn.Linear or nn.Conv2d."
            )
        modules: list[nn.Module] = []
        for call in calls:
            if all(call.module is not m for m in modules):
                modules.append(call.module)
        params = [p for m in modules for p in m.parameters(recurse=False) if p.requires_grad]
        outs = [c.output for c in calls]
        ins = [c.input for c in calls if c.input is not None and c.input.requires_grad]
        wanted: list[Tensor] = [*outs, *ins, *params]  # type: ignore[list-item]
        grads = torch.autograd.grad(loss, wanted, allow_unused=True)
    by_id: dict[int, Tensor | None] = {id(t): g for t, g in zip(wanted, grads, strict=True)}
    zero = loss.new_zeros((), dtype=torch.float64)

    def norm(tensor: Tensor | None) -> Tensor:
        grad = by_id.get(id(tensor)) if tensor is not None else None
        return grad_norm(grad) if grad is not None else zero

    def group_norm(module: nn.Module) -> Tensor:
        parts = [norm(p) for p in module.parameters(recurse=False) if p.requires_grad]
        return torch.linalg.vector_norm(torch.stack(parts)) if parts else zero

    has_input = [c.input is not None and c.input.requires_grad for c in calls]
    stacked = torch.stack(
        [norm(c.output) for c in calls]
        + [norm(c.input) for c in calls]
        + [group_norm(c.module) for c in calls]
    )
    # HOST SYNC: one transfer of all per-layer norms (analysis, off the hot path).
    values = stacked.tolist()
    k = len(calls)
    layers = []
    for i, call in enumerate(calls):
        signal = values[i]
        input_norm = values[k + i] if has_input[i] else None
        growth = None
        if input_norm is not None:
            growth = input_norm / signal if signal > 0 else math.inf
        layers.append(
            LayerGradient(
                name=call.name,
                module_type=type(call.module).__name__,
                signal_norm=signal,
                input_grad_norm=input_norm,
                weight_grad_norm=values[2 * k + i],
                growth=growth,
            )
        )
    depth_from_output = list(range(k - 1, -1, -1))
    fitted = fit_growth([layer.signal_norm for layer in layers], depth_from_output)
    if k == 1:
        fitted = layers[0].growth if layers[0].growth is not None else math.nan
    return DepthProfile(layers=tuple(layers), growth_factor=fitted, loss=float(loss.detach()))
