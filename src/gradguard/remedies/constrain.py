"""Keep recurrent matrices from growing past a spectral bound for the whole of training.

A parametrisation (``torch.nn.utils.parametrize``) recomputes ``weight_hh`` from an unconstrained
tensor at every forward pass, per gate block:

* ``"spectral_norm"``: W_g ← W_g · min(1, r / σ_max(W_g)), so σ_max(W_g) <= r (and ρ <= σ_max <= r)
  while blocks already inside the bound are left as they are (Miyato et al., 2018, with a clamp);
* ``"orthogonal"``: W_g = r · B_g · exp(A_g - A_gᵀ) with B_g the orthogonal polar factor of the
  block at registration: every singular value is exactly r (Lezcano-Casado and Martínez-Rubio,
  2019).

``nn.RNN``/``nn.LSTM``/``nn.GRU`` run from a cached list of their weights (``_flat_weights``), which
a parametrisation does not update (PyTorch issue #39311); a forward pre-hook refreshes that list
from the parametrised attributes before every call (evaluating each parametrisation once per
call), so the fused kernels see the constrained weights and gradients reach the unconstrained
ones. Tested on CPU; on CUDA the weights are not one contiguous cuDNN buffer, which cuDNN accepts
with a warning about speed.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from gradguard.errors import ConfigError, UnsupportedModelError, check_positive
from gradguard.stats.recurrent import GATES, recurrent_weights

__all__ = ["constrain_recurrent_"]


class SpectralBound(nn.Module):
    """Parametrisation scaling each gate block down to σ_max <= ``max_radius``.

    σ_max is exact (``torch.linalg.matrix_norm(ord=2)``, batched over blocks) when the smaller
    block side is <= ``exact_max``; larger blocks use power iteration warm-started from the last
    call (``n_power_iterations`` per training-mode forward), like ``torch.nn.utils.spectral_norm``,
    which may underestimate σ_max slightly until it has converged.
    """

    u: Tensor
    v: Tensor

    def __init__(
        self,
        gates: int,
        rows: int,
        cols: int,
        max_radius: float,
        *,
        exact_max: int = 256,
        n_power_iterations: int = 2,
    ) -> None:
        super().__init__()
        self.gates = gates
        self.max_radius = max_radius
        self.exact = min(rows, cols) <= exact_max
        self.n_power_iterations = n_power_iterations
        u = nn.functional.normalize(torch.randn(gates, rows), dim=1)
        v = nn.functional.normalize(torch.randn(gates, cols), dim=1)
        self.register_buffer("u", u)
        self.register_buffer("v", v)

    def _sigma(self, blocks: Tensor) -> Tensor:
        if self.exact:
            exact: Tensor = torch.linalg.matrix_norm(blocks, ord=2)
            return exact
        if self.training:
            with torch.no_grad():
                u, v = self.u.to(blocks.dtype), self.v.to(blocks.dtype)
                for _ in range(self.n_power_iterations):
                    v = nn.functional.normalize(torch.einsum("ghk,gh->gk", blocks, u), dim=1)
                    u = nn.functional.normalize(torch.einsum("ghk,gk->gh", blocks, v), dim=1)
                self.u.copy_(u)
                self.v.copy_(v)
        u, v = self.u.to(blocks.dtype), self.v.to(blocks.dtype)
        return torch.einsum("gh,ghk,gk->g", u, blocks, v)

    def forward(self, weight: Tensor) -> Tensor:
        blocks = weight.reshape(self.gates, -1, weight.shape[1])
        sigma = self._sigma(blocks)
        scale = torch.clamp(self.max_radius / sigma.clamp_min(1e-12), max=1.0)
        return (blocks * scale[:, None, None]).reshape(weight.shape)


class ScaledOrthogonal(nn.Module):
    """Parametrisation W_g = r · B_g · exp(A_g - A_gᵀ): every singular value of each block is r.

    The stored tensor holds the generators A_g (shape ``(gates, cols, cols)``, upper triangle
    used); ``B_g`` is the orthogonal polar factor U Vᵀ of the block when it was registered (or last
    assigned), kept as a buffer, so registration starts at the nearest scaled-orthogonal matrix.
    """

    base: Tensor

    def __init__(self, gates: int, rows: int, cols: int, max_radius: float) -> None:
        super().__init__()
        self.gates = gates
        self.max_radius = max_radius
        self.register_buffer("base", torch.zeros(gates, rows, cols, dtype=torch.float64))

    def forward(self, generators: Tensor) -> Tensor:
        # In float64: exp of a large skew matrix in float32 drifts from orthogonal by ~1e-5.
        upper = generators.to(torch.float64).triu(1)
        rotation = torch.linalg.matrix_exp(upper - upper.transpose(-1, -2))
        blocks = self.max_radius * (self.base.to(torch.float64) @ rotation)
        result: Tensor = blocks.reshape(-1, blocks.shape[-1]).to(generators.dtype)
        return result

    def right_inverse(self, weight: Tensor) -> Tensor:
        blocks = weight.detach().reshape(self.gates, -1, weight.shape[1])
        left, _, right = torch.linalg.svd(blocks.to(torch.float64), full_matrices=False)
        self.base = (left @ right).to(self.base.dtype)
        return weight.new_zeros(self.gates, weight.shape[1], weight.shape[1])


class _FlatWeights:
    """Hooks that hand an RNN module's fused kernel the parametrised weights, computed once.

    Before each call the parametrisations are evaluated inside ``parametrize.cached()`` and the
    module's private weight list (``_flat_weights``, with its weak references) is pointed at the
    results; PyTorch's own staleness check then finds nothing changed. The cache is closed after
    the call, also when it raises.
    """

    def __init__(self) -> None:
        self.open: list[contextlib.AbstractContextManager[None]] = []

    def before(self, module: nn.Module, _args: Any) -> None:
        context = parametrize.cached()
        context.__enter__()
        self.open.append(context)
        refresh_flat_weights(module)

    def after(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        if self.open:
            self.open.pop().__exit__(None, None, None)


def refresh_flat_weights(module: nn.Module) -> None:
    """Point an RNN module's cached weight list at its current (parametrised) weights."""
    rnn: Any = module  # private attributes of nn.RNNBase, present since PyTorch 1.x
    rnn._flat_weights = [getattr(rnn, n, None) for n in rnn._flat_weights_names]
    if hasattr(rnn, "_flat_weight_refs"):
        rnn._flat_weight_refs = [
            weakref.ref(w) if w is not None else None for w in rnn._flat_weights
        ]


