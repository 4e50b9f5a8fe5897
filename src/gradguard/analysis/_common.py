"""Helpers shared by the analysis modules: result base class, argument checks, running a model."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias

import torch
from torch import Tensor

from gradguard.errors import ConfigError, NonFiniteError, check_int
from gradguard.records import to_json_dict

__all__ = [
    "LossFn",
    "Progress",
    "Result",
    "call_model",
    "check_int",
    "check_matrix",
    "grad_norm",
    "scalar_loss",
]

Progress: TypeAlias = Callable[[int, int], None]
"""Progress callback ``progress(done, total)`` for long scans (the CLI passes a progress bar)."""

LossFn: TypeAlias = Callable[[Any, Any], Tensor]
"""``loss_fn(model_output, targets) -> scalar tensor``."""


class Result:
    """Base of the analysis results: frozen dataclasses that turn into JSON-friendly dicts.

    ``to_dict()`` adds a ``"kind"`` key naming the analysis, so that a consumer reading JSON back
    (the report, :func:`gradguard.remedies.suggest`) knows what it holds. Non-finite floats are
    written as the strings ``"inf"``, ``"-inf"`` and ``"nan"``.
    """

    kind: ClassVar[str] = "result"

    def to_dict(self) -> dict[str, Any]:
        """The result as a dict of JSON-safe values, with ``"kind"`` first."""
        return {"kind": self.kind, **to_json_dict(self)}


def check_matrix(name: str, matrix: object, *, square: bool = True) -> Tensor:
    """Return ``matrix`` as a floating 2-D tensor (square if asked), else raise ConfigError."""
    if not isinstance(matrix, Tensor):
        try:
            matrix = torch.as_tensor(matrix)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(
                f"{name} must be a 2-D tensor (or array), got {type(matrix).__name__}."
            ) from None
    if matrix.ndim != 2 or (square and matrix.shape[0] != matrix.shape[1]):
        want = "a square 2-D matrix" if square else "a 2-D matrix"
        raise ConfigError(
            f"{name} must be {want}, got shape {tuple(matrix.shape)!r}. Pass one recurrent "
            "matrix, e.g. rnn.weight_hh_l0 (split LSTM/GRU weights into their gate blocks)."
        )
    if not (matrix.is_floating_point() or matrix.is_complex()):
        matrix = matrix.to(torch.get_default_dtype())
    return matrix.detach()


def call_model(model: Callable[..., Any], inputs: Any) -> Any:
    """``model(*inputs)`` when ``inputs`` is a tuple, else ``model(inputs)``."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def scalar_loss(loss: object, *, allow_nonfinite: bool = False) -> Tensor:
    """Check that ``loss_fn`` returned a scalar tensor (finite unless allowed) and return it."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ConfigError(
            f"loss_fn must return a scalar tensor, got {shape!r}. Reduce it, e.g. "
            "loss_fn=lambda out, y: nn.functional.mse_loss(out, y) (reduction='mean')."
        )
    loss = loss.reshape(())
    # HOST SYNC: analysis is off the hot path; one read of the loss per evaluation.
    if not allow_nonfinite and not math.isfinite(float(loss.detach())):
        raise NonFiniteError(
            f"the loss is {float(loss.detach())!r} at the current weights, so its gradients are "
            "meaningless. Analyse a checkpoint from before the divergence, or lower the input "
            "scale."
        )
    return loss


def grad_norm(grad: Tensor) -> Tensor:
    """2-norm of ``grad`` as a 0-d float64 tensor, reduced in at least float32 precision."""
    precision = torch.promote_types(grad.dtype, torch.float32)
    norm: Tensor = torch.linalg.vector_norm(grad, dtype=precision)
    return norm.to(torch.float64)
