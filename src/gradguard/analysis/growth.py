"""How fast ρ^T grows: when a gradient multiplied by ρ per step crosses 1e6, 1e10, float32 range.

Back-propagating through T steps of a recurrence multiplies the gradient by the recurrent Jacobian
T times; along its leading eigen-direction the norm grows like ρ^T (Pascanu et al., 2013). These two
functions answer "how long a sequence can this spectral radius survive?" and its inverse, "how close
to 1 must ρ be for sequences of length T?".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import overload

import torch

from gradguard.analysis._common import Result, check_int
from gradguard.errors import ConfigError, check_positive

__all__ = [
    "FLOAT32_MAX",
    "Crossing",
    "ExplosionTable",
    "GrowthRow",
    "critical_radius",
    "explosion_table",
]

FLOAT32_MAX = float(torch.finfo(torch.float32).max)
"""Largest finite float32 (about 3.4e38): a gradient beyond it overflows to ``inf``."""


def _pow(base: float, exponent: int) -> float:
    """``base ** exponent`` in float64, ``inf`` instead of OverflowError."""
    try:
        return base**exponent
    except OverflowError:
        return math.inf


@dataclasses.dataclass(frozen=True)
class Crossing:
    """When ρ^T first exceeds one threshold.

    Attributes:
        threshold: the bound (``FLOAT32_MAX`` stands for float32 overflow).
        step: first T in ``0..T_max`` with ρ^T > threshold, or ``None`` when it is not reached
            within ``T_max`` (never ``T_max`` as a stand-in).
        eventually: first T at all with ρ^T > threshold, possibly beyond ``T_max``; ``None`` when
            ρ^T never exceeds it (ρ <= 1 and threshold >= 1).
    """

    threshold: float
    step: int | None
    eventually: int | None


@dataclasses.dataclass(frozen=True)
class GrowthRow:
    """Growth of ρ^T for one spectral radius ρ.

    Attributes:
        radius: the spectral radius ρ.
        crossings: one :class:`Crossing` per threshold, the last one for float32 overflow.
        at_50: ρ^50 (``inf`` past float64 range).
        at_100: ρ^100.
        curve: ρ^T for T = 0 .. T_max, for plotting.
    """

    radius: float
    crossings: tuple[Crossing, ...]
    at_50: float
    at_100: float
    curve: tuple[float, ...]

    def first_step(self, threshold: float) -> int | None:
        """First T <= T_max at which ρ^T exceeds ``threshold`` (``None``: not within T_max)."""
        for crossing in self.crossings:
            if crossing.threshold == threshold:
                return crossing.step
        raise ConfigError(
            f"threshold {threshold!r} is not in this table; it has "
            f"{[c.threshold for c in self.crossings]!r}. Pass it to explosion_table(thresholds=)."
        )


@dataclasses.dataclass(frozen=True)
class ExplosionTable(Result):
    """Result of :func:`explosion_table`: one :class:`GrowthRow` per spectral radius."""

    kind = "explosion_table"

    rows: tuple[GrowthRow, ...]
    T_max: int
    thresholds: tuple[float, ...]

    def row(self, radius: float) -> GrowthRow:
        """The row of ``radius`` (exact match)."""
        for row in self.rows:
            if row.radius == radius:
                return row
        raise ConfigError(
            f"radius {radius!r} is not in this table; it has {[r.radius for r in self.rows]!r}."
        )

    def __str__(self) -> str:
        lines = [f"Growth of rho^T, T <= {self.T_max}"]
        for row in self.rows:
            parts = []
            for c in row.crossings:
                label = "float32 overflow" if c.threshold == FLOAT32_MAX else f"> {c.threshold:g}"
                if c.step is not None:
                    parts.append(f"{label} at T={c.step}")
                elif c.eventually is not None:
                    parts.append(f"{label} not within T_max (at T={c.eventually})")
                else:
                    parts.append(f"{label} never")
            lines.append(
                f"  rho={row.radius:.4g}: " + ", ".join(parts) + f"; rho^50={row.at_50:.3g}, "
                f"rho^100={row.at_100:.3g}"
            )
        return "\n".join(lines)


def _first_exceeding(radius: float, threshold: float) -> int | None:
    """Smallest integer T >= 0 with radius**T > threshold, or None if there is none."""
    if threshold < 1.0:
        return 0
    if radius <= 1.0:
        return None
    # Closed form, then corrected by exact float64 powers (log rounding can be off by one).
    step = max(0, math.floor(math.log(threshold) / math.log(radius)))
    while step > 0 and _pow(radius, step - 1) > threshold:
        step -= 1
    while not _pow(radius, step) > threshold:
        step += 1
    return step


def explosion_table(
    radii: float | Sequence[float],
    T_max: int = 100,  # noqa: N803 - the longest sequence length T
    thresholds: Sequence[float] = (1e6, 1e10),
) -> ExplosionTable:
    """Tabulate when ρ^T first exceeds each threshold and float32 range, for each radius ρ.

    A gradient back-propagated through T steps of a recurrence with spectral radius ρ grows like
    ρ^T along the leading eigen-direction. For each ρ the table gives the first T with
    ρ^T > threshold (for each threshold, then for float32 overflow at about 3.4e38), together with
    ρ^50, ρ^100 and the curve ρ^T, T = 0..T_max. A threshold that is not crossed within ``T_max``
    is reported as ``step=None`` (with the exact crossing beyond ``T_max`` in ``eventually``),
    never as ``T_max``.

    Args:
        radii: one spectral radius or several, each a finite number >= 0.
        T_max: the longest sequence length considered, an integer >= 1.
        thresholds: growth factors of interest, each > 0 (1e6 and 1e10 by default).

    Returns:
        An :class:`ExplosionTable`; e.g. ρ = 1.5 crosses 1e6 at T = 35, 1e10 at T = 57, and
        1.5^50 ≈ 6.4e8.

    Raises:
        ConfigError: a radius is negative or not finite, ``T_max`` < 1, or a threshold <= 0.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013.
    """
    longest = check_int("T_max", T_max, minimum=1, fix="Use the longest sequence length you train.")
    values = [radii] if isinstance(radii, (int, float)) else list(radii)
    if not values:
        raise ConfigError("radii is empty; pass at least one spectral radius, e.g. [1.01, 1.5].")
    bounds = (*(check_positive("threshold", t) for t in thresholds), FLOAT32_MAX)
    rows = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"each radius must be a number >= 0, got {value!r}.")
        radius = float(value)
        if not (math.isfinite(radius) and radius >= 0.0):
            raise ConfigError(
                f"a spectral radius must be a finite number >= 0, got {value!r}. It is the "
                "largest |eigenvalue| of the recurrent matrix (see spectral_radius)."
            )
        crossings = []
        for bound in bounds:
            eventually = _first_exceeding(radius, bound)
            step = eventually if eventually is not None and eventually <= longest else None
            crossings.append(Crossing(threshold=bound, step=step, eventually=eventually))
        rows.append(
            GrowthRow(
                radius=radius,
                crossings=tuple(crossings),
                at_50=_pow(radius, 50),
                at_100=_pow(radius, 100),
                curve=tuple(_pow(radius, t) for t in range(longest + 1)),
            )
        )
    return ExplosionTable(rows=tuple(rows), T_max=longest, thresholds=bounds[:-1])


@overload
def critical_radius(T: int, threshold: float = 1e6) -> float: ...  # noqa: N803


@overload
def critical_radius(T: Sequence[int], threshold: float = 1e6) -> tuple[float, ...]: ...  # noqa: N803


def critical_radius(
    T: int | Sequence[int],  # noqa: N803 - the sequence length, as in the literature
    threshold: float = 1e6,
) -> float | tuple[float, ...]:
    """The largest spectral radius whose T-th power stays below ``threshold``: ``threshold^(1/T)``.

    ρ^T < threshold  ⇔  ρ < threshold^(1/T). For threshold 1e6: T = 10, 25, 50, 100, 200, 500,
    1000 give 3.9811, 1.7378, 1.3183, 1.1482, 1.0715, 1.0280, 1.0139 — long sequences need ρ very
    close to 1.

    Args:
        T: a sequence length (integer >= 1), or several.
        threshold: the growth factor not to exceed, > 0.

    Returns:
        The critical radius for ``T``, or a tuple of them when ``T`` is a sequence.

    Raises:
        ConfigError: a length is not an integer >= 1, or ``threshold`` <= 0.

    References:
        Pascanu, Mikolov and Bengio, "On the difficulty of training recurrent neural networks",
        ICML 2013.
    """
    bound = check_positive("threshold", threshold, fix="Use the growth factor to stay below.")
    if isinstance(T, Sequence) and not isinstance(T, (str, bytes)):
        return tuple(critical_radius(t, bound) for t in T)
    length = check_int("T", T, minimum=1, fix="Pass the sequence length, e.g. T=100.")
    return float(bound ** (1.0 / length))
