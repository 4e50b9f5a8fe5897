"""The exception tree of gradguard.

Every error says what was wrong (echoing the value with ``!r``), what is allowed, and what to do.
Catch :class:`GradguardError` to handle anything gradguard raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
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
]


class GradguardError(Exception):
    """Base class of every error gradguard raises on purpose."""


class ConfigError(GradguardError, ValueError):
    """A setting or argument is out of range or of the wrong kind."""


class EmptyParametersError(ConfigError):
    """The parameters were an exhausted iterator (``model.parameters()`` used twice)."""


class NoGradientsError(GradguardError, RuntimeError):
    """Parameters were given but none of them holds a gradient."""


class UnsupportedGradientError(GradguardError, TypeError):
    """A gradient's layout, dtype or device combination cannot be handled."""


class UnsupportedModelError(GradguardError, TypeError):
    """A model or module is of a kind an analysis or remedy cannot handle (the message names one
    that it can)."""


class NonFiniteError(GradguardError, FloatingPointError):
    """A value that must be finite (loss, gradient norm, parameter) is NaN or infinite."""


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


def check_positive(name: str, value: float, *, fix: str = "") -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise :class:`ConfigError`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a positive number, got {value!r}. {fix}".rstrip()
        ) from None
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}. {fix}".rstrip())
    return number