def constrain_recurrent_(
    model: nn.Module,
    max_radius: float = 1.0,
    method: Literal["spectral_norm", "orthogonal"] = "spectral_norm",
    *,
    exact_max: int = 256,
) -> tuple[str, ...]:
    """Constrain every recurrent ``weight_hh`` of ``model`` to σ_max <= ``max_radius`` per gate.

    Registers a parametrisation (see the module docstring) on each ``weight_hh_l*`` of
    ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (all layers and directions) and ``weight_hh`` of RNN cells.
    The modules keep working unchanged, fused kernels included. Parameters are re-registered
    under ``parametrizations.<name>.original``: create the optimizer after this call.

    Args:
        model: the model, changed in place.
        max_radius: the bound r on σ_max (and hence ρ) of every gate block, > 0.
        method: ``"spectral_norm"`` (scale blocks down only when above r) or ``"orthogonal"``
            (every block exactly r times an orthogonal matrix).
        exact_max: ``"spectral_norm"`` computes σ_max exactly up to this block size, by power
            iteration beyond.

    Returns:
        The names of the constrained weights.

    Raises:
        UnsupportedModelError: ``model`` has no recurrent layer.
        ConfigError: bad ``max_radius`` or ``method``, or a weight is already parametrised.

    References:
        Miyato et al., "Spectral normalization for generative adversarial networks", ICLR 2018;
        Lezcano-Casado and Martínez-Rubio, "Cheap orthogonal constraints in neural networks",
        ICML 2019; Pascanu et al., ICML 2013 (ρ < 1 rules out exploding gradients).
    """
    bound = check_positive("max_radius", max_radius, fix="1.0 keeps every block non-expansive.")
    if method not in ("spectral_norm", "orthogonal"):
        raise ConfigError(f"method must be 'spectral_norm' or 'orthogonal', got {method!r}.")
    weights = recurrent_weights(model)
    if not weights:
        raise UnsupportedModelError(
            f"{type(model).__name__} holds no nn.RNN/nn.LSTM/nn.GRU or RNN cell to constrain. For "
            "a hand-written recurrence, wrap its matrix: torch.nn.utils.parametrizations."
            "spectral_norm(layer)."
        )
    for weight in weights:
        if parametrize.is_parametrized(weight.module, weight.attr):
            raise ConfigError(
                f"{weight.name} is already parametrised; remove it first with "
                "torch.nn.utils.parametrize.remove_parametrizations, or constrain only once."
            )
    hooked: set[int] = set()
    names = []
    for weight in weights:
        gates = len(GATES[weight.kind])
        rows, cols = weight.hidden_size, weight.weight.shape[1]
        rule: nn.Module
        if method == "spectral_norm":
            rule = SpectralBound(gates, rows, cols, bound, exact_max=exact_max)
        else:
            rule = ScaledOrthogonal(gates, rows, cols, bound)
        rule.to(device=weight.weight.device)
        parametrize.register_parametrization(weight.module, weight.attr, rule)
        names.append(weight.name)
        if isinstance(weight.module, nn.RNNBase) and id(weight.module) not in hooked:
            hooked.add(id(weight.module))
            hooks = _FlatWeights()
            weight.module.register_forward_pre_hook(hooks.before)
            weight.module.register_forward_hook(hooks.after, always_call=True)
            with torch.no_grad():
                refresh_flat_weights(weight.module)
    return tuple(names)
