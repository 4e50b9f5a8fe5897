"""Rescue on held-out runs: do the guard's defaults hold on runs they were not tuned on?

``benchmarks/rescue.py`` runs the scenarios of ``gradguard.scenarios``, which the defaults were
tuned against. The runs here were written afterwards and are kept out of that catalogue on
purpose: other cells (GRU), optimizers (Adam, AdamW, RMSprop, SGD with momentum), losses
(cross-entropy that reaches exactly 0), schedules and failure causes. Use them to check that a
change of defaults generalises; do not tune on them, or write new ones first.

Each run is trained with no protection, ``clip_grad_norm_``
and ``clip_grad_value_`` at 1.0, AutoClip- and ZClip-style clippers, Guard defaults). A run is
*exploding* or *healthy* by construction; on healthy runs the guard must change nothing. The
loss ratio adds 1e-4 to both losses, as two runs that both reach ~0 are equally good.

Usage: .venv/bin/python benchmarks/rescue_heldout.py [--seeds N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import gradguard as gg
from gradguard.scenarios import Scenario, TrainingRun
from gradguard.scenarios.base import Batch, generator, mse
from gradguard.scenarios.models import SequenceRegressor, mlp

PEERS = ("none", "clip-norm", "clip-value", "autoclip", "zclip")
METHODS = (*PEERS, "gradguard")


# ------------------------------------------------------------------------------------ peers
class _ClipperPeer:
    """A gradguard clipper object run as a peer: measure, ``clip_``, then the optimizer step."""

    def __init__(self, clipper: gg.Clipper) -> None:
        self.clipper = clipper

    def __call__(self, params: list[Tensor]) -> bool:
        coef = self.clipper.clip_(gg.measure(params))
        return bool((coef < 1.0).any())  # a host read, for the interventions column only


def _peer_clipper(method: str) -> Callable[[list[Tensor]], bool]:
    if method == "clip-norm":
        return lambda ps: bool(torch.nn.utils.clip_grad_norm_(ps, 1.0).item() > 1.0)
    if method == "clip-value":

        def clip_value(ps: list[Tensor]) -> bool:
            hit = any(bool((p.grad.abs() > 1.0).any()) for p in ps if p.grad is not None)
            torch.nn.utils.clip_grad_value_(ps, 1.0)
            return hit

        return clip_value
    if method == "autoclip":
        return _ClipperPeer(gg.clip.PercentileClipper(percentile=10.0))
    if method == "zclip":
        return _ClipperPeer(gg.clip.ZScoreClipper(z_threshold=2.5, alpha=0.97))
    return lambda ps: False


# ------------------------------------------------------------------------------------ runs
@dataclasses.dataclass
class Outcome:
    """What one method did on one scenario."""

    finite: bool
    final: float
    lost: int
    interventions: int
    note: str = ""


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


GUARD_CLIP: Any = "auto"
"""The guard's ``clip`` argument (``--guard-clip``); the default is Guard's own default."""


def run_method(scenario: Any, method: str, seed: int, *, fault_free: bool = False) -> Outcome:
    """Train ``scenario`` with ``method`` from ``seed``; return its :class:`Outcome`.

    ``fault_free`` trains the scenario's run without its injected fault instead (see
    ``Scenario.build_fault_free``): the yardstick a rescue that drops the fault can reach.
    """
    run = scenario.build_fault_free(seed) if fault_free else scenario.build(seed)
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
    steps = scenario.steps
    params = [p for group in optimizer.param_groups for p in group["params"]]
    guard = (
        gg.Guard(model, optimizer, scheduler=scheduler, clip=GUARD_CLIP)
        if method == "gradguard"
        else None
    )
    clipper = _peer_clipper(method)
    losses: list[float] = []
    interventions, first_bad, aborted = 0, None, False
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = run.compute_loss(step)
        loss.backward()
        if guard is not None:
            try:
                guard.step(loss)
            except gg.errors.TrainingDivergedError:
                losses.append(math.nan)
                aborted = True
                break
            losses.append(float(guard.monitor.last.loss))  # type: ignore[union-attr, arg-type]
            continue
        value = loss.item()
        losses.append(value)
        if first_bad is None and not math.isfinite(value):
            first_bad = step
        interventions += clipper(params)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    last = losses[-10:]
    finite_last = [v for v in last if math.isfinite(v)]
    finite = (
        _all_finite(model)
        and bool(finite_last)
        and (guard is not None or len(finite_last) == len(last))
    )
    final = statistics.fmean(finite_last) if finite else math.nan
    if guard is not None:
        c = guard.counters
        lost = c["skipped"] + c["steps_lost"]
        touched = c["clipped"] + c["skipped"]
        note = f"clip {c['clipped']} skip {c['skipped']} backoff {c['backoffs']} "
        note += f"rollback {c['rollbacks']}" + (" ABORTED" if aborted else "")
        return Outcome(finite, final, lost, touched, note)
    lost = steps - first_bad if first_bad is not None else 0
    return Outcome(finite, final, lost, interventions)


FLOOR = 1e-4
"""Added to both final losses before their ratio is taken."""


def _recall_batches(seed: int) -> Callable[[int], Batch]:
    """Length-20 sequences of 4 features; the target sums feature 1 over the first 3 steps."""

    def batch(step: int) -> Batch:
        x = torch.randn(16, 20, 4, generator=generator(seed, step))
        return x, x[:, :3, 1].sum(1, keepdim=True)

    return batch


def _cross_entropy(model: nn.Module, batch: Batch) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _gru_x25(seed: int) -> TrainingRun:
    # A GRU with recurrent weights scaled x2.5, length-60 sequences, loss summed over time.
    rnn = nn.GRU(8, 32)
    with torch.no_grad():
        rnn.get_parameter("weight_hh_l0").mul_(2.5)
    model = SequenceRegressor(rnn, 32)

    def batch(step: int) -> Batch:
        x = torch.randn(60, 4, 8, generator=generator(seed, step))
        return x, 0.2 * torch.cumsum(x[..., :1], dim=0)

    def loss(model: nn.Module, batch: Batch) -> Tensor:
        out: Tensor = model(batch[0])
        return (out - batch[1]).pow(2).sum(0).mean()

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.02), batch, loss)


def _classifier_sgd(seed: int) -> TrainingRun:
    # SGD with momentum at lr 2 on an easy classification task: the first steps blow up; a
    # rescued run reaches a cross-entropy of exactly 0 (float32).
    model = nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)
    )
    prototypes = torch.randn(5, 20, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        y = torch.randint(0, 5, (64,), generator=g)
        return 3.0 * prototypes[y] + torch.randn(64, 20, generator=g), y

    optimizer = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    return TrainingRun(model, optimizer, batch, _cross_entropy)


def _rmsprop_lstm(seed: int) -> TrainingRun:
    # RMSprop at lr 0.05: its first steps are large (empty second moments) and throw the LSTM
    # into a poor region without any non-finite value.
    model = SequenceRegressor(nn.LSTM(4, 32, batch_first=True), 32, last_only=True)
    batch = _recall_batches(seed)
    return TrainingRun(model, torch.optim.RMSprop(model.parameters(), lr=0.05), batch, mse)


def _label_bursts(seed: int) -> TrainingRun:
    # Every 37th batch carries labels with noise of scale 300 (a broken shard).
    model = mlp(8, 32)
    w = torch.randn(8, 1, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(32, 8, generator=g)
        y = torch.tanh(x @ w) + 0.1 * torch.randn(32, 1, generator=g)
        if step % 37 == 36:
            y = y + 300.0 * torch.randn(32, 1, generator=g)
        return x, y

    return TrainingRun(model, torch.optim.SGD(model.parameters(), lr=0.05), batch, mse)


def _warmup_adamw(seed: int) -> TrainingRun:
    # AdamW warmed up over 100 steps to lr 0.3, far too high for it.
    model = mlp(16, 64)
    w = torch.randn(16, 1, generator=generator(seed, -1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(32, 16, generator=g)
        return x, torch.sin(x @ w) + 0.05 * torch.randn(32, 1, generator=g)

    return TrainingRun(model, optimizer, batch, mse, schedule)


def _task_switch(factor: float) -> Callable[[int], TrainingRun]:
    # A legitimate change of the loss level: at step 300 the targets become another function,
    # factor times larger in variance (a new dataset or curriculum stage). Adam at 3e-3.
    def build(seed: int) -> TrainingRun:
        model = mlp(8, 64)
        old = torch.randn(8, 1, generator=generator(seed, -1))
        new = torch.randn(8, 1, generator=generator(seed, -2))

        def batch(step: int) -> Batch:
            g = generator(seed, step)
            x = torch.randn(32, 8, generator=g)
            w, scale = (old, 1.0) if step < 300 else (new, factor**0.5)
            return x, scale * torch.tanh(x @ w) + 0.05 * torch.randn(32, 1, generator=g)

        return TrainingRun(model, torch.optim.Adam(model.parameters(), lr=3e-3), batch, mse)

    return build


def _heavy_tailed_labels(seed: int) -> TrainingRun:
    # Label noise with infinite variance (a normal over the square root of a uniform): single
    # losses tens of times the median come and go all the time. SGD with momentum.
    model = mlp(8, 32)
    w = torch.randn(8, 1, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(16, 8, generator=g)
        noise = (
            torch.randn(16, 1, generator=g) / torch.rand(16, 1, generator=g).clamp_min(1e-3).sqrt()
        )
        return x, torch.tanh(x @ w) + 0.1 * noise

    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return TrainingRun(model, optimizer, batch, mse)


def _slow_drift_sgd(seed: int) -> TrainingRun:
    # Batches of 8, SGD momentum 0.9 at lr 0.05: a little too much. The loss creeps up from the
    # first steps and the run blows up after hundreds of steps.
    model = mlp(16, 64)
    w = torch.randn(16, 1, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        x = torch.randn(8, 16, generator=g)
        return x, torch.sin(x @ w) + 0.2 * torch.randn(8, 1, generator=g)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return TrainingRun(model, optimizer, batch, mse)


def _healthy_classifier(seed: int) -> TrainingRun:
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    prototypes = torch.randn(5, 20, generator=generator(seed, -1))

    def batch(step: int) -> Batch:
        g = generator(seed, step)
        y = torch.randint(0, 5, (32,), generator=g)
        return prototypes[y] + torch.randn(32, 20, generator=g), y

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return TrainingRun(model, optimizer, batch, _cross_entropy)


def _healthy_gru(seed: int) -> TrainingRun:
    model = SequenceRegressor(nn.GRU(4, 32, batch_first=True), 32, last_only=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return TrainingRun(model, optimizer, _recall_batches(seed), mse)


HELD_OUT = [
    Scenario("gru_x25", "GRU, recurrent weights x2.5", True, 60, "sudden", _gru_x25),
    Scenario("classifier_sgd_lr2", "SGD momentum lr 2", True, 150, "sudden", _classifier_sgd),
    Scenario("rmsprop_lstm", "RMSprop lr 0.05 LSTM", True, 150, "sudden", _rmsprop_lstm),
    Scenario("label_bursts", "noisy-label batches", True, 300, "sudden", _label_bursts),
    Scenario("warmup_adamw", "AdamW warm-up to lr 0.3", True, 250, "gradual", _warmup_adamw),
    Scenario("slow_drift_sgd", "SGD momentum, batch 8", True, 2000, "gradual", _slow_drift_sgd),
    Scenario("healthy_classifier", "SGD lr 0.1", False, 200, "healthy", _healthy_classifier),
    Scenario("healthy_gru", "GRU, Adam 3e-3", False, 200, "healthy", _healthy_gru),
    Scenario("task_switch_x30", "new task", False, 600, "healthy", _task_switch(30.0)),
    Scenario("task_switch_x1000", "new task", False, 600, "healthy", _task_switch(1000.0)),
    Scenario("heavy_tailed_labels", "label noise", False, 1500, "healthy", _heavy_tailed_labels),
]
"""Runs that no default was tuned on."""


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.4g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per run (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"## Held-out rescue: final loss = mean of the last 10 losses, {args.seeds} seed(s)\n")
    print("| run | kind | " + " | ".join(METHODS) + " | gradguard / best peer | guard did |")
    print("| --- | --- | " + " | ".join("---" for _ in METHODS) + " | --- | --- |")
    ratios: list[tuple[str, float]] = []
    finite = dict.fromkeys(METHODS, 0)
    exploding = healthy = identical = 0
    healthy_ratios: list[float] = []
    aborted = 0
    for scenario in HELD_OUT:
        for seed in range(args.seeds):
            outcomes = {m: run_method(scenario, m, seed) for m in METHODS}
            guard = outcomes["gradguard"]
            tag = f"{scenario.name}#{seed}"
            cell = "-"
            if scenario.explodes:
                exploding += 1
                for method, outcome in outcomes.items():
                    finite[method] += outcome.finite
                peers = {m: outcomes[m].final for m in PEERS if outcomes[m].finite}
                if peers:
                    best = min(peers, key=lambda m: peers[m])
                    ratio = (
                        (guard.final + FLOOR) / (peers[best] + FLOOR) if guard.finite else math.inf
                    )
                    ratios.append((tag, ratio))
                    cell = f"{ratio:.3f} ({best})"
            else:
                healthy += 1
                base = outcomes["none"].final
                same = guard.final == base
                identical += same
                ratio = (guard.final + FLOOR) / (base + FLOOR) if guard.finite else math.inf
                healthy_ratios.append(ratio)
                cell = "identical" if same else f"{ratio:.3f} (to none)"
            finals = " | ".join(_fmt(o.final) for o in outcomes.values())
            kind = "exploding" if scenario.explodes else "healthy"
            print(f"| {tag} | {kind} | {finals} | {cell} | {guard.note} |")
            aborted += "ABORTED" in guard.note
    values = [r for _, r in ratios]
    worst_tag, worst = max(ratios, key=lambda item: item[1])
    counts = " ".join(f"{m} {finite[m]}/{exploding}" for m in ("gradguard", *PEERS))
    geomean = math.exp(statistics.fmean(math.log(v) for v in values))
    within = sum(v <= 1.05 for v in values)
    print(
        f"\nheld-out rescue: finite {counts}; final loss gradguard/best-peer median "
        f"{statistics.median(values):.2f}, geometric mean {geomean:.2f}, <= 1.05 on "
        f"{within}/{len(values)}, worst {worst:.2f} ({worst_tag}); healthy {identical}/{healthy} "
        f"identical, gradguard/none worst {max(healthy_ratios):.2f}; aborted {aborted}"
    )


if __name__ == "__main__":
    main()
