"""The exception tree of gradguard, and the one set of argument checks every entry point uses.

Every error says what was wrong (echoing the value with ``!r``), what is allowed, and what to do.
Catch :class:`GradguardError` to handle anything gradguard raises on purpose. The ``check_*``
functions below are the only argument validators of the package: a wrong type raises
:class:`ConfigTypeError`, a value out of range :class:`ConfigError`. Booleans and strings are
never taken as numbers. Pure Python: no torch here.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

_T = TypeVar("_T")

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "DistributedMismatchError",
    "EmptyParametersError",
    "GradguardError",
    "LogFormatError",
    "MissingDependencyError",
    "NoGradientsError",
    "NonFiniteError",
    "SnapshotError",
    "TrainingDivergedError",
    "UnsupportedGradientError",
    "UnsupportedModelError",
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_interface",
    "check_mapping",
    "check_names",
    "check_nonnegative",
    "check_norm_type",
    "check_objects",
    "check_open_interval",
    "check_path",
    "check_positive",
    "check_ratio",
    "check_real",
]


class GradguardError(Exception):
    """Base class of every error gradguard raises on purpose."""


class ConfigError(GradguardError, ValueError):
    """A setting or argument is out of range or of the wrong kind."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument is of the wrong type (a string where a number belongs, a model where the
    step's measurement belongs); also a ``TypeError``, as Python's own checks raise."""


class EmptyParametersError(ConfigError):
    """The parameters were an exhausted iterator (``model.parameters()`` used twice)."""


class NoGradientsError(GradguardError, RuntimeError):
    """Parameters were given but none of them holds a gradient."""


class UnsupportedGradientError(GradguardError, TypeError):
    """A gradient's layout, dtype or device combination cannot be handled."""


class UnsupportedModelError(GradguardError, TypeError):
    """A model or module is of a kind an analysis or remedy cannot handle (the message names one
    that it can)."""


class NonFiniteError(GradguardError, FloatingPointError, RuntimeError):
    """A value that must be finite (loss, gradient norm, parameter) is NaN or infinite.

    Also a ``RuntimeError``, which ``torch.nn.utils.clip_grad_norm_(error_if_nonfinite=True)``
    raises, so code written for PyTorch catches gradguard's drop-in alike."""


class DistributedMismatchError(GradguardError, RuntimeError):
    """Ranks of a process group disagree on something that must be identical on all of them."""


class LogFormatError(GradguardError, ValueError):
    """A file is not a gradguard JSONL log, or was written with an unknown schema version."""


class MissingDependencyError(GradguardError, ImportError):
    """An optional package (a pip extra) is needed for a feature but is not installed."""


class TrainingDivergedError(GradguardError, RuntimeError):
    """The guard spent its rescue budget (rollbacks) and stopped the run; the message says why.

    Attributes:
        record: the ``StepRecord`` of the aborting step, when the guard raised it.
    """

    def __init__(self, message: str, record: object = None) -> None:
        super().__init__(message)
        self.record = record


class SnapshotError(GradguardError, RuntimeError):
    """A snapshot cannot be written, found or loaded."""


# ----------------------------------------------------------------------------- argument checks


def _message(text: str, fix: str) -> str:
    return f"{text} {fix}".rstrip()


def check_real(name: str, value: object, *, fix: str = "") -> float:
    """Return ``value`` as a float if it is a real number that is not NaN; else raise.

    ``bool``, ``str`` and tensors are refused (``True`` is not a bound, ``"0.5"`` is not a
    number): :class:`ConfigTypeError`. NaN: :class:`ConfigError`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = ""
        if hasattr(value, "item") and not isinstance(value, (str, bytes)):
            hint = f" (a {type(value).__name__}: pass a Python number, e.g. value.item())"
        elif isinstance(value, str):
            hint = " (a string: pass the number itself)"
        raise ConfigTypeError(
            _message(f"{name} must be a real number, got {value!r:.80}{hint}.", fix)
        )
    number = float(value)
    if math.isnan(number):
        raise ConfigError(_message(f"{name} must be a number, got {value!r}.", fix))
    return number


def check_positive(name: str, value: object, *, fix: str = "", allow_inf: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (or ``inf`` when allowed)."""
    number = check_real(name, value, fix=fix)
    if not number > 0 or (number == math.inf and not allow_inf):
        what = "a number > 0" if allow_inf else "a finite number > 0"
        raise ConfigError(_message(f"{name} must be {what}, got {value!r}.", fix))
    return number


def check_nonnegative(name: str, value: object, *, fix: str = "") -> float:
    """Return ``value`` as a float if it is a finite number >= 0."""
    number = check_real(name, value, fix=fix)
    if not (number >= 0 and math.isfinite(number)):
        raise ConfigError(_message(f"{name} must be a finite number >= 0, got {value!r}.", fix))
    return number


def check_open_interval(name: str, value: object, low: float, high: float, *, fix: str) -> float:
    """Return ``value`` as a float if ``low < value < high``."""
    number = check_real(name, value, fix=fix)
    if not low < number < high:
        raise ConfigError(
            _message(f"{name} must lie strictly between {low:g} and {high:g}, got {value!r}.", fix)
        )
    return number


