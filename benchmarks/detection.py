"""Early warning on the generated family: does a detector warn before a run goes wrong?

Every run of ``gradguard.scenarios.generate`` is trained once without protection, with one
``gg.Monitor`` per detector configuration observing it (monitors only read the gradients, so
every configuration sees the same trajectory). The unprotected outcome labels the run
(``generate.classify``): *exploding*, *healthy* or *tolerated*. For each configuration and half:

* recall: exploding runs with a warning or critical alert in the window that ends at the
  incident step (``generate.incident_step``) and starts ``--horizon`` steps before it, or at the
  fault when the run has one (an alarm before the fault cannot be about it);
* false-alarm warnings: warning or critical alerts shown on healthy runs (and how many runs had
  any alarm at all);
* lead: incident step minus the first alarm in the window; the median over caught runs and over
  gradual explosions (the incident came 10 or more steps after its fault, or after the start
  when the rate alone is the cause);
* alerts per incident: the median number of warning or critical alerts shown from the first
  alarm to the incident step of a caught run (1 is ideal; dozens drown the message).

"Shown" is what a person sees: the Monitor marks the later alerts of an incident it already
reported as repeats (``gradguard.detect.episode.IncidentLatch``; an escalation from warning to
critical is shown once more), and repeats are not counted; recall and lead count every alarm,
repeats included (the policy acts on them).

Configurations: gradguard's default preset; the textbook preset; the textbook threshold+growth
detector; a NaN-only check (what ``clip_grad_norm_(..., error_if_nonfinite=True)`` catches); a
ZClip-style EMA z-score rule (z > 2.5 after a 25-step warm-up, Kumar et al. 2025).

The family includes the appended ``runaway`` runs (``generate.GRADUAL``: a loss weight that
grows 1.25x per step from an early fault), the slow explosions that give the gradual lead its
meaning; ``--sampled-only`` leaves them out.

Usage: .venv/bin/python benchmarks/detection.py [--split tune|validate|all] [--quick] [--jobs N]
    [--sampled-only]
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

import gradguard as gg
from family import family_parser, family_specs, run_tasks
from gradguard.detect import Detector, NonFiniteDetector, ThresholdGrowthDetector, preset
from gradguard.detect.episode import reported
from gradguard.records import Alert, AlertKind, Observation, Severity
from gradguard.scenarios import generate
from gradguard.scenarios.generate import GeneratedRun, GeneratedScenario, RunResult


class EMAZScoreDetector:
    """ZClip-style spike rule: z-score of the norm against an EMA mean and variance.

    After ``warmup`` steps that seed the mean and variance, a norm with
    ``z = (norm - mean) / std > z_threshold`` is an alarm; the statistics are then updated with
    the norm clipped to ``mean + z_threshold * std``, as ZClip does.

    References:
        A. Kumar et al., "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", 2025.
    """

    name = "zclip"

    def __init__(self, alpha: float = 0.97, z_threshold: float = 2.5, warmup: int = 25) -> None:
        self.alpha, self.z_threshold, self.warmup = alpha, z_threshold, warmup
        self.seed: list[float] = []
        self.mean = 0.0
        self.var = 0.0

    def update(self, obs: Observation) -> list[Alert]:
        norm = obs.total_norm
        if not math.isfinite(norm):
            return [self._alert(obs, norm, "non-finite gradient norm")]
        if len(self.seed) < self.warmup:
            self.seed.append(norm)
            if len(self.seed) == self.warmup:
                self.mean = statistics.fmean(self.seed)
                self.var = statistics.pvariance(self.seed)
            return []
        std = math.sqrt(self.var)
        z = (norm - self.mean) / std if std > 0 else 0.0
        alerts = [self._alert(obs, z, f"z-score {z:.1f}")] if z > self.z_threshold else []
        value = min(norm, self.mean + self.z_threshold * std) if alerts else norm
        self.mean = self.alpha * self.mean + (1 - self.alpha) * value
        self.var = self.alpha * self.var + (1 - self.alpha) * (value - self.mean) ** 2
        return alerts

    def _alert(self, obs: Observation, value: float, what: str) -> Alert:
        return Alert(
            step=obs.step,
            severity=Severity.WARNING,
            kind=AlertKind.GRAD_NORM_SPIKE,
            message=f"{what} at step {obs.step}",
            detector=self.name,
            value=value,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"seed": list(self.seed), "mean": self.mean, "var": self.var}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seed = list(state["seed"])
        self.mean, self.var = state["mean"], state["var"]


CONFIGS: dict[str, Callable[[], list[Detector]]] = {
    "gradguard": lambda: preset("default"),
    "textbook": lambda: preset("textbook"),
    "seeds-threshold-growth": lambda: [ThresholdGrowthDetector()],
    "nan-only": lambda: [NonFiniteDetector(check_loss=False)],
    "zclip-style": lambda: [EMAZScoreDetector()],
}


Alarms = dict[str, list[tuple[int, int]]]
"""Configuration -> ``(step, warning-or-critical alerts shown at that step)`` for every step with
a warning or critical alert (the count is 0 when all of them were repeats)."""


class Watch:
    """The unprotected step, with every configuration's monitor observing it first."""

    def __init__(self, run: GeneratedRun) -> None:
        self.run = run
        self.monitors = {name: gg.Monitor(run.model, detectors=b()) for name, b in CONFIGS.items()}
        self.alarms: Alarms = {name: [] for name in CONFIGS}
        self.step = 0

    def _observe(self, loss: Tensor) -> None:
        for name, monitor in self.monitors.items():
            alerts = monitor.observe(loss)
            if any(a.severity is not Severity.INFO for a in alerts):
                self.alarms[name].append((self.step, len(reported(alerts))))

    def __call__(self, loss: Tensor | None, closure: Callable[[], Tensor] | None) -> None:
        run = self.run
        if closure is not None:

            def watched() -> Tensor:
                value = closure()
                self._observe(value.detach())
                return value

            run.optimizer.step(watched)
        elif run.scaler is not None:
            assert loss is not None
            run.scaler.unscale_(run.optimizer)
            self._observe(loss.detach())
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            assert loss is not None
            self._observe(loss.detach())
            run.optimizer.step()
        run.step_scheduler()
        self.step += 1


