"""Rescue: every scenario under no protection, four clipping peers and Guard defaults, side by side.

For each scenario of ``gradguard.scenarios`` and each method, train from the same seed and
report: whether the run ends finite (last losses and every parameter), the final loss (mean of
the last 10 training losses), the steps lost (peers: steps after the first non-finite loss;
Guard: skipped steps plus applied steps undone by rollbacks) and the interventions (steps whose
gradients were changed or dropped). Methods:

* ``none``: plain ``optimizer.step()``;
* ``clip-norm``: ``torch.nn.utils.clip_grad_norm_(params, 1.0)``;
* ``clip-value``: ``torch.nn.utils.clip_grad_value_(params, 1.0)``;
* ``autoclip``: ``gg.clip.PercentileClipper(10)``, the 10th percentile of recent norms
  (AutoClip, Seetharaman et al. 2020);
* ``zclip``: ``gg.clip.ZScoreClipper(2.5, 0.97)``, clip a norm whose log is more than 2.5
  EMA standard deviations above its EMA mean (ZClip, Kumar et al. 2025);
* ``gradguard``: ``gg.Guard(model, optimizer, scheduler=...)`` with its defaults.

A scenario whose fault is injected (``corrupted_batch``) is also trained without the fault,
unprotected: the ``fault-free`` row. A rescue that drops the bad step can at best match it, so a
peer that beats it profits from the corrupted batch itself; the summary says when that happens.

Then the cost of guarding: an incident-free ``Guard.step`` (with a no-op optimizer, so only the
guard is timed) against ``measure + clip + one host transfer`` on large gradient sets, in
interleaved rounds; and the snapshot cost as a percentage of a training step at the default
interval. Ends with two summary lines.

Usage: .venv/bin/python benchmarks/rescue.py [--quick] [--seeds N] [--guard-clip auto|none|1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

import gradguard as gg
from gradguard import scenarios

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


# ------------------------------------------------------------------------------------ overhead
def _gpt2_small() -> list[tuple[int, ...]]:
    d, vocab, ctx = 768, 50257, 1024
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [*shapes, (d,), (d,)]


def _lstm_30m() -> list[tuple[int, ...]]:
    hidden, vocab = 1024, 10000
    shapes: list[tuple[int, ...]] = [(vocab, hidden)]
    for _ in range(2):
        shapes += [(4 * hidden, hidden), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    return [*shapes, (vocab, hidden), (vocab,)]


GRADIENT_SETS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "gpt2-small": _gpt2_small,
    "lstm-30M": _lstm_30m,
    "2000x1024": lambda: [(1024,)] * 2000,
}


class _NoStep(torch.optim.Optimizer):
    """An optimizer whose step does nothing: times the guard alone."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__(params, {"lr": 1e-3})

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        return None


