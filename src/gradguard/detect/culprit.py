"""Culprit attribution: which tensors grew most relative to their own baseline, and since when."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradguard.detect.base import check_fraction, check_int, check_ratio, fmt
from gradguard.records import Alert, AlertKind, Observation, Severity

__all__ = ["CulpritDetector"]


class CulpritDetector:
    """Name the tensors whose gradient grew far beyond their own usual size.

    The largest gradient is not always the guilty one: an embedding may always dominate the norm
    while a small recurrent matrix is the one blowing up. This detector keeps, per tensor, an
    exponential moving average of ``log(norm)`` (its baseline), refreshed from the full list of
    per-tensor norms every ``every`` optimizer steps (a cost tier). Every step it compares the
    top-k tensors of the observation with their baselines. A tensor at least ``min_ratio`` times
    its baseline starts an *episode*: an info alert names it and the step it started, and its
    baseline is frozen until its ratio falls below ``release_ratio``.

    Memory is bounded by the number of distinct tensor names, capped at ``max_tensors``.

    Args:
        every: refresh baselines from all per-tensor norms every this many optimizer steps.
        alpha: weight of the newest value in each baseline's moving average.
        min_ratio: norm / baseline ratio that makes a tensor a culprit (> 1).
        release_ratio: ratio below which an episode ends (> 1, <= ``min_ratio``).
        warmup: optimizer steps observed before culprits are named.
        max_tensors: the most tensors tracked.
    """

    name = "culprit"

    def __init__(
        self,
        *,
        every: int = 10,
        alpha: float = 0.2,
        min_ratio: float = 10.0,
        release_ratio: float = 3.0,
        warmup: int = 20,
        max_tensors: int = 4096,
    ) -> None:
        self.tensor_norms_every = check_int("every", every, minimum=1)
        self.alpha = check_fraction("alpha", alpha)
        self.min_ratio = check_ratio("min_ratio", min_ratio)
        self.release_ratio = min(check_ratio("release_ratio", release_ratio), self.min_ratio)
        self.warmup = check_int("warmup", warmup, minimum=0)
        self.max_tensors = check_int("max_tensors", max_tensors, minimum=1)
        self.baselines: dict[str, float] = {}
        self.active: dict[str, tuple[int, float]] = {}
        self.worst: dict[str, float] = {}
        self.seen = 0

    def update(self, obs: Observation) -> list[Alert]:
        """Refresh baselines when all norms came, then look for tensors far above theirs."""
        self.seen += 1
        if self.seen <= self.warmup:
            if obs.tensor_norms is not None:
                self._refresh(obs.tensor_norms)
            return []
        scored = obs.tensor_norms if obs.tensor_norms is not None else obs.top
        ratios = {name: r for name, value in scored if (r := self._ratio(name, value)) is not None}
        started: list[tuple[str, float]] = []
        for name, ratio in ratios.items():
            if ratio < self.min_ratio:
                continue
            if name in self.active:
                since, peak = self.active[name]
                self.active[name] = (since, max(peak, ratio))
            else:
                self.active[name] = (obs.step, ratio)
                started.append((name, ratio))
            if name in self.worst or len(self.worst) < self.max_tensors:
                self.worst[name] = max(self.worst.get(name, 0.0), ratio)
        self._release(obs, ratios)
        if obs.tensor_norms is not None:
            self._refresh(obs.tensor_norms)  # after scoring: a spike is judged by the old baseline
        if not started:
            return []
        started.sort(key=lambda pair: -pair[1])
        lead, ratio = started[0]
        return [
            Alert(
                step=obs.step,
                severity=Severity.INFO,
                kind=AlertKind.CULPRIT,
                message=(
                    f"{lead} has a gradient {fmt(ratio)}x its own usual size since step "
                    f"{obs.step}: look at this layer first (initialisation, learning rate, inputs)."
                ),
                detector=self.name,
                culprits=tuple(name for name, _ in started),
                value=ratio,
                threshold=self.min_ratio,
            )
        ]

    def ranking(self, limit: int = 5) -> list[tuple[str, float]]:
        """Tensors with the largest ratio to their baseline ever seen, largest first."""
        ordered = sorted(self.worst.items(), key=lambda item: -item[1])
        return ordered[:limit]

    def _ratio(self, name: str, value: float) -> float | None:
        baseline = self.baselines.get(name)
        if baseline is None:
            return None
        if not math.isfinite(value):
            return math.inf
        if value <= 0.0:
            return 0.0
        return math.exp(min(math.log(value) - baseline, 700.0))

    def _refresh(self, norms: tuple[tuple[str, float], ...]) -> None:
        for name, value in norms:
            if name in self.active or not (math.isfinite(value) and value > 0.0):
                continue
            log_value = math.log(value)
            old = self.baselines.get(name)
            if old is None:
                if len(self.baselines) < self.max_tensors:
                    self.baselines[name] = log_value
            else:
                self.baselines[name] = old + self.alpha * (log_value - old)

    def _release(self, obs: Observation, ratios: dict[str, float]) -> None:
        # A tensor absent from the top-k is at most as large as the smallest top-k norm.
        floor = obs.top[-1][1] if obs.top and obs.tensor_norms is None else 0.0
        for name in list(self.active):
            ratio = ratios.get(name)
            if ratio is None:
                ratio = self._ratio(name, floor) if floor > 0.0 else 0.0
            if ratio is not None and ratio < self.release_ratio:
                del self.active[name]

    def state_dict(self) -> dict[str, Any]:
        """Baselines, open episodes, worst ratios and steps seen."""
        return {
            "seen": self.seen,
            "baselines": dict(self.baselines),
            "active": {
                name: [since, _finite_or_none(peak)] for name, (since, peak) in self.active.items()
            },
            "worst": {name: _finite_or_none(r) for name, r in self.worst.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.seen = int(state["seen"])
        self.baselines = {str(k): float(v) for k, v in state["baselines"].items()}
        self.active = {
            str(k): (int(since), _float_or_inf(peak))
            for k, (since, peak) in state["active"].items()
        }
        self.worst = {str(k): _float_or_inf(v) for k, v in state["worst"].items()}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _float_or_inf(value: float | None) -> float:
    return math.inf if value is None else float(value)