def _work(spec: GeneratedScenario) -> tuple[str, tuple[RunResult, Alarms]]:
    watches: list[Watch] = []

    def method(run: GeneratedRun) -> Watch:
        watches.append(Watch(run))
        return watches[0]

    result = generate.run(spec, method)
    return spec.id, (result, watches[0].alarms)


def score(
    specs: list[GeneratedScenario],
    results: Mapping[str, tuple[RunResult, Alarms]],
    config: str,
    horizon: int,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Recall, false alarms, leads and alerts per incident of one configuration on ``specs``."""
    caught = exploding = healthy = fa_runs = fa_alerts = 0
    leads: list[int] = []
    gradual: list[int] = []
    per_incident: list[int] = []
    cells: dict[str, str] = {}
    for spec in specs:
        result, alarms = results[spec.id]
        steps = alarms[config]
        label = generate.classify(spec, result)
        if label == "healthy":
            healthy += 1
            count = sum(n for _, n in steps)
            fa_alerts += count
            fa_runs += bool(steps)
            cells[spec.id] = f"FA x{count}" if steps else "quiet"
            continue
        if label != "exploding":
            cells[spec.id] = f"({len(steps)} alarmed)" if steps else "-"
            continue
        exploding += 1
        incident = generate.incident_step(spec, result)
        # An alarm before the fault cannot be about it (unless the run broke before the fault).
        fault = spec.fault_step if 0 <= spec.fault_step <= incident else 0
        start = max(incident - horizon, fault)
        timely = [(s, n) for s, n in steps if start <= s <= incident]
        if not timely:
            cells[spec.id] = "miss"
            continue
        caught += 1
        lead = incident - timely[0][0]
        leads.append(lead)
        if incident - fault >= 10:  # it took ten steps or more to go wrong
            gradual.append(lead)
        per_incident.append(sum(n for _, n in timely))
        cells[spec.id] = f"{lead}"
    return {
        "recall": (caught, exploding),
        "false_alarms": (fa_alerts, fa_runs, healthy),
        "lead": statistics.median(leads) if leads else None,
        "gradual": statistics.median(gradual) if gradual else None,
        "per_incident": statistics.median(per_incident) if per_incident else None,
    }, cells


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:g}"


def report(
    half: str,
    specs: list[GeneratedScenario],
    results: Mapping[str, tuple[RunResult, Alarms]],
    horizon: int,
) -> str:
    """Print one half's tables and return its summary."""
    scored = {c: score(specs, results, c, horizon) for c in CONFIGS}
    print(f"\n## {half}: {len(specs)} runs\n")
    print("per run: lead in steps, miss, quiet, or FA xN (false-alarm warnings)")
    print("| run | outcome | incident | " + " | ".join(CONFIGS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in CONFIGS) + " |")
    for spec in specs:
        result = results[spec.id][0]
        label = generate.classify(spec, result)
        incident = generate.incident_step(spec, result) if label == "exploding" else None
        cells = " | ".join(scored[c][1][spec.id] for c in CONFIGS)
        print(f"| {spec.id} | {label} | {_fmt(incident)} | {cells} |")
    print(
        "\n| configuration | recall | false-alarm warnings (runs) | median lead | gradual lead "
        "| alerts per incident |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    parts = []
    for config, (r, _) in scored.items():
        (caught, total), (alerts, runs, healthy) = r["recall"], r["false_alarms"]
        print(
            f"| {config} | {caught}/{total} | {alerts} ({runs}/{healthy}) | {_fmt(r['lead'])} "
            f"| {_fmt(r['gradual'])} | {_fmt(r['per_incident'])} |"
        )
        parts.append(
            f"{config} recall {caught}/{total} false-alarms {alerts} ({runs}/{healthy} runs) lead "
            f"{_fmt(r['lead'])} (gradual {_fmt(r['gradual'])}) alerts/incident "
            f"{_fmt(r['per_incident'])}"
        )
    return f"{half}: " + ", ".join(parts)


def main() -> None:
    parser = family_parser(__doc__.splitlines()[0], gradual=True)
    parser.add_argument("--horizon", type=int, default=100, help="earliest useful lead (steps)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    specs = family_specs(args)
    print(f"# Detection on {len(specs)} generated runs x {len(CONFIGS)} configurations")
    results = dict(run_tasks(_work, specs, args.jobs, 1))
    summaries = [
        report(half, [s for s in specs if s.split == half], results, args.horizon)
        for half in ("tune", "validate")
        if any(s.split == half for s in specs)
    ]
    print(f"\n({time.perf_counter() - start:.0f} s with --jobs {args.jobs})")
    print("detection: " + " | ".join(summaries))


if __name__ == "__main__":
    main()