def check_fraction(name: str, value: object, *, fix: str = "") -> float:
    """Return ``value`` as a float if it lies in ``(0, 1]``."""
    number = check_real(name, value, fix=fix)
    if not 0.0 < number <= 1.0:
        raise ConfigError(_message(f"{name} must be a number in (0, 1], got {value!r}.", fix))
    return number


def check_ratio(name: str, value: object, *, minimum: float = 1.0, fix: str = "") -> float:
    """Return ``value`` as a float if it is finite and > ``minimum``."""
    number = check_real(name, value, fix=fix)
    if not (number > minimum and math.isfinite(number)):
        raise ConfigError(
            _message(f"{name} must be a finite number > {minimum:g}, got {value!r}.", fix)
        )
    return number


def check_norm_type(norm_type: object) -> float:
    """Return the ``p`` of a p-norm as a float > 0: a number, ``inf``, or the string ``"inf"``."""
    if isinstance(norm_type, str) and norm_type.lower() in ("inf", "max"):
        return math.inf
    fix = (
        "Use 2.0 for the Euclidean norm (the usual choice), 1.0, or 'inf' for the largest "
        "absolute value."
    )
    p = check_real("norm_type", norm_type, fix=fix)
    if not p > 0:
        raise ConfigError(
            f"norm_type must be a number > 0 or 'inf', got {norm_type!r}. {fix} (Orders <= 0 "
            "count or weigh the smallest entries and cannot bound a gradient.)"
        )
    return p


def check_int(
    name: str, value: object, *, minimum: int, maximum: int | None = None, fix: str = ""
) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) in ``[minimum, maximum]``."""
    allowed = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigTypeError(
            _message(f"{name} must be an integer {allowed}, got {value!r:.80}.", fix)
        )
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        raise ConfigError(_message(f"{name} must be an integer {allowed}, got {value!r}.", fix))
    return number


def check_bool(name: str, value: object, *, fix: str = "") -> bool:
    """Return ``value`` if it is ``True`` or ``False``; strings such as ``"no"`` are refused."""
    if not isinstance(value, bool):
        raise ConfigTypeError(_message(f"{name} must be True or False, got {value!r:.80}.", fix))
    return value


def check_choice(name: str, value: _T, choices: Collection[_T], *, fix: str = "") -> _T:
    """Return ``value`` if it is one of ``choices``."""
    try:
        allowed = value in choices
    except TypeError:  # an unhashable value against a set
        allowed = False
    if not allowed:
        listed = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(_message(f"{name} must be one of {listed}; got {value!r:.80}.", fix))
    return value


def check_names(name: str, value: object, *, fix: str = "") -> frozenset[str]:
    """Return ``value`` as a frozenset if it is a collection of strings (not one string)."""
    if isinstance(value, str):
        raise ConfigTypeError(
            _message(
                f"{name} must be a collection of names, got the string {value!r}. "
                f"Write {name}=[{value!r}].",
                fix,
            )
        )
    if not isinstance(value, Collection) or not all(isinstance(item, str) for item in value):
        raise ConfigTypeError(
            _message(f"{name} must be a collection of names (strings), got {value!r:.80}.", fix)
        )
    return frozenset(value)


def check_path(name: str, value: object, *, fix: str = "", what: str = "folder") -> str:
    """Return ``value`` as a string path if it is a non-empty ``str`` or ``os.PathLike``.

    The empty string is refused: it would silently mean the current folder. ``what`` ("folder"
    or "file") only words the message.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigTypeError(
            _message(f"{name} must be a {what} path (str or pathlib.Path), got {value!r:.80}.", fix)
        )
    path = os.fspath(value)
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            _message(
                f"{name} must name a {what}, got {value!r} (an empty path would mean the "
                "current folder).",
                fix,
            )
        )
    return path


def check_mapping(name: str, value: object, *, fix: str = "") -> Mapping[str, Any]:
    """Return ``value`` if it is a mapping (a state dict, a metadata dict)."""
    if not isinstance(value, Mapping):
        raise ConfigTypeError(
            _message(f"{name} must be a dict, got {type(value).__name__} {value!r:.80}.", fix)
        )
    return value


def check_interface(name: str, value: _T, methods: tuple[str, ...], *, fix: str = "") -> _T:
    """Return ``value`` if it has every method in ``methods`` (duck typing, checked up front).

    Used for objects the package calls later (sinks, schedulers, scalers), so that a wrong
    object fails when it is handed over, not in the middle of a training step.
    """
    missing = [method for method in methods if not callable(getattr(value, method, None))]
    if missing:
        wanted = ", ".join(f"{method}()" for method in methods)
        raise ConfigTypeError(
            _message(
                f"{name} must have {wanted}; got {type(value).__name__} {value!r:.80}, which "
                f"lacks {', '.join(missing)}.",
                fix,
            )
        )
    return value


def check_objects(
    name: str, values: object, methods: tuple[str, ...], *, fix: str = ""
) -> tuple[Any, ...]:
    """Return ``values`` as a tuple if it is a list of objects that each have ``methods``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigTypeError(_message(f"{name} must be a list, got {values!r:.80}.", fix))
    return tuple(check_interface(f"each of {name}", value, methods, fix=fix) for value in values)
