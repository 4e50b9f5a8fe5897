"""Argument checks shared by the clipping rules: each error echoes the value and names the fix."""

from __future__ import annotations

import math
import numbers

from gradguard.errors import ConfigError
from gradguard.stats import GradStats, Parameters, measure

__all__ = ["check_count", "check_eps", "check_open_interval", "stats_for"]


def check_eps(eps: float) -> float:
    """Return ``eps`` as a float if it is a finite number >= 0, else raise :class:`ConfigError`."""
    number = _as_float("eps", eps)
    if not (number >= 0 and math.isfinite(number)):
        raise ConfigError(
            f"eps must be a finite number >= 0, got {eps!r}. It only guards a division by zero; "
            "keep the default 1e-6."
        )
    return number


def check_open_interval(name: str, value: float, low: float, high: float, *, fix: str) -> float:
    """Return ``value`` as a float if ``low < value < high``, else raise :class:`ConfigError`."""
    number = _as_float(name, value)
    if not low < number < high:
        raise ConfigError(
            f"{name} must lie strictly between {low} and {high}, got {value!r}. {fix}"
        )
    return number


def check_count(name: str, value: int, *, minimum: int, fix: str) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (not a bool), else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}. {fix}")
    return int(value)


def stats_for(
    parameters: Parameters | None, stats: GradStats | None, norm_type: float | str, caller: str
) -> GradStats:
    """``stats`` when given (reused, nothing measured twice), else ``measure(parameters)``."""
    if stats is not None:
        return stats
    if parameters is None:
        raise ConfigError(
            f"{caller} got parameters=None and no stats; pass the parameters to clip (a model, "
            "or model.parameters()), or stats=gg.measure(model) from this step."
        )
    return measure(parameters, norm_type)


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a real number, got {value!r}.")
    return float(value)
