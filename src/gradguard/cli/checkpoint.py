"""What ``gradguard inspect`` computes: tensors of a checkpoint, their health and spectral radii."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "GATE_NAMES",
    "GateRadius",
    "TensorHealth",
    "flatten_tensors",
    "gate_radii",
    "load_checkpoint",
    "spectral_radius",
    "tensor_health",
]

GATE_NAMES = {1: ("-",), 3: ("r", "z", "n"), 4: ("i", "f", "g", "o")}
"""PyTorch's gate order in ``weight_hh``: GRU (reset, update, new), LSTM (input, forget, cell,
output); a plain RNN has one block."""
_RECURRENT = re.compile(r"weight_hh")


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint safely: ``torch.load(weights_only=True)`` on the CPU, nothing unpickled.

    Raises:
        pickle.UnpicklingError: the file holds Python objects that ``weights_only`` refuses.
        RuntimeError, EOFError, ValueError: the file is not a PyTorch checkpoint.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def flatten_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(dotted name, tensor)`` for every tensor in nested dicts, lists and tuples.

    A plain ``state_dict`` gives its own keys; ``{"model": state_dict, "optimizer": {...}}``
    gives ``model.<key>`` and ``optimizer.state.0.exp_avg`` and so on.
    """
    if isinstance(obj, torch.Tensor):
        yield prefix or "<tensor>", obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from flatten_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from flatten_tensors(value, f"{prefix}.{index}" if prefix else str(index))


@dataclasses.dataclass(frozen=True)
class TensorHealth:
    """Norm and finiteness of one tensor.

    Attributes:
        name: dotted name in the checkpoint.
        shape: its shape.
        dtype: its dtype, as text (``"float32"``).
        numel: number of elements.
        norm: L2 norm (NaN when it holds NaN; ``None`` for non-floating tensors).
        max_abs: largest absolute value (``None`` for non-floating or empty tensors).
        nan: number of NaN elements.
        inf: number of infinite elements.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    norm: float | None
    max_abs: float | None
    nan: int
    inf: int

    @property
    def finite(self) -> bool:
        """``True`` when the tensor holds no NaN and no Inf."""
        return self.nan == 0 and self.inf == 0


def tensor_health(name: str, tensor: torch.Tensor) -> TensorHealth:
    """Measure ``tensor``: L2 norm (in float64), max |x|, and how many NaN and Inf it holds."""
    dense = tensor.to_dense() if tensor.layout != torch.strided else tensor
    dtype = str(tensor.dtype).removeprefix("torch.")
    if not (dense.is_floating_point() or dense.is_complex()):
        return TensorHealth(name, tuple(tensor.shape), dtype, tensor.numel(), None, None, 0, 0)
    values = dense.detach().to(torch.complex128 if dense.is_complex() else torch.float64)
    nan = int(torch.isnan(values).sum())
    inf = int(torch.isinf(values).sum())
    norm = float(torch.linalg.vector_norm(values)) if values.numel() else 0.0
    max_abs = float(values.abs().max()) if values.numel() else None
    return TensorHealth(name, tuple(tensor.shape), dtype, tensor.numel(), norm, max_abs, nan, inf)


def spectral_radius(matrix: torch.Tensor) -> float:
    """Largest eigenvalue modulus of a square matrix (exact, via ``torch.linalg.eigvals``).

    NaN when the matrix holds NaN/Inf. A local helper until ``gradguard.analysis`` provides its
    own ``spectral_radius`` (power iteration for large matrices).

    References:
        Pascanu, Mikolov, Bengio (2013), "On the difficulty of training recurrent neural
        networks", ICML: rho(W_hh) > 1 is the condition under which gradients can explode.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"spectral_radius needs a square matrix, got shape {tuple(matrix.shape)}")
    values = matrix.detach().to(torch.float64)
    if not bool(torch.isfinite(values).all()):
        return math.nan
    return float(torch.linalg.eigvals(values).abs().max())


@dataclasses.dataclass(frozen=True)
class GateRadius:
    """Spectral radius of one gate block of a recurrent weight.

    Attributes:
        name: dotted name of the ``weight_hh*`` tensor.
        gate: gate letter (``"i"``, ``"f"``, ...), ``"-"`` for a plain RNN.
        radius: spectral radius of the block, NaN when it holds NaN/Inf, ``None`` when the
            block is not square (e.g. an LSTM with ``proj_size``).
    """

    name: str
    gate: str
    radius: float | None


def gate_radii(name: str, tensor: torch.Tensor) -> list[GateRadius]:
    """Spectral radius per gate block of a ``weight_hh*`` tensor of shape ``(gates*H, H)``.

    Returns an empty list for tensors whose name does not contain ``weight_hh`` or that are not
    2-D floating matrices.
    """
    if not _RECURRENT.search(name) or tensor.ndim != 2 or not tensor.is_floating_point():
        return []
    rows, cols = tensor.shape
    gates = rows // cols if cols and rows % cols == 0 else 0
    if gates not in GATE_NAMES:
        return [GateRadius(name, "?", None)]
    blocks = tensor.reshape(gates, cols, cols)
    return [
        GateRadius(name, gate, spectral_radius(block))
        for gate, block in zip(GATE_NAMES[gates], blocks, strict=True)
    ]
