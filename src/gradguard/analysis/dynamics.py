"""Follow a gradient back through T steps of a linear recurrence, split by eigen-direction.

Back-propagation through a linear recurrence h_t = W h_{t-1} multiplies the gradient by Wᵀ per
step: g_{t+1} = Wᵀ g_t. Writing Wᵀ = U diag(μ) U⁻¹, the coefficient of g on eigenvector u_i evolves
as c_i(t) = μ_i^t c_i(0), so the components on eigenvalues with |μ| > 1 grow and soon dominate
however small they start, while the rest decays. :func:`eigen_dynamics` records that split.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from gradguard.analysis._common import Progress, Result, check_int, check_matrix
from gradguard.errors import ConfigError

__all__ = ["EigenDynamics", "eigen_dynamics"]


@dataclasses.dataclass(frozen=True)
class EigenDynamics(Result):
    """Result of :func:`eigen_dynamics`; every series has ``steps + 1`` entries, t = 0..steps.

    Attributes:
        steps: number of backward steps T.
        spectral_radius: max |λ(W)|.
        unstable_eigenvalues: one ``(real, imag)`` per unstable direction (a real eigenvalue, or a
            complex-conjugate pair given by its member with imag >= 0), largest modulus first.
        unstable_moduli: |λ| of those directions: the growth of their component per step.
        norms: ‖g_t‖.
        unstable: per unstable direction, the size of g_t's component on it: the norm of the
            oblique projection along the other eigenvectors (for symmetric W simply |⟨g_t, v⟩|);
            for a complex pair its amplitude √2·|c|·‖u‖, equal to the norm when W is normal.
            Either way it grows by exactly |λ| per step.
        stable: norm of g_t's component on the span of the eigenvectors with |λ| <= 1.
        eigvec_condition: condition number of the eigenvector matrix; when it is huge (nearly
            defective W) the split is ill-conditioned, though ``norms`` stays exact.
    """

    kind = "eigen_dynamics"

    steps: int
    spectral_radius: float
    unstable_eigenvalues: tuple[tuple[float, float], ...]
    unstable_moduli: tuple[float, ...]
    norms: tuple[float, ...]
    unstable: tuple[tuple[float, ...], ...]
    stable: tuple[float, ...]
    eigvec_condition: float

    @property
    def dominant(self) -> int | None:
        """Index of the unstable direction with the largest final component, or ``None``."""
        if not self.unstable:
            return None
        return max(range(len(self.unstable)), key=lambda k: self.unstable[k][-1])

    @property
    def growth(self) -> float:
        """Overall amplification ‖g_T‖ / ‖g_0‖."""
        return self.norms[-1] / self.norms[0]

    def __str__(self) -> str:
        lines = [
            f"Gradient back-propagated {self.steps} steps through W^T "
            f"(rho={self.spectral_radius:.4f}): norm {self.norms[0]:.3g} -> {self.norms[-1]:.3g}"
        ]
        for (re, im), modulus, series in zip(
            self.unstable_eigenvalues, self.unstable_moduli, self.unstable, strict=True
        ):
            label = f"{re:.4g}" if im == 0 else f"{re:.4g}±{im:.4g}i"
            lines.append(
                f"  unstable lambda={label} (|lambda|={modulus:.4f}): {series[0]:.3g} -> "
                f"{series[-1]:.3g}"
            )
        lines.append(f"  stable subspace: {self.stable[0]:.3g} -> {self.stable[-1]:.3g}")
        return "\n".join(lines)


def _groups(eigenvalues: Tensor, unstable_above: float) -> list[list[int]]:
    """Indices of unstable eigenvalues, conjugate pairs grouped, largest modulus first."""
    moduli = eigenvalues.abs()
    order = [int(i) for i in torch.argsort(moduli, descending=True) if moduli[i] > unstable_above]
    groups: list[list[int]] = []
    used: set[int] = set()
    for i in order:
        if i in used:
            continue
        group = [i]
        used.add(i)
        if abs(float(eigenvalues[i].imag)) > 1e-12 * max(1.0, float(moduli[i])):
            target = eigenvalues[i].conj()
            partner = min(
                (j for j in order if j not in used),
                key=lambda j: float((eigenvalues[j] - target).abs()),
                default=None,
            )
            if partner is not None:
                group.append(partner)
                used.add(partner)
        groups.append(group)
    return groups


def eigen_dynamics(
    W: Tensor,  # noqa: N803 - the matrix's conventional name
    T: int,  # noqa: N803 - the number of time steps, as in the literature
    grad0: Tensor | None = None,
    *,
    unstable_above: float = 1.0,
    progress: Progress | None = None,
) -> EigenDynamics:
    """Back-propagate a gradient through Wᵀ for T steps and split it on W's eigen-directions.

    g_0 = ``grad0`` (a random unit vector by default), g_{t+1} = Wᵀ g_t. With Wᵀ = U diag(μ) U⁻¹
    the coefficients c(t) = U⁻¹ g_t obey c_i(t) = μ_i^t c_i(0): the component on an eigenvalue
    with |μ| > 1 grows by exactly |μ| per step. Recorded per step: ‖g_t‖, the norm of the
    component on each unstable direction (conjugate pairs together, as one real plane), and the
    norm of the rest (the stable subspace). Computed in float64.

    Args:
        W: the square recurrent matrix (for h_t = φ(W h_{t-1} + ...), the linear-regime Jacobian).
        T: number of backward steps, >= 1.
        grad0: the starting gradient, shape ``(n,)``; by default a fixed random unit vector.
        unstable_above: eigenvalues with modulus above this count as unstable.
        progress: optional ``progress(done, total)`` callback, called every step.

    Returns:
        An :class:`EigenDynamics`; with eigenvalues 1.2 and 1.1 among others in [0.8, 0.95], the
        1.2 direction dominates after 50 steps, its component growing by 1.2 per step.

    Raises:
        ConfigError: ``W`` is not square, ``T`` < 1, or ``grad0`` has the wrong shape or is zero.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013, §2 (the eigen-analysis of exploding and vanishing gradients).
    """
    matrix = check_matrix("W", W).to(torch.float64)
    steps = check_int("T", T, minimum=1, fix="Pass the number of time steps, e.g. T=50.")
    n = matrix.shape[0]
    if grad0 is None:
        generator = torch.Generator(device="cpu").manual_seed(0)
        g = torch.randn(n, generator=generator, dtype=torch.float64).to(matrix.device)
        g = g / g.norm()
    else:
        if not isinstance(grad0, Tensor) or grad0.shape != (n,):
            shape = tuple(grad0.shape) if isinstance(grad0, Tensor) else type(grad0).__name__
            raise ConfigError(
                f"grad0 must be a vector of shape ({n},) like W's rows, got {shape!r}."
            )
        g = grad0.detach().to(device=matrix.device, dtype=torch.float64)
        if not float(g.norm()) > 0:
            raise ConfigError("grad0 is zero (or not finite); pass a nonzero finite vector.")
    transposed = matrix.T
    eigenvalues, vectors = torch.linalg.eig(transposed)
    inverse = torch.linalg.inv(vectors)
    condition = float(torch.linalg.cond(vectors))
    groups = _groups(eigenvalues, unstable_above)
    norms: list[float] = []
    unstable: list[list[float]] = [[] for _ in groups]
    stable: list[float] = []
    for t in range(steps + 1):
        if t > 0:
            g = transposed @ g
            if progress is not None:
                progress(t, steps)
        coefficients = inverse @ g.to(torch.complex128)
        rest = g.clone()
        for k, group in enumerate(groups):
            component = (vectors[:, group] @ coefficients[group]).real
            # A real eigenvector: the component's norm. A conjugate pair: its amplitude
            # sqrt(2)|c|·‖u‖, which grows by exactly |λ| per step (the plane's vector itself
            # turns around an ellipse when W is not normal, and equals it when W is normal).
            amplitude = coefficients[group[0]].abs() * vectors[:, group[0]].norm()
            unstable[k].append(float(amplitude) * (2**0.5 if len(group) == 2 else 1.0))
            rest -= component
        norms.append(float(g.norm()))
        stable.append(float(rest.norm()))
    representatives = []
    for group in groups:
        value = eigenvalues[group[0]]
        representatives.append((float(value.real), abs(float(value.imag))))
    return EigenDynamics(
        steps=steps,
        spectral_radius=float(eigenvalues.abs().max()) if n else 0.0,
        unstable_eigenvalues=tuple(representatives),
        unstable_moduli=tuple(float(eigenvalues[g[0]].abs()) for g in groups),
        norms=tuple(norms),
        unstable=tuple(tuple(series) for series in unstable),
        stable=tuple(stable),
        eigvec_condition=condition,
    )
