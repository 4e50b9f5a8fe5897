"""Fit a geometric growth factor to a profile of norms, and the horizon it implies."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["fit_growth", "horizon"]


def fit_growth(norms: Sequence[float], lags: Sequence[float]) -> float:
    """Least-squares γ in ``log norm = a + lag * log γ``, over finite positive norms.

    Returns ``nan`` when fewer than two usable points or all lags are equal.
    """
    points = [
        (float(lag), math.log(value))
        for value, lag in zip(norms, lags, strict=True)
        if math.isfinite(value) and value > 0
    ]
    if len(points) < 2:
        return math.nan
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return math.nan
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    try:
        return math.exp(sxy / sxx)
    except OverflowError:
        return math.inf


def horizon(growth: float, tol: float) -> float:
    """Steps until a signal shrinking by ``growth`` per step falls to ``tol`` of its start.

    ``ln(tol) / ln(growth)`` for growth < 1; ``inf`` when it does not shrink; ``nan`` if unknown.
    """
    if math.isnan(growth):
        return math.nan
    if growth >= 1.0:
        return math.inf
    if growth <= 0.0:
        return 0.0
    return math.log(tol) / math.log(growth)
