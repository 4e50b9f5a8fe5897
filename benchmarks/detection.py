"""Early warning: does a detector warn before the run diverges, and stay quiet when it does not?

Runs every scenario of ``gradguard.scenarios`` (seeded, CPU) once per detector configuration,
with a live ``gg.Monitor`` holding that configuration's detectors (monitors never change the
run, so each configuration sees the same trajectory). For each configuration:

* recall: exploding runs with a warning-or-critical alert at or before the divergence step, not
  earlier than ``--horizon`` steps before it (an alarm that early is *premature*: the run still
  looked healthy, so it counts as a false alarm of that run, and the next alarm is used);
* lead: divergence step minus first (non-premature) alarm step; median over caught runs, and
  over the gradual runs alone;
* false-alarm runs: healthy runs with any warning or critical alert.

Configurations: gradguard's default preset; the textbook preset (five-strategy monitor); the
textbook threshold+growth detector; a NaN-only check (what ``clip_grad_norm_(...,
error_if_nonfinite=True)`` catches); and a ZClip-style EMA z-score rule (z > 2.5 after a
25-step warm-up, Kumar et al. 2025). Baselines get the benefit of the doubt: a non-finite norm
counts as an alarm for every one of them.

Prints a markdown table and one summary line. Usage: python benchmarks/detection.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

import gradguard as gg
from gradguard import scenarios
from gradguard.detect import Detector, NonFiniteDetector, ThresholdGrowthDetector, preset
from gradguard.records import Alert, AlertKind, Observation, Severity


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


@dataclasses.dataclass
class Outcome:
    """One configuration on one scenario."""

    divergence: int | None
    alarms: list[int]  # steps with a warning or critical alert
    kind: str


def run_scenario(
    scenario: scenarios.Scenario, detectors: list[Detector]
) -> tuple[scenarios.Trace, list[int]]:
    """Train ``scenario`` unguarded under a Monitor of ``detectors``: its trace and alarm steps."""
    alarms: list[int] = []
    monitor: gg.Monitor | None = None

    def hook(run: scenarios.TrainingRun, step: int, loss: Tensor) -> None:
        nonlocal monitor
        if monitor is None:
            monitor = gg.Monitor(run.model, detectors=detectors)
        alerts = monitor.observe(loss)
        if any(a.severity is not Severity.INFO for a in alerts):
            alarms.append(step)

    return scenarios.train(scenario, hook), alarms


def score(outcomes: Mapping[str, Outcome], horizon: int) -> dict[str, Any]:
    """Recall, leads, premature alarms and false-alarm runs of one configuration."""
    caught, leads, gradual, premature, false_runs = 0, [], [], 0, 0
    exploding = healthy = 0
    per: dict[str, str] = {}
    for name, out in outcomes.items():
        if out.divergence is None:
            healthy += 1
            false_runs += bool(out.alarms)
            per[name] = f"FA x{len(out.alarms)}" if out.alarms else "quiet"
            continue
        exploding += 1
        early = [s for s in out.alarms if s < out.divergence - horizon]
        premature += bool(early)
        timely = [s for s in out.alarms if out.divergence - horizon <= s <= out.divergence]
        if timely:
            caught += 1
            lead = out.divergence - timely[0]
            leads.append(lead)
            if out.kind == "gradual":
                gradual.append(lead)
            per[name] = f"{lead}" + ("*" if early else "")
        else:
            per[name] = "miss" + ("*" if early else "")
    return {
        "recall": (caught, exploding),
        "lead": statistics.median(leads) if leads else None,
        "gradual_lead": statistics.median(gradual) if gradual else None,
        "premature": premature,
        "false_alarms": (false_runs, healthy),
        "per": per,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the per-scenario table")
    parser.add_argument("--horizon", type=int, default=100, help="earliest useful lead (steps)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()

    names = scenarios.names()
    results: dict[str, dict[str, Any]] = {}
    divergence: dict[str, int | None] = {}
    for config, build in CONFIGS.items():
        outcomes = {}
        for name in names:
            scenario = scenarios.get(name)
            trace, alarms = run_scenario(scenario, build())
            divergence[name] = trace.divergence_step
            outcomes[name] = Outcome(trace.divergence_step, alarms, scenario.kind)
        results[config] = score(outcomes, args.horizon)

    print(
        f"{len(names)} scenarios, alarms = first warning or critical alert; lead = divergence"
        f" step - alarm step (alarms > {args.horizon} steps early are premature)\n"
    )
    print("| configuration | recall | false-alarm runs | premature | median lead | gradual lead |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config, r in results.items():
        print(
            f"| {config} | {r['recall'][0]}/{r['recall'][1]} | {r['false_alarms'][0]}/"
            f"{r['false_alarms'][1]} | {r['premature']} | {_fmt(r['lead'])} "
            f"| {_fmt(r['gradual_lead'])} |"
        )
    if not args.quick:
        print("\nper scenario: lead in steps, miss, quiet, or FA xN (false alarms); * = premature")
        print("| scenario | kind | divergence | " + " | ".join(CONFIGS) + " |")
        print("| --- | --- | --- | " + " | ".join("---" for _ in CONFIGS) + " |")
        for name in names:
            cells = " | ".join(results[c]["per"][name] for c in CONFIGS)
            kind = scenarios.get(name).kind
            print(f"| {name} | {kind} | {_fmt(divergence[name])} | {cells} |")
    parts = []
    for config, r in results.items():
        parts.append(
            f"{config} recall {r['recall'][0]}/{r['recall'][1]} false-alarms "
            f"{r['false_alarms'][0]}/{r['false_alarms'][1]} median lead {_fmt(r['lead'])} "
            f"(gradual {_fmt(r['gradual_lead'])})"
        )
    print(f"\n({time.perf_counter() - start:.0f} s)")
    print("detection: " + " | ".join(parts))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


if __name__ == "__main__":
    main()
