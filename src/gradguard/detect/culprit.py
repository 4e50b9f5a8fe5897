"""Culprit attribution: which tensors grew most relative to their own baseline, and since when."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

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
        full = None if obs.tensor_norms is None else _AllNorms(obs.tensor_norms, self.baselines)
        if self.seen <= self.warmup:
            if full is not None:
                self._refresh(full)
            return []
        if full is None:
            ratios = {
                name: r for name, value in obs.top if (r := self._ratio(name, value)) is not None
            }
        else:
            ratios = self._ratios_that_matter(full)
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
        if full is not None:
            self._refresh(full)  # after scoring: a spike is judged by the old baseline
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

    def _ratios_that_matter(self, full: _AllNorms) -> dict[str, float]:
        """:meth:`_ratio` of the tensors at or near ``min_ratio`` and of those in an episode.

        The others can neither start nor end an episode, so their ratio (an exp each) is not
        taken: the stacked logs pick the few that need one, with a margin far wider than the
        rounding of ``log`` and ``exp``, and those get the very value :meth:`_ratio` gives.
        """
        with np.errstate(invalid="ignore"):  # nan: no baseline or no log; never picked
            gap = np.minimum(full.logs - full.baselines, 700.0)
            near = gap >= math.log(self.min_ratio) - _LOG_MARGIN
        wanted = near | (~np.isfinite(full.values) & ~np.isnan(full.baselines))
        if self.active:
            wanted |= full.named(self.active)
        names, values = full.names, full.values
        ratios: dict[str, float] = {}
        for i in np.flatnonzero(wanted).tolist():  # the few culprits and open episodes
            name = names[i]
            ratio = self._ratio(name, float(values[i]))
            if ratio is not None:
                ratios[name] = ratio
        return ratios

    def _refresh(self, full: _AllNorms) -> None:
        """Move each baseline towards its tensor's log-norm, reusing the logs of ``full``."""
        keep = full.usable
        if self.active:
            keep = keep & ~full.named(self.active)  # an episode's baseline stays frozen
        known = ~np.isnan(full.baselines)
        moved = keep & known
        old = full.baselines[moved]
        updated = old + self.alpha * (full.logs[moved] - old)
        self.baselines.update(zip(full.select(moved), updated.tolist(), strict=True))
        new = keep & ~known
        if new.any():
            room = max(self.max_tensors - len(self.baselines), 0)
            new[np.flatnonzero(new)[room:]] = False  # only the first new tensors that fit
            self.baselines.update(zip(full.select(new), full.logs[new].tolist(), strict=True))

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


_LOG_MARGIN = 1e-9
"""How far below ``log(min_ratio)`` a log-ratio may be and still get its exact ratio taken."""


class _AllNorms:
    """Every per-tensor norm of one observation, stacked, with its log taken once.

    ``logs`` holds ``math.log`` of each finite, positive norm (``nan`` elsewhere): numpy's own
    vectorised log may differ from it in the last bit, and baselines must stay exactly what
    one ``math.log`` per tensor gave. ``baselines`` holds each tensor's baseline as scoring
    found it (``nan`` for a tensor without one). Tensor names are assumed distinct.
    """

    def __init__(self, norms: tuple[tuple[str, float], ...], baselines: Mapping[str, float]):
        count = len(norms)
        self.names: tuple[str, ...] = tuple(map(itemgetter(0), norms))
        values: Sequence[float] = tuple(map(itemgetter(1), norms))
        self.values = np.fromiter(values, np.float64, count)
        self.usable = np.isfinite(self.values) & (self.values > 0.0)
        all_usable = bool(self.usable.all())
        if not all_usable:  # math.log refuses 0 and below; those get nan
            values = np.where(self.usable, self.values, 1.0).tolist()
        self.logs = np.fromiter(map(math.log, values), np.float64, count)
        if not all_usable:
            self.logs[~self.usable] = math.nan
        self.baselines = np.fromiter(
            map(baselines.get, self.names, itertools.repeat(math.nan)), np.float64, count
        )

    def named(self, names: Mapping[str, object]) -> npt.NDArray[np.bool_]:
        """Which tensors have a name in ``names``."""
        return np.fromiter(map(names.__contains__, self.names), np.bool_, len(self.names))

    def select(self, mask: npt.NDArray[np.bool_]) -> Iterable[str]:
        """The names where ``mask`` is true, in order."""
        return self.names if mask.all() else itertools.compress(self.names, mask.tolist())


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _float_or_inf(value: float | None) -> float:
    return math.inf if value is None else float(value)
