"""Hand-built observations for detector tests."""

from __future__ import annotations

import math

from gradguard.records import Alert, Observation


def obs(
    step: int,
    norm: float,
    loss: float | None = None,
    *,
    param_norm: float | None = None,
    top: tuple[tuple[str, float], ...] | None = None,
    tensor_norms: tuple[tuple[str, float], ...] | None = None,
) -> Observation:
    """One observation with ``top`` defaulting to a single tensor ``w`` holding the whole norm."""
    return Observation(
        step=step,
        loss=loss,
        total_norm=norm,
        finite=math.isfinite(norm),
        top=(("w", norm),) if top is None else top,
        num_tensors=1 if top is None else len(top),
        param_norm=param_norm,
        tensor_norms=tensor_norms,
    )


def kinds(alerts: list[Alert]) -> list[tuple[str, str]]:
    """``(kind, severity)`` pairs of ``alerts``, for compact assertions."""
    return [(a.kind.value, a.severity.value) for a in alerts]
