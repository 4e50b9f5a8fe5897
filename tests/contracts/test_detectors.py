"""One contract over every registered detector: bad inputs, empty history, state, memory.

Boundedness argument, checked below: every detector keeps its history in rings of fixed
capacity, counters, and dictionaries keyed by tensor names (capped). So the number of stored
values stops growing once the rings are full, however many steps follow.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from gradguard.detect import REGISTRY, Detector, make
from gradguard.records import Alert, Observation

NAMES = sorted(REGISTRY)
BAD = [math.nan, math.inf, -math.inf, 1e308, 3.4e38, 0.0, -1.0, 1e-300]


def _obs(
    step: int, norm: float, loss: float | None, *, scale: float = 1.0, weights: float = 10.0
) -> Observation:
    names = ("emb", "rnn.w", "head")
    norms = (0.6 * norm, 0.3 * norm * scale, 0.1 * norm)
    top = tuple(sorted(zip(names, norms, strict=True), key=lambda p: -p[1]))
    return Observation(
        step=step,
        loss=loss,
        total_norm=norm,
        finite=math.isfinite(norm),
        top=top,
        num_tensors=3,
        param_norm=weights if step % 10 == 0 else None,
        tensor_norms=tuple(zip(names, norms, strict=True)) if step % 10 == 0 else None,
    )


def _trace(n: int, seed: int, start: int = 0) -> list[Observation]:
    """Noisy healthy steps, a few spikes and non-finite steps, then an exponential blow-up."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        norm = math.exp(rng.gauss(0.0, 0.4)) * (1.3 ** max(0, i - int(0.7 * n)))
        loss = 2.0 * math.exp(rng.gauss(0.0, 0.2)) * (1.2 ** max(0, i - int(0.75 * n)))
        if rng.random() < 0.03:
            norm *= 50.0
        if rng.random() < 0.02:
            norm = math.nan
        if rng.random() < 0.02:
            loss = math.inf
        weights = 10.0 * (1.0 + i / 1000.0) * (1.1 ** max(0, i - int(0.7 * n)))
        scale = 30.0 if i > 0.7 * n else 1.0
        out.append(_obs(start + i, norm, loss, scale=scale, weights=weights))
    return out


def _json_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    # allow_nan=False: a NaN or infinity inside a detector's state fails here.
    loaded: dict[str, Any] = json.loads(json.dumps(state, allow_nan=False))
    return loaded


def _leaves(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_leaves(v) for v in value.values()) + len(value)
    if isinstance(value, (list, tuple)):
        return sum(_leaves(v) for v in value)
    return 1


@pytest.mark.parametrize("name", NAMES)
def test_registered_detector_has_the_interface(name: str) -> None:
    detector = make(name)
    assert isinstance(detector, Detector)
    assert detector.name == name
    _json_round_trip(detector.state_dict())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", BAD)
def test_bad_values_never_crash_nor_enter_statistics(name: str, bad: float) -> None:
    detector = make(name)
    for obs in _trace(40, seed=1):
        detector.update(obs)
    weird = Observation(
        step=40,
        loss=bad,
        total_norm=bad,
        finite=math.isfinite(bad),
        top=(("emb", bad), ("head", 1.0)),
        num_tensors=2,
        param_norm=bad,
        tensor_norms=(("emb", bad), ("head", 1.0)),
    )
    for obs in [weird, *_trace(10, seed=2, start=41)]:
        alerts = detector.update(obs)
        assert isinstance(alerts, list) and all(isinstance(a, Alert) for a in alerts)
        assert all(a.step == obs.step and a.detector == name and a.message for a in alerts)
    _json_round_trip(detector.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_empty_history_handles_any_first_step(name: str) -> None:
    firsts = [
        Observation(step=0, loss=None, total_norm=math.nan, finite=False),
        Observation(step=0, loss=math.nan, total_norm=1.0, finite=True),
        Observation(step=0, loss=1.0, total_norm=0.0, finite=True, param_norm=math.inf),
    ]
    for first in firsts:
        detector = make(name)
        assert all(isinstance(a, Alert) for a in detector.update(first))
        _json_round_trip(detector.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trip_mid_run_gives_identical_alerts(name: str) -> None:
    trace = _trace(160, seed=3)
    original = make(name)
    for obs in trace[:90]:
        original.update(obs)
    resumed = make(name)
    resumed.load_state_dict(_json_round_trip(original.state_dict()))
    assert resumed.state_dict() == original.state_dict()
    after_original = [original.update(obs) for obs in trace[90:]]
    after_resumed = [resumed.update(obs) for obs in trace[90:]]
    assert after_resumed == after_original
    # The blow-up is seen (the early-explosion rules end with their window, before step 90).
    assert any(after_original) or name in ("threshold", "early_explosion", "oscillation")


@pytest.mark.parametrize("name", NAMES)
def test_memory_stays_bounded(name: str) -> None:
    detector = make(name)
    healthy = [o for o in _trace(200, seed=4) if o.step < 140]
    sizes = []
    for lap in range(20):
        for obs in healthy:
            # Step numbers past a million: long runs, same bounded state.
            shifted = Observation(
                step=1_000_000 + lap * 200 + obs.step,
                loss=obs.loss,
                total_norm=obs.total_norm,
                finite=obs.finite,
                top=obs.top,
                num_tensors=obs.num_tensors,
                param_norm=obs.param_norm,
                tensor_norms=obs.tensor_norms,
            )
            detector.update(shifted)
        sizes.append(_leaves(detector.state_dict()))
    assert sizes[-1] == sizes[-4], sizes  # stored values stopped growing once rings filled