def _rounds(fns: dict[str, Callable[[], object]], steps: int, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``reps`` interleaved rounds of ``steps`` calls."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def guard_overhead(quick: bool) -> list[tuple[str, float, float, float, float, float]]:
    """Per gradient set: ms and median ratio of an incident-free and of a clipping guard step.

    Returns ``(name, ms measure+clip, ms guard, ratio, ms clipping guard, ratio)`` tuples.
    """
    steps, reps = (3, 5) if quick else (5, 9)
    out = []
    for name, build in GRADIENT_SETS.items():
        torch.manual_seed(0)
        module = nn.ParameterList(nn.Parameter(torch.randn(s) * 0.02) for s in build())
        params = list(module)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        guard = gg.Guard(module, _NoStep(params), snapshot_every=None)

        def baseline(params: list[nn.Parameter] = params) -> float:
            stats = gg.measure(params)
            gg.clip_by_global_norm_(None, 1.0, stats=stats)
            return stats.total_norm.item()  # the one host transfer

        # The same guard forced to clip every step (a bound far below the norm): the cost when
        # it does intervene, e.g. during an incident.
        clipping = gg.Guard(module, _NoStep(params), snapshot_every=None, clip=1e-9)
        fns = {
            "base": baseline,
            "guard": lambda g=guard: g.step(1.0),
            "clipping": lambda g=clipping: g.step(1.0),
        }
        times = _rounds(fns, steps, reps)
        base = times["base"]
        ratio = statistics.median(g / b for g, b in zip(times["guard"], base, strict=True))
        ratio_clip = statistics.median(g / b for g, b in zip(times["clipping"], base, strict=True))
        out.append(
            (
                name,
                statistics.median(base) * 1e3,
                statistics.median(times["guard"]) * 1e3,
                ratio,
                statistics.median(times["clipping"]) * 1e3,
                ratio_clip,
            )
        )
        del module, params, guard, clipping
    return out


def _mid_model_run(seed: int) -> Any:
    """A 4M-parameter MLP regression step (Adam), for the snapshot cost of a larger model."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(512, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 1024),
        nn.ReLU(),
        nn.Linear(1024, 512),
        nn.ReLU(),
        nn.Linear(512, 1),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(256, 512), torch.randn(256, 1)
    return scenarios.base.TrainingRun(
        model, optimizer, lambda step: (x, y), lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
    )


def snapshot_cost(runs: dict[str, Any], steps: int) -> list[tuple[str, float, float, float]]:
    """Per run: ``(name, ms per guarded step, ms per snapshot, % at the default interval)``."""
    every = _default_snapshot_every()
    out = []
    for name, run in runs.items():
        guard = gg.Guard(run.model, run.optimizer, scheduler=run.scheduler, snapshot_every=None)

        def train_step(step: int, run: Any = run, guard: gg.Guard = guard) -> None:
            run.optimizer.zero_grad(set_to_none=True)
            loss = run.compute_loss(step)
            loss.backward()
            guard.step(loss)

        train_step(0)
        start = time.perf_counter()
        for step in range(1, steps + 1):
            train_step(step)
        t_step = (time.perf_counter() - start) / steps
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            guard.snapshot()
            samples.append(time.perf_counter() - start)
        t_snap = statistics.median(samples)
        out.append((name, t_step * 1e3, t_snap * 1e3, 100 * t_snap / (every * t_step)))
    return out


def _default_snapshot_every() -> int:
    import inspect

    default = inspect.signature(gg.Guard).parameters["snapshot_every"].default
    return int(default)


# ------------------------------------------------------------------------------------ report
def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.4g}"


def _scenario_list() -> Iterator[tuple[str, Any]]:
    for name in scenarios.names():
        yield name, scenarios.get(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer timing rounds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per scenario")
    parser.add_argument(
        "--guard-clip",
        default="auto",
        help="the guard's clip argument: 'auto' (default), 'none' or a fixed max norm",
    )
    args = parser.parse_args()
    global GUARD_CLIP
    choice = args.guard_clip.lower()
    GUARD_CLIP = "auto" if choice == "auto" else None if choice == "none" else float(choice)
    torch.set_num_threads(1)
    seeds = range(args.seeds if args.seeds is not None else (1 if args.quick else 3))

    print(f"## Rescue: final loss = mean of the last 10 training losses, {len(seeds)} seed(s)\n")
    print("| scenario | kind | method | ends finite | final loss | steps lost | interventions |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    finite_counts = dict.fromkeys(METHODS, 0)
    exploding_total = 0
    healthy_ratios: list[float] = []
    peer_ratios: list[tuple[str, str, float]] = []
    beyond_clean: list[tuple[str, str, float]] = []  # (tag, best peer, peer / fault-free)
    for name, scenario in _scenario_list():
        exploding = bool(scenario.explodes)
        for seed in seeds:
            outcomes = {m: run_method(scenario, m, seed) for m in METHODS}
            tag = f"{name}#{seed}" if len(seeds) > 1 else name
            rows = dict(outcomes)
            if scenario.fault_free is not None:
                rows["fault-free"] = run_method(scenario, "none", seed, fault_free=True)
            for method, o in rows.items():
                detail = f" ({o.note})" if o.note else ""
                print(
                    f"| {tag} | {'exploding' if exploding else 'healthy'} | {method} "
                    f"| {'yes' if o.finite else 'no'} | {_fmt(o.final)} | {o.lost} "
                    f"| {o.interventions}{detail} |"
                )
            guard = outcomes["gradguard"]
            if exploding:
                exploding_total += 1
                for method, o in outcomes.items():
                    finite_counts[method] += o.finite
                finite = {m: o.final for m, o in outcomes.items() if m in PEERS and o.finite}
                if finite:
                    best = min(finite, key=lambda m: finite[m])
                    ratio = guard.final / finite[best] if guard.finite else math.inf
                    peer_ratios.append((tag, best, ratio))
                    clean = rows.get("fault-free")
                    if clean is not None and clean.finite:
                        beyond_clean.append((tag, best, finite[best] / clean.final))
            else:
                base = outcomes["none"].final
                healthy_ratios.append(guard.final / base if base else math.nan)

    print("\n| scenario | best finite peer | gradguard / best peer |\n| --- | --- | --- |")
    for tag, best, ratio in peer_ratios:
        print(f"| {tag} | {best} | {ratio:.3f} |")
    if beyond_clean:
        print("\n| scenario | best finite peer | best peer / fault-free run |\n| --- | --- | --- |")
        for tag, best, ratio in beyond_clean:
            print(f"| {tag} | {best} | {ratio:.3f} |")

    print("\n## Cost of guarding (CPU, one thread)\n")
    print(
        "| gradient set | measure+clip+transfer | Guard.step, no incident | ratio "
        "| Guard.step clipping every step | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    overhead = guard_overhead(args.quick)
    for name, base, guarded, ratio, clipping, ratio_clip in overhead:
        print(
            f"| {name} | {base:.2f} ms | {guarded:.2f} ms | {ratio:.3f}x | {clipping:.2f} ms "
            f"| {ratio_clip:.3f}x |"
        )
    every = _default_snapshot_every()
    runs = {name: s.build(0) for name, s in _scenario_list() if not s.explodes}
    runs["mlp-4M (Adam)"] = _mid_model_run(0)
    costs = snapshot_cost(runs, 10 if args.quick else 30)
    print(f"\n| run | guarded step | snapshot | cost at snapshot_every={every} |")
    print("| --- | --- | --- | --- |")
    for name, t_step, t_snap, pct in costs:
        print(f"| {name} | {t_step:.2f} ms | {t_snap:.2f} ms | {pct:.2f} % |")

    n = exploding_total
    counts = " ".join(f"{m} {finite_counts[m]}/{n}" for m in ("gradguard", *PEERS))
    ratios = [r for _, _, r in peer_ratios]
    worst_tag, _, worst = max(peer_ratios, key=lambda item: item[2])
    within = sum(r <= 1.05 for r in ratios)
    exact = sum(r == 1.0 for r in healthy_ratios)
    healthy = max(healthy_ratios, key=lambda r: abs(r - 1.0))
    clean_note = ""
    if beyond_clean:
        below = sum(r < 1.0 for *_, r in beyond_clean)
        low = min(r for *_, r in beyond_clean)
        clean_note = (
            f"; the best peer beat the fault-free run on {below}/{len(beyond_clean)} "
            f"injected-fault runs (down to {low:.2f}x)"
        )
    print(
        f"\nrescue: finite {counts}; final loss gradguard/best-peer median "
        f"{statistics.median(ratios):.2f}, <= 1.05 on {within}/{len(ratios)}, worst {worst:.2f} "
        f"({worst_tag}); healthy gradguard/none {healthy:.3f} (worst; {exact}/"
        f"{len(healthy_ratios)} identical){clean_note}"
    )
    joined = " ".join(f"{ratio:.2f} ({name})" for name, _, _, ratio, _, _ in overhead)
    clipping = max(ratio_clip for *_, ratio_clip in overhead)
    worst_pct = max(pct for *_, pct in costs)
    print(
        f"guard cost: Guard.step / (measure+clip) {joined}, {clipping:.2f} when clipping every "
        f"step (worst set); snapshot every {every} steps {worst_pct:.2f} % of step time (worst run)"
    )


if __name__ == "__main__":
    main()
