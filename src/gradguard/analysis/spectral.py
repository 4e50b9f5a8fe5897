"""Spectral radius and largest singular value of recurrent matrices, and a verdict per gate block.

ρ(W) = max |λ_i(W)| sets the asymptotic growth of W^T (Gelfand: ρ = lim ‖W^T‖^(1/T)); σ_max(W) =
‖W‖_2 bounds one step. Small matrices get exact eigenvalues / singular values from
``torch.linalg``; large ones (n > ``exact_max``) use power iteration, which costs a few hundred
matrix-vector products instead of an O(n^3) decomposition.

:func:`recurrent_report` applies both to every recurrent weight of a model — per module, layer,
direction and gate block — and compares the gate-weighted radius with the critical radius
``threshold^(1/seq_len)`` of :func:`gradguard.analysis.critical_radius`.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor, nn

from gradguard.analysis._common import Progress, Result, check_int, check_matrix
from gradguard.analysis.growth import critical_radius
from gradguard.errors import ConfigError, UnsupportedModelError, check_positive
from gradguard.stats.recurrent import GATE_GAINS, GATES, recurrent_weights

__all__ = [
    "BlockSpectrum",
    "RecurrentReport",
    "Verdict",
    "largest_singular_value",
    "recurrent_report",
    "spectral_radius",
]

Method = Literal["auto", "exact", "power"]
_METHODS = ("auto", "exact", "power")


class Verdict(str, enum.Enum):
    """Stability of a recurrent block for a given sequence length."""

    STABLE = "stable"
    NEAR_CRITICAL = "near-critical"
    EXPLOSIVE = "explosive"

    @property
    def rank(self) -> int:
        """0, 1, 2 from stable to explosive."""
        return _VERDICT_RANK[self]


_VERDICT_RANK = {Verdict.STABLE: 0, Verdict.NEAR_CRITICAL: 1, Verdict.EXPLOSIVE: 2}


def _resolve(method: str, n: int, exact_max: int) -> Literal["exact", "power"]:
    if method not in _METHODS:
        raise ConfigError(f"method must be one of {_METHODS!r}, got {method!r}.")
    if method == "auto":
        return "exact" if n <= exact_max else "power"
    return "exact" if method == "exact" else "power"


def _power_radius(matrix: Tensor, *, tol: float, max_iter: int, probes: int) -> float:
    """Spectral radius by power iteration: the mean log growth per step after a burn-in.

    With x_{k+1} = W x_k / ‖W x_k‖, the growth ‖W x_k‖ converges to ρ when the leading eigenvalues
    dominate; its geometric mean over the latter half of the iterations also converges for complex
    pairs and ties, whose individual ratios oscillate. Several random probes, the largest estimate
    kept, guard against a start orthogonal to the leading directions.
    """
    n = matrix.shape[0]
    # Iterate in the matrix's own precision (at least float32; the normalised vectors never
    # overflow) and accumulate the log growth in float64.
    dtype = torch.promote_types(matrix.dtype, torch.float32)
    work = matrix.to(dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, probes, generator=generator, dtype=dtype).to(work.device)
    x = x / x.norm(dim=0)
    tiny = torch.finfo(dtype).tiny
    chunk = 50
    logs: list[Tensor] = []
    previous = math.nan
    estimate = math.nan
    for start in range(0, max_iter, chunk):
        total = torch.zeros(probes, dtype=torch.float64, device=work.device)
        for _ in range(chunk):
            y = work @ x
            norms = y.norm(dim=0).clamp_min(tiny)  # a nilpotent W maps x to 0: radius 0
            total += norms.log().to(torch.float64)
            x = y / norms
        logs.append(total / chunk)
        half = logs[len(logs) // 2 :]
        estimate = float(torch.stack(half).mean(dim=0).max().exp())
        if start >= 3 * chunk and abs(estimate - previous) <= tol * max(estimate, 1e-300):
            break
        previous = estimate
    return 0.0 if estimate < 1e-30 else estimate


def _power_sigma(matrix: Tensor, *, tol: float, max_iter: int) -> float:
    """Largest singular value by power iteration on WᵀW; ‖W v‖ increases monotonically to σ_max."""
    work = matrix.to(torch.promote_types(matrix.dtype, torch.float32))
    generator = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(work.shape[1], generator=generator, dtype=work.dtype).to(work.device)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(max_iter):
        u = work @ v
        new = float(u.norm())
        if new == 0.0:
            return 0.0
        v = work.T @ (u / new)
        v = v / v.norm()
        if abs(new - sigma) <= tol * new:
            return new
        sigma = new
    return sigma


def spectral_radius(
    W: Tensor,  # noqa: N803 - the matrix's conventional name
    *,
    method: Method = "auto",
    exact_max: int = 512,
    tol: float = 1e-5,
    max_iter: int = 2000,
) -> float:
    """Spectral radius ρ(W) = max |λ_i(W)| of a square matrix: the per-step growth of W^T.

    Args:
        W: a square 2-D tensor (a recurrent matrix or one gate block of it).
        method: ``"exact"`` (``torch.linalg.eigvals`` in float64), ``"power"`` (power iteration:
            geometric-mean growth of W^k x over the latter half of the iterations), or ``"auto"``:
            exact up to ``exact_max`` rows, power iteration beyond.
        exact_max: largest size decomposed exactly by ``"auto"``.
        tol: relative change between successive power estimates at which iteration stops.
        max_iter: cap on power iterations.

    Returns:
        ρ(W) as a float.

    Raises:
        ConfigError: ``W`` is not a square 2-D matrix, or ``method`` is unknown.

    References:
        Gelfand's formula ρ(W) = lim_k ‖W^k‖^(1/k); Golub and Van Loan, "Matrix Computations",
        4th ed., §7.3 (power iteration).
    """
    matrix = check_matrix("W", W)
    check_positive("tol", tol)
    check_int("max_iter", max_iter, minimum=50)
    if matrix.shape[0] == 0:
        return 0.0
    if _resolve(method, matrix.shape[0], exact_max) == "exact":
        work = matrix if matrix.is_complex() else matrix.to(torch.float64)
        return float(torch.linalg.eigvals(work).abs().max())
    return _power_radius(matrix, tol=tol, max_iter=max_iter, probes=4)


def largest_singular_value(
    W: Tensor,  # noqa: N803 - the matrix's conventional name
    *,
    method: Method = "auto",
    exact_max: int = 512,
    tol: float = 1e-7,
    max_iter: int = 2000,
) -> float:
    """Largest singular value σ_max(W) = ‖W‖_2: the most one multiplication by W can stretch.

    Args:
        W: a 2-D tensor (need not be square).
        method: ``"exact"`` (``torch.linalg.matrix_norm(ord=2)`` in float64), ``"power"`` (power
            iteration on WᵀW), or ``"auto"``: exact when the smaller side is <= ``exact_max``.
        exact_max: largest size handled exactly by ``"auto"``.
        tol: relative change at which power iteration stops.
        max_iter: cap on power iterations.

    Returns:
        σ_max(W) as a float.

    Raises:
        ConfigError: ``W`` is not 2-D, or ``method`` is unknown.

    References:
        Golub and Van Loan, "Matrix Computations", 4th ed., §8.6 (σ_max as the dominant
        eigenvalue of WᵀW, found by power iteration).
    """
    matrix = check_matrix("W", W, square=False)
    check_positive("tol", tol)
    check_int("max_iter", max_iter, minimum=1)
    if matrix.numel() == 0:
        return 0.0
    if _resolve(method, min(matrix.shape), exact_max) == "exact":
        work = matrix if matrix.is_complex() else matrix.to(torch.float64)
        return float(torch.linalg.matrix_norm(work, ord=2))
    return _power_sigma(matrix, tol=tol, max_iter=max_iter)


@dataclasses.dataclass(frozen=True)
class BlockSpectrum:
    """Spectrum summary of one gate block of one recurrent weight.

    Attributes:
        name: full parameter name, e.g. ``"encoder.weight_hh_l0_reverse"``.
        module: path of the owning module (``""`` for the model itself).
        kind: ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"`` or ``"matrix"`` (given as-is).
        layer: layer index.
        direction: ``"forward"`` or ``"reverse"``.
        gate: gate name (LSTM ``i f g o``, GRU ``r z n``, plain RNN ``h``).
        shape: shape of the analysed square matrix (for LSTM ``proj_size`` the loop
            ``weight_hr @ block`` of shape ``(P, P)``).
        radius: spectral radius ρ of the block.
        sigma_max: its largest singular value.
        gain: largest slope of the gate's nonlinearity (sigmoid 1/4, tanh and ReLU 1).
        effective_radius: ``gain * radius``, the linear-regime growth per step the verdict uses.
        critical_radius: ``threshold^(1/seq_len)``.
        verdict: ``explosive`` when effective_radius > critical_radius, ``near-critical`` when it is
            >= 1 - margin, else ``stable``.
        method: ``"exact"`` or ``"power"``.
    """

    name: str
    module: str
    kind: str
    layer: int
    direction: str
    gate: str
    shape: tuple[int, int]
    radius: float
    sigma_max: float
    gain: float
    effective_radius: float
    critical_radius: float
    verdict: Verdict
    method: str


@dataclasses.dataclass(frozen=True)
class RecurrentReport(Result):
    """Result of :func:`recurrent_report`: one :class:`BlockSpectrum` per gate block.

    Attributes:
        blocks: the blocks, in module, layer, direction, gate order.
        seq_len: sequence length the verdicts refer to.
        threshold: growth factor that counts as an explosion.
        critical_radius: ``threshold^(1/seq_len)``.
        margin: distance below 1 from which a block counts as near-critical.
        verdict: the worst verdict over all blocks.
    """

    kind = "recurrent_report"

    blocks: tuple[BlockSpectrum, ...]
    seq_len: int
    threshold: float
    critical_radius: float
    margin: float
    verdict: Verdict

    @property
    def worst(self) -> BlockSpectrum:
        """The block with the largest effective radius."""
        return max(self.blocks, key=lambda b: b.effective_radius)

    @property
    def max_radius(self) -> float:
        """Largest raw spectral radius over all blocks."""
        return max(b.radius for b in self.blocks)

    def __str__(self) -> str:
        header = (
            f"Recurrent spectra for T={self.seq_len} (critical radius "
            f"{self.critical_radius:.4f} for growth {self.threshold:g}): {self.verdict.value}"
        )
        lines = [header, "  weight                          gate    rho   sigma  gain*rho  verdict"]
        for b in self.blocks:
            lines.append(
                f"  {b.name:<30.30} {b.gate:>4} {b.radius:7.4f} {b.sigma_max:7.4f} "
                f"{b.effective_radius:8.4f}  {b.verdict.value}"
            )
        return "\n".join(lines)


def _verdict(effective: float, critical: float, margin: float) -> Verdict:
    if not effective <= critical:  # NaN counts as explosive
        return Verdict.EXPLOSIVE
    if effective >= 1.0 - margin:
        return Verdict.NEAR_CRITICAL
    return Verdict.STABLE


def recurrent_report(
    model: nn.Module | Mapping[str, Tensor] | Tensor,
    *,
    seq_len: int = 100,
    threshold: float = 1e6,
    margin: float = 0.05,
    method: Method = "auto",
    exact_max: int = 512,
    progress: Progress | None = None,
) -> RecurrentReport:
    """Spectral radius, σ_max and a stability verdict for every recurrent weight of a model.

    Every ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (all layers and directions) and every
    ``nn.RNNCell``/``nn.LSTMCell``/``nn.GRUCell`` in ``model`` is split into its gate blocks
    (LSTM ``i f g o``, GRU ``r z n``); each block W_g gets ρ(W_g), σ_max(W_g) and
    ``effective_radius = gain_g * ρ(W_g)``, where gain_g is the largest slope of the gate's
    nonlinearity (sigmoid 1/4, tanh 1): in the linear regime the block multiplies a
    back-propagated gradient by at most that much per step. The verdict compares it with the
    critical radius ``threshold^(1/seq_len)``: above it, the gradient can grow by more than
    ``threshold`` over ``seq_len`` steps (``explosive``); from ``1 - margin`` up to it the block is
    ``near-critical``; below ``1 - margin``, ``stable``. For an LSTM with ``proj_size`` P the loop
    closes through the projection, so the P×P matrix ``weight_hr @ W_g`` is analysed.

    Args:
        model: a module containing recurrent layers; a mapping ``{name: square matrix}`` (or
            one tensor) for a custom recurrence such as ``h = tanh(W h + U x)``, each treated as
            one tanh block; or a ``state_dict`` (e.g. from a checkpoint), whose ``weight_hh*``
            tensors are split into gate blocks by shape.
        seq_len: the sequence length to judge against, >= 1.
        threshold: the growth factor that counts as an explosion (1e6 by default).
        margin: how far below 1 a block still counts as near-critical.
        method: ``"auto"``, ``"exact"`` or ``"power"`` (see :func:`spectral_radius`).
        exact_max: largest block size decomposed exactly by ``"auto"``.
        progress: optional ``progress(done, total)`` callback, called after each block.

    Returns:
        A :class:`RecurrentReport`.

    Raises:
        UnsupportedModelError: ``model`` has no recurrent layer (the message says how to pass the
            matrices of a custom recurrence).
        ConfigError: a given matrix is not square, or an argument is out of range.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013 (ρ > 1 is necessary for exploding gradients; the gate slope bounds the Jacobian).
    """
    length = check_int("seq_len", seq_len, minimum=1, fix="Pass the training sequence length.")
    bound = check_positive("threshold", threshold)
    if not (isinstance(margin, (int, float)) and 0.0 <= margin < 1.0):
        raise ConfigError(f"margin must be a number in [0, 1), got {margin!r}.")
    critical = critical_radius(length, bound)
    with torch.no_grad():
        jobs = _jobs(model)
    blocks = []
    for done, (meta, matrix) in enumerate(jobs, start=1):
        name, module_name, kind, layer, direction, gate, gain = meta
        with torch.no_grad():
            square = check_matrix(name, matrix)
            used = _resolve(method, square.shape[0], exact_max)
            radius = spectral_radius(square, method=used)
            sigma = largest_singular_value(square, method=used)
        effective = gain * radius
        blocks.append(
            BlockSpectrum(
                name=name,
                module=module_name,
                kind=kind,
                layer=layer,
                direction=direction,
                gate=gate,
                shape=(int(square.shape[0]), int(square.shape[1])),
                radius=radius,
                sigma_max=sigma,
                gain=gain,
                effective_radius=effective,
                critical_radius=critical,
                verdict=_verdict(effective, critical, float(margin)),
                method=used,
            )
        )
        if progress is not None:
            progress(done, len(jobs))
    worst = max((b.verdict for b in blocks), key=lambda v: v.rank)
    return RecurrentReport(
        blocks=tuple(blocks),
        seq_len=length,
        threshold=bound,
        critical_radius=critical,
        margin=float(margin),
        verdict=worst,
    )


_Meta = tuple[str, str, str, int, str, str, float]


_SUFFIX = re.compile(r"_l(\d+)(_reverse)?$")


def _mapping_jobs(mapping: Mapping[str, Tensor]) -> list[tuple[_Meta, Tensor]]:
    """Blocks of a mapping: custom square matrices, or the ``weight_hh*`` of a state_dict.

    A state_dict (any key containing ``weight_hh``) contributes only its ``weight_hh`` tensors,
    split by shape: (4H, H) LSTM gates, (3H, H) GRU gates, (H, H) one block; with a matching
    ``weight_hr`` the LSTM loop ``weight_hr @ block`` is analysed. Other mappings are taken as
    they are: one square matrix per entry.
    """
    if not mapping:
        raise ConfigError("the mapping of recurrent matrices is empty; pass {'W_hh': W}.")
    names = [str(k) for k in mapping]
    state_dict = any("weight_hh" in n for n in names)
    jobs: list[tuple[_Meta, Tensor]] = []
    for key, value in mapping.items():
        name = str(key)
        if state_dict and "weight_hh" not in name:
            continue
        matrix = check_matrix(name, value, square=False)
        found = _SUFFIX.search(name)
        layer = int(found.group(1)) if found else 0
        direction = "reverse" if found and found.group(2) else "forward"
        module = name.rsplit(".", 1)[0] if "." in name else ""
        projection = mapping.get(name.replace("weight_hh", "weight_hr")) if state_dict else None
        rows, cols = matrix.shape
        if projection is not None and rows % 4 == 0:
            kind = "LSTM"
        elif rows == cols:
            jobs.append(((name, module, "matrix", layer, direction, "h", 1.0), matrix))
            continue
        elif rows in (3 * cols, 4 * cols):
            kind = "LSTM" if rows == 4 * cols else "GRU"
        else:
            raise ConfigError(
                f"{name} has shape {(rows, cols)!r}: not a square recurrent matrix nor a stack of "
                "3 (GRU) or 4 (LSTM) square gate blocks. Pass square matrices, e.g. "
                "{'W_hh': W}, or the module itself."
            )
        size = rows // len(GATES[kind])
        for k, (gate, gain) in enumerate(zip(GATES[kind], GATE_GAINS[kind], strict=True)):
            block = matrix[k * size : (k + 1) * size]
            if projection is not None:
                block = check_matrix(name, projection, square=False).to(block.dtype) @ block
            jobs.append(((name, module, kind, layer, direction, gate, gain), block))
    return jobs


def _jobs(model: nn.Module | Mapping[str, Tensor] | Tensor) -> list[tuple[_Meta, Tensor]]:
    """``(metadata, square matrix)`` for every block to analyse."""
    if isinstance(model, Tensor):
        model = {"W": model}
    if isinstance(model, Mapping):
        return _mapping_jobs(model)
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"recurrent_report expects an nn.Module, a tensor or a mapping of tensors, got "
            f"{type(model).__name__}."
        )
    weights = recurrent_weights(model)
    if not weights:
        raise UnsupportedModelError(
            f"{type(model).__name__} holds no nn.RNN/nn.LSTM/nn.GRU or RNN cell, so there is no "
            "recurrent weight to analyse. For a hand-written recurrence pass its matrices: "
            "recurrent_report({'W_hh': model.W_hh.weight}). For feed-forward stacks use "
            "depth_profile."
        )
    jobs: list[tuple[_Meta, Tensor]] = []
    for weight in weights:
        projection = weight.projection
        for gate, gain, block in weight.blocks():
            loop = projection @ block if projection is not None else block
            meta: _Meta = (
                weight.name,
                weight.module_name,
                weight.kind,
                weight.layer,
                weight.direction,
                gate,
                gain,
            )
            jobs.append((meta, loop))
    return jobs
