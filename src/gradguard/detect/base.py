"""The detector interface and the small helpers every detector shares.

A detector is a small stateful object fed one :class:`~gradguard.records.Observation` per
optimizer step. It returns the alerts it raises for that step, keeps a fixed amount of memory,
and exposes all its mutable state through ``state_dict()`` / ``load_state_dict()``. Detectors are
pure Python on host floats: no torch, no device values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

# The argument checks live in errors.py; detectors import them from here as before.
from gradguard.errors import check_fraction, check_int, check_ratio
from gradguard.records import Alert, Observation

__all__ = [
    "LOSS_FLOOR",
    "Detector",
    "check_fraction",
    "check_int",
    "check_ratio",
    "culprit_names",
    "fmt",
    "nonfinite_names",
]


LOSS_FLOOR = 1e-3
"""The loss rules measure a jump or a level against at least this fraction of the run's highest
loss level: near a loss converged to ~0, float noise of 1e-9 is not a thousandfold jump."""


@runtime_checkable
class Detector(Protocol):
    """What the :class:`~gradguard.Monitor` needs from a detector.

    Two optional attributes tell the monitor what to measure beyond the cheap every-step set
    (global norm, finite flag, loss, top-k per-tensor norms):

    * ``param_norm_every: int | None``: measure the parameter norm every N optimizer steps.
    * ``tensor_norms_every: int | None``: transfer every per-tensor norm every N steps.

    Attributes:
        name: short registry name, written into each alert's ``detector`` field.
    """

    name: str

    def update(self, obs: Observation) -> list[Alert]:
        """Take one optimizer step's observation; return the alerts raised at this step."""

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as plain JSON-safe values."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`."""


def fmt(value: float | None) -> str:
    """A short human form of a number for alert messages (``3.2e+04``, ``17.5``, ``nan``)."""
    if value is None:
        return "none"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude != 0.0 and (magnitude >= 1e4 or magnitude < 1e-2):
        return f"{value:.2e}"
    return f"{value:.3g}"


def culprit_names(obs: Observation, limit: int = 3) -> tuple[str, ...]:
    """Names of the largest gradients of the step (non-finite ones first), at most ``limit``."""
    return tuple(name for name, _ in obs.top[:limit])


def nonfinite_names(obs: Observation) -> tuple[str, ...]:
    """Names of the transferred tensors whose gradient norm is NaN or infinite."""
    pairs = obs.tensor_norms if obs.tensor_norms is not None else obs.top
    return tuple(name for name, value in pairs if not math.isfinite(value))
