"""Initialise a model where its gradients neither explode nor vanish at the start of training.

Recurrent matrices get an orthogonal block per gate: every singular value is 1, so the linear part
of each step preserves the gradient norm exactly (Saxe et al., 2014). Input and feed-forward
weights get Xavier (Glorot and Bengio, 2010) or He (He et al., 2015) scaling, biases 0, and the LSTM
forget gate bias 1 so the cell state is carried over by default (Jozefowicz et al., 2015).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gradguard.errors import ConfigError, ConfigTypeError
from gradguard.stats.recurrent import recurrent_kind

__all__ = ["InitSummary", "init_for_stability"]

_FEEDFORWARD = (
    nn.Linear,
    nn.Bilinear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


@dataclasses.dataclass(frozen=True)
class InitSummary:
    """What :func:`init_for_stability` did: ``(parameter name, scheme)`` per tensor it set."""

    entries: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"kind": "init_summary", "entries": [list(e) for e in self.entries]}

    def __str__(self) -> str:
        return "\n".join(f"{name}: {scheme}" for name, scheme in self.entries)


def _blocks(tensor: Tensor, count: int) -> list[Tensor]:
    rows = tensor.shape[0] // count
    return [tensor[k * rows : (k + 1) * rows] for k in range(count)]


def _feedforward_(tensor: Tensor, scheme: str) -> str:
    if scheme == "xavier":
        nn.init.xavier_uniform_(tensor)
        return "xavier_uniform"
    nn.init.kaiming_normal_(tensor, nonlinearity="relu")
    return "he_normal"


def _recurrent_(tensor: Tensor, scheme: str, name: str) -> str:
    if scheme == "orthogonal":
        nn.init.orthogonal_(tensor)
        return "orthogonal"
    if tensor.shape[0] != tensor.shape[1]:
        raise ConfigError(
            f"recurrent='identity' needs square blocks, but {name} has blocks of shape "
            f"{tuple(tensor.shape)!r} (LSTM proj_size); use recurrent='orthogonal'."
        )
    with torch.no_grad():
        tensor.copy_(torch.eye(tensor.shape[0], dtype=tensor.dtype, device=tensor.device))
    return "identity"


def init_for_stability(
    model: nn.Module,
    *,
    recurrent: Literal["orthogonal", "identity"] = "orthogonal",
    feedforward: Literal["xavier", "he"] = "xavier",
    forget_bias: float = 1.0,
) -> InitSummary:
    """Re-initialise ``model`` in place so that gradients start neither exploding nor vanishing.

    * recurrent ``weight_hh`` of ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (all layers, directions) and of
      RNN cells: each gate block (LSTM 4, GRU 3) orthogonal, so ρ = σ_max = 1 per block; or the
      identity (``recurrent="identity"``, IRNN for ReLU RNNs); the LSTM projection ``weight_hr``
      orthogonal too;
    * input weights ``weight_ih`` (per gate block) and ``nn.Linear``/``nn.Conv*`` weights: Xavier
      uniform (``"xavier"``, for tanh/sigmoid) or He normal (``"he"``, for ReLU);
    * biases 0, except the LSTM forget gate: ``bias_ih`` forget block = ``forget_bias``, so the
      summed forget bias is ``forget_bias``.

    Other modules (normalisation, embeddings) are left alone.

    Args:
        model: the model, changed in place.
        recurrent: ``"orthogonal"`` or ``"identity"``.
        feedforward: ``"xavier"`` or ``"he"``.
        forget_bias: LSTM forget-gate bias (1.0 by default).

    Returns:
        An :class:`InitSummary` listing every tensor set and how.

    Raises:
        ConfigError: an unknown scheme, ``"identity"`` on non-square blocks, or a recurrent weight
            already constrained by :func:`constrain_recurrent_` (initialise first, then constrain).

    References:
        Saxe, McClelland and Ganguli, "Exact solutions to the nonlinear dynamics of learning in deep
        linear neural networks", ICLR 2014; Glorot and Bengio, AISTATS 2010; He et al., "Delving
        deep into rectifiers", ICCV 2015; Le, Jaitly and Hinton, "A simple way to initialize
        recurrent networks of rectified linear units", 2015; Jozefowicz, Zaremba and Sutskever,
        "An empirical exploration of recurrent network architectures", ICML 2015.
    """
    if not isinstance(model, nn.Module):
        raise ConfigTypeError(
            f"model must be an nn.Module, got {type(model).__name__} {model!r:.60}. Pass the "
            "model to re-initialise, before training."
        )
    if recurrent not in ("orthogonal", "identity"):
        raise ConfigError(f"recurrent must be 'orthogonal' or 'identity', got {recurrent!r}.")
    if feedforward not in ("xavier", "he"):
        raise ConfigError(f"feedforward must be 'xavier' or 'he', got {feedforward!r}.")
    for module_name, module in model.named_modules():
        if recurrent_kind(module) is not None and parametrize.is_parametrized(module):
            raise ConfigError(
                f"{module_name or type(module).__name__} has parametrised weights (constrained by "
                "constrain_recurrent_?); call init_for_stability before constraining."
            )
    entries: list[tuple[str, str]] = []
    with torch.no_grad():
        for module_name, module in model.named_modules():
            prefix = f"{module_name}." if module_name else ""
            kind = recurrent_kind(module)
            if kind is not None:
                entries += _init_recurrent(
                    module, prefix, kind, recurrent, feedforward, forget_bias
                )
            elif isinstance(module, _FEEDFORWARD):
                for name, param in module.named_parameters(recurse=False):
                    if name == "weight":
                        entries.append((prefix + name, _feedforward_(param, feedforward)))
                    elif name == "bias":
                        param.zero_()
                        entries.append((prefix + name, "zeros"))
    return InitSummary(tuple(entries))


def _projected_(weight: Tensor, projection: Tensor, gates: int, recurrent: str) -> str:
    """LSTM with proj_size P: the loop h -> W_g -> W_hr closes through P×P matrices W_hr W_g.

    W_hr (P×H) gets orthonormal rows and every block W_g = W_hrᵀ R_g with R_g orthogonal (or the
    identity): then W_hr W_g = R_g, so each loop has ρ = σ_max = 1, and W_g has σ_max = 1.
    """
    nn.init.orthogonal_(projection)
    size = projection.shape[0]
    for block in _blocks(weight, gates):
        rotation = torch.empty(size, size, dtype=weight.dtype, device=weight.device)
        if recurrent == "identity":
            nn.init.eye_(rotation)
        else:
            nn.init.orthogonal_(rotation)
        block.copy_(projection.T @ rotation)
    return f"weight_hr^T @ {recurrent} per gate block"


def _init_recurrent(
    module: nn.Module,
    prefix: str,
    kind: str,
    recurrent: str,
    feedforward: str,
    forget_bias: float,
) -> list[tuple[str, str]]:
    gates = {"LSTM": 4, "GRU": 3}.get(kind, 1)
    entries = []
    params = dict(module.named_parameters(recurse=False))
    for name, param in params.items():
        if name.startswith("weight_hh"):
            projection = params.get(name.replace("weight_hh", "weight_hr"))
            if projection is not None:
                entries.append((prefix + name, _projected_(param, projection, gates, recurrent)))
                continue
            schemes = {_recurrent_(b, recurrent, prefix + name) for b in _blocks(param, gates)}
            entries.append((prefix + name, f"{schemes.pop()} per gate block"))
        elif name.startswith("weight_hr"):
            entries.append((prefix + name, "orthogonal (rows)"))  # set with its weight_hh
        elif name.startswith("weight_ih"):
            schemes = {_feedforward_(block, feedforward) for block in _blocks(param, gates)}
            entries.append((prefix + name, f"{schemes.pop()} per gate block"))
        elif name.startswith("bias"):
            param.zero_()
            if kind == "LSTM" and name.startswith("bias_ih"):
                _blocks(param, 4)[1].fill_(forget_bias)
                entries.append((prefix + name, f"zeros, forget gate {forget_bias:g}"))
            else:
                entries.append((prefix + name, "zeros"))
    return entries
