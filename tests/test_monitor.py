"""Monitor: one host transfer per step, records to sinks, summary, history, state round-trip."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn

import gradguard as gg
from gradguard.detect import SpikeDetector
from gradguard.errors import ConfigError, NoGradientsError
from gradguard.records import (
    ActionKind,
    Alert,
    AlertKind,
    Observation,
    Reason,
    Severity,
    StepRecord,
)
from gradguard.sinks import ConsoleSink
from tests.host_sync import count_host_syncs


class ListSink:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.closed = False

    def write(self, record: StepRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _backward(model: nn.Module, scale: float = 1.0) -> torch.Tensor:
    model.zero_grad()
    loss = model(torch.randn(16, 4)).pow(2).mean() * scale
    loss.backward()
    return loss


@pytest.mark.parametrize("preset", ["default", "strict", "textbook"])
def test_exactly_one_host_transfer_per_observe(preset: str) -> None:
    model = _model()
    monitor = gg.Monitor(model, preset=preset)  # type: ignore[arg-type]
    for _ in range(12):  # covers the steps that also measure parameter and per-tensor norms
        loss = _backward(model)
        with count_host_syncs() as calls:
            monitor.observe(loss)
        assert calls == ["tolist"]


def test_a_blow_up_is_reported_with_records_summary_and_history() -> None:
    model = _model()
    sink = ListSink()
    monitor = gg.Monitor(model, sinks=[sink], history_size=8)
    for step in range(40):
        alerts = monitor.observe(_backward(model, scale=1.0 if step < 35 else 1e2 ** (step - 34)))
        assert all(a.step == step for a in alerts)
    assert monitor.step == 40 and monitor.last is not None and monitor.last.step == 39
    assert len(sink.records) == 40
    assert [r.reason for r in sink.records[:35]] == [Reason.HEALTHY] * 35
    assert all(r.action is ActionKind.PROCEED and r.applied for r in sink.records)
    blown = sink.records[35]
    assert blown.reason in (Reason.SPIKE, Reason.LOSS_SPIKE) and blown.message and blown.alerts
    summary = monitor.summary()
    assert summary["steps"] == 40 and not summary["healthy"]
    assert summary["first_alert_step"] == 35
    # Spikes at steps 35-39: one incident, told as a warning and once more as it turned
    # critical; the loss spikes beside them and the later spikes are repeats.
    assert summary["counts"]["grad_norm_spike"] == {"warning": 1, "critical": 1}
    assert "loss_spike" not in summary["by_kind"]
    assert summary["alerts_with_repeats"] == summary["alerts"] + 3 + 5
    assert summary["max_norm"] == pytest.approx(monitor.last.total_norm)
    assert set(summary["culprits"]) <= {name for name, _ in model.named_parameters()}
    assert len(monitor.history.observations) == 8
    assert monitor.history.observations[-1].tensor_norms is None
    json.dumps(summary)
    monitor.close()
    assert sink.closed


class _AlarmEveryStep:
    """A detector that raises the same warning at every step from ``start`` on."""

    name = "alarm"

    def __init__(self, start: int) -> None:
        self.start = start

    def update(self, obs: Observation) -> list[Alert]:
        if obs.step < self.start:
            return []
        return [Alert(obs.step, Severity.WARNING, AlertKind.GROWTH_TREND, "norm keeps growing")]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


def test_an_incident_with_repeats_is_counted_and_shown_once() -> None:
    model = _model()
    buffer = io.StringIO()
    console = ConsoleSink(every=100, console=Console(file=buffer, width=200, color_system=None))
    monitor = gg.Monitor(model, detectors=[_AlarmEveryStep(5)], sinks=[console])
    for _ in range(12):  # the warning at steps 5-11: one incident, then six repeats
        monitor.observe(_backward(model))
    summary = monitor.summary()
    assert summary["counts"] == {"growth_trend": {"warning": 1}}
    assert summary["by_kind"] == {"growth_trend": 1} and summary["by_severity"] == {"warning": 1}
    assert summary["alerts"] == 1 and summary["alerts_with_repeats"] == 7
    assert sum("WARNING" in line for line in buffer.getvalue().splitlines()) == 1
    resumed = gg.Monitor(model, detectors=[_AlarmEveryStep(5)])
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.summary() == summary
    older = {k: v for k, v in monitor.state_dict().items() if k != "repeats"}
    resumed.load_state_dict(older)  # saved before repeats were kept apart: every alert counts
    assert resumed.summary()["by_kind"] == {"growth_trend": 7}


@pytest.mark.parametrize("at", [0, 1, 19, 20, 30])
@pytest.mark.parametrize("where", ["grad", "loss", "inf"])
def test_an_injected_nan_always_raises_a_critical_alert(at: int, where: str) -> None:
    torch.manual_seed(0)
    model = _model()
    monitor = gg.Monitor(model)
    for step in range(31):
        loss = _backward(model)
        if step == at:
            if where == "loss":
                loss = loss * math.nan
            else:
                model[0].weight.grad[0, 0] = math.nan if where == "grad" else math.inf  # type: ignore[index]
        alerts = monitor.observe(loss)
        critical = [a for a in alerts if a.severity is gg.records.Severity.CRITICAL]
        assert bool(critical) == (step == at)
    assert monitor.summary()["first_critical_step"] == at


def test_given_stats_are_used_instead_of_measuring_again() -> None:
    model = _model()
    loss = _backward(model)
    stats = gg.measure(model)
    model.zero_grad(set_to_none=True)  # measuring now would fail: no gradients left
    monitor = gg.Monitor(model, preset="textbook")
    assert monitor.observe(loss, stats=stats) == []
    assert monitor.last is not None and monitor.last.total_norm == stats.total_norm.item()
    assert monitor.last.param_norm is not None
    with pytest.raises(NoGradientsError):
        monitor.observe(loss)


def test_a_clip_coefficient_lands_in_the_observation_with_no_extra_transfer() -> None:
    model = _model()
    monitor = gg.Monitor(model)
    monitor.observe(_backward(model))
    assert monitor.last is not None and monitor.last.clip_coef is None
    loss = _backward(model)
    with count_host_syncs() as calls:
        monitor.observe(loss, clip_coef=torch.tensor(0.375))
    assert calls == ["tolist"]
    assert monitor.last is not None and monitor.last.clip_coef == 0.375


def test_state_round_trip_resumes_with_identical_alerts() -> None:
    torch.manual_seed(1)
    model = _model()
    scales = [1.0] * 30 + [30.0**i for i in range(1, 11)]
    losses = [_backward(model, s) for s in scales[:1]]
    first = gg.Monitor(model)
    second = gg.Monitor(model)
    grads = []
    for s in scales:
        losses.append(_backward(model, s))
        grads.append([p.grad.clone() for p in model.parameters()])  # type: ignore[union-attr]
    for i in range(20):
        _restore(model, grads[i])
        first.observe(losses[i + 1])
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert second.step == 20 and second.summary() == first.summary()
    for i in range(20, 40):
        _restore(model, grads[i])
        assert second.observe(losses[i + 1]) == first.observe(losses[i + 1])
    assert not first.summary()["healthy"]


def _restore(model: nn.Module, grads: list[torch.Tensor]) -> None:
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()


def test_bad_arguments_teach() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="preset must be one of"):
        gg.Monitor(model, preset="loud")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="detectors must have"):
        gg.Monitor(model, detectors=[object()])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="top_k"):
        gg.Monitor(model, top_k=-1)
    monitor = gg.Monitor(model, detectors=[SpikeDetector()])
    with pytest.raises(ConfigError, match="saved monitor state has detectors"):
        monitor.load_state_dict(gg.Monitor(model).state_dict())
    assert "spike" in repr(monitor)
