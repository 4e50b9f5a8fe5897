"""Rescue on the generated family: Guard against no protection and five clipping peers, per run.

Every run of ``gradguard.scenarios.generate`` (8 architectures x 6 optimizers x learning-rate
multipliers 1-100x, schedules and faults, seeded, CPU) is trained once per method from the same
seed. Methods:

* ``guard``: ``gg.Guard(model, optimizer, scheduler=..., scaler=...)`` with its defaults;
* ``guard-clip1``: the same with ``clip=1.0``;
* ``none``: plain ``optimizer.step()`` (through the GradScaler in ``overflow`` runs);
* ``clip-norm`` / ``clip-value``: ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` at
  1.0 every step, then the step;
* ``autoclip``: ``gg.clip.PercentileClipper(10)`` every step (AutoClip, Seetharaman et al. 2020);
* ``zclip``: ``gg.clip.ZScoreClipper(2.5, 0.97)`` every step (ZClip, Kumar et al. 2025).

The 8 appended ``runaway`` runs (a loss weight that grows 1.25x a step from an early fault, the
family's slow explosions) are in by default, as in ``detection.py``; ``--sampled-only`` leaves
them out.

LBFGS runs step through a closure (the peers clip inside it); a guard whose ``step`` takes no
``closure`` cannot drive them, and those cells read ``unsupported``.

Final loss: the median of the held-out losses (a fixed batch never trained on) after the last 10
steps; for a run the guard aborted (``TrainingDivergedError``), the held-out loss at the abort.
A run is *exploding*, *healthy* or *tolerated* by what the unprotected run did
(``generate.classify``). Per half (tuning, validation) the summary gives: rescued exploding runs
(finite, final loss <= the untrained model's, or <= the same run's without its fault where
training itself ends above that: a held-out loss that rises as the batches are fitted), the
geometric mean over exploding runs of the
guard's final loss over each peer's (non-finite or larger losses capped at 100x the initial loss,
1e-3 x initial added to both), the worst guard / clip-norm ratio over all runs, over exploding
runs and over the runs the guard changed (not bit-identical to ``none``), aborts, and the
healthy runs the guard left bit-identical to ``none``.

``--cost`` also times an incident-free ``Guard.step`` (default detectors, no snapshots, an
optimizer whose step does nothing) on one CPU thread, on three gradient sets (GPT-2 small, a
30M-parameter LSTM LM, 2000 tensors of 1024 floats), against gradguard's own measure + clip +
one transfer and against ``torch.nn.utils.clip_grad_norm_`` + ``.item()``, in interleaved rounds
of CPU time; "beyond measure" is ``Guard.step`` minus ``measure()`` alone (observe, detectors,
policy, sinks, records, and the weight-norm pass the detectors ask for every 10 steps). Measured
on a 2-core machine shared with other jobs (torch 2.13 CPU), ``--quick``, 3 runs each:
Guard.step / torch clip_grad_norm_ 0.51-0.53 (gpt2-small), 0.53-0.58 (lstm-30M), 0.68-0.72
(2000x1024), where the code before the measure() fast path gave 0.52, 0.55, 0.85-0.86;
Guard.step / (measure+clip) 0.51, 0.52-0.56, 0.83-0.88 (before: 0.52, 0.53, 0.83-0.90; the
baseline shares measure() and got as much faster).
On 2000x1024 a guarded step spends about 84 % in measure(), 6 % in the weight-norm pass, 3 % in
the detectors (two thirds of it the culprit detector's refresh every 10 steps), 2 % in the one
transfer, under 1 % in the policy and the sinks, 3-4 % elsewhere in the guard.

Usage: .venv/bin/python benchmarks/rescue.py [--split tune|validate|all] [--quick] [--jobs N]
[--sampled-only] [--cost] [--check-1x SEEDS]; ``--check-1x 2`` only verifies that every
architecture x optimizer pair trains at 1x (2 seeds each).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import gradguard as gg
from family import family_parser, family_specs, run_tasks
from gradguard import scenarios
from gradguard.scenarios import generate
from gradguard.scenarios.generate import GeneratedRun, GeneratedScenario, RunResult, Stepper

METHODS = ("guard", "guard-clip1", "none", "clip-norm", "clip-value", "autoclip", "zclip")
PEERS = METHODS[2:]
CAP = 100.0
"""A non-finite (or larger) final loss counts as this many times the initial loss in ratios."""
FLOOR = 1e-3
"""Added to both final losses (times the initial loss) before a ratio: ~0 and ~0 are a tie."""


# ------------------------------------------------------------------------------------ methods
def guard_supports_closures() -> bool:
    """Whether ``Guard.step`` takes a ``closure`` (needed for LBFGS)."""
    return "closure" in inspect.signature(gg.Guard.step).parameters


class GuardStepper:
    """``guard.step`` as a :class:`~gradguard.scenarios.generate.Stepper`, with its counters."""

    def __init__(self, run: GeneratedRun, clip: Any) -> None:
        self.guard = gg.Guard(
            run.model, run.optimizer, scheduler=run.scheduler, scaler=run.scaler, clip=clip
        )

    def __call__(self, loss: Tensor | None, closure: Callable[[], Tensor] | None) -> None:
        if closure is not None:
            self.guard.step(closure=closure)  # type: ignore[call-arg]
        else:
            self.guard.step(loss)

    def note(self) -> str:
        c = self.guard.counters
        parts = [f"{k} {c[k]}" for k in ("clipped", "skipped", "backoffs", "rollbacks") if c[k]]
        return ", ".join(parts) or "-"


class ClipStepper:
    """A peer: clip the gradients with ``clip`` every step, then step as usual."""

    def __init__(self, run: GeneratedRun, clip: Callable[[list[Tensor]], object]) -> None:
        self.run, self.clip = run, clip
        self.params = [p for g in run.optimizer.param_groups for p in g["params"]]

    def __call__(self, loss: Tensor | None, closure: Callable[[], Tensor] | None) -> None:
        run = self.run
        if closure is not None:

            def clipped() -> Tensor:
                value = closure()
                self.clip(self.params)
                return value

            run.optimizer.step(clipped)
        elif run.scaler is not None:
            run.scaler.unscale_(run.optimizer)
            self.clip(self.params)
            run.scaler.step(run.optimizer)
            run.scaler.update()
        else:
            self.clip(self.params)
            run.optimizer.step()
        run.step_scheduler()


def _clipper(clipper: gg.Clipper) -> Callable[[list[Tensor]], object]:
    return lambda params: clipper.clip_(gg.measure(params))


def make_method(name: str) -> generate.Method:
    """The method called ``name`` (one of :data:`METHODS`)."""

    def build(run: GeneratedRun) -> Stepper | None:
        if name in ("guard", "guard-clip1"):
            if isinstance(run.optimizer, torch.optim.LBFGS) and not guard_supports_closures():
                return None
            return GuardStepper(run, "auto" if name == "guard" else 1.0)
        if name == "none":
            return generate.plain(run)
        if name == "clip-norm":
            return ClipStepper(run, lambda ps: torch.nn.utils.clip_grad_norm_(ps, 1.0))
        if name == "clip-value":
            return ClipStepper(run, lambda ps: torch.nn.utils.clip_grad_value_(ps, 1.0))
        if name == "autoclip":
            return ClipStepper(run, _clipper(gg.clip.PercentileClipper(percentile=10.0)))
        if name == "zclip":
            return ClipStepper(run, _clipper(gg.clip.ZScoreClipper(z_threshold=2.5, alpha=0.97)))
        raise ValueError(f"method must be one of {METHODS}, got {name!r}.")

    return build


TWIN = "twin"
"""The unprotected run of a spec with its fault taken out: where training itself ends."""


def _work(task: tuple[GeneratedScenario, str]) -> tuple[str, tuple[str, RunResult]]:
    spec, method = task
    if method == TWIN:
        return spec.id, (method, generate.run(dataclasses.replace(spec, fault="none")))
    return spec.id, (method, generate.run(spec, make_method(method)))


# ------------------------------------------------------------------------------------ scoring
def capped(result: RunResult) -> float:
    """The final loss for ratios: non-finite or above ``CAP`` x initial counts as that cap."""
    top = CAP * result.initial
    return min(result.final, top) if result.finite else top


def ratio(a: RunResult, b: RunResult) -> float:
    """``a``'s capped final loss over ``b``'s, both floored."""
    floor = FLOOR * a.initial
    return (capped(a) + floor) / (capped(b) + floor)


def rescued(result: RunResult, twin: RunResult) -> bool:
    """Ends finite with a final loss no worse than the untrained model's, or than the same run
    without its fault (``twin``): a task whose held-out loss rises as training fits the batches
    cannot be asked to end below where fault-free training ends."""
    bar = max(result.initial, twin.final) if twin.finite else result.initial
    return result.status != "unsupported" and result.finite and result.final <= bar


def _fmt(result: RunResult) -> str:
    if result.status == "unsupported":
        return "unsupported"
    text = f"{result.final:.3g}" if math.isfinite(result.final) else "nan"
    return text + (" (aborted)" if result.status == "aborted" else "")


def report(
    half: str, specs: list[GeneratedScenario], results: dict[str, dict[str, RunResult]]
) -> str:
    """Print the per-run table of one half and return its summary."""
    print(f"\n## {half}: {len(specs)} runs, final loss = median held-out loss of the last 10\n")
    print("| run | outcome | " + " | ".join(METHODS) + " | guard did |")
    print("| --- | --- | " + " | ".join("---" for _ in METHODS) + " | --- |")
    labels: dict[str, str] = {}
    for spec in specs:
        r = results[spec.id]
        label = generate.classify(spec, r["none"])
        labels[spec.id] = label
        if spec.expected_healthy and label != "healthy":
            label += " (a 1x run without fault should train: generator bug)"
        twin = r[TWIN]
        if spec.fault != "none" and twin.finite and twin.final > twin.initial:
            label += (
                f" (without its fault {twin.final:.3g}, above the untrained {twin.initial:.3g})"
            )
        cells = " | ".join(_fmt(r[m]) for m in METHODS)
        print(f"| {spec.id} | {label} | {cells} | {r['guard'].note} |")
    exploding = [s for s in specs if labels[s.id] == "exploding"]
    healthy = [s for s in specs if labels[s.id] == "healthy"]
    supported = [s for s in specs if results[s.id]["guard"].status != "unsupported"]

    def saved(s: GeneratedScenario, method: str) -> bool:
        return rescued(results[s.id][method], results[s.id][TWIN])

    counts = {m: sum(saved(s, m) for s in exploding) for m in METHODS}

    def geomean(peer: str, chosen: list[GeneratedScenario]) -> float:
        logs = [
            math.log(ratio(results[s.id]["guard"], results[s.id][peer]))
            for s in chosen
            if s in supported
        ]
        return math.exp(statistics.fmean(logs)) if logs else math.nan

    geo = {peer: geomean(peer, exploding) for peer in ("guard-clip1", *PEERS)}
    geo_all = {peer: geomean(peer, specs) for peer in ("guard-clip1", *PEERS)}

    def worst_of(chosen: list[GeneratedScenario]) -> tuple[str, float]:
        return max(
            (
                (s.id, ratio(results[s.id]["guard"], results[s.id]["clip-norm"]))
                for s in chosen
                if s in supported
            ),
            key=lambda item: item[1],
            default=("-", math.nan),
        )

    def untouched(s: GeneratedScenario) -> bool:
        """The guard left the run bit-identical to the unprotected one."""
        guard, none = results[s.id]["guard"], results[s.id]["none"]
        return guard.losses == none.losses and guard.checksum == none.checksum

    worst_id, worst = worst_of(specs)
    worst_exp_id, worst_exp = worst_of(exploding)
    # Where the guard changed nothing, the ratio is clip-norm's effect on a run the guard left
    # alone (clipping regularises some healthy runs); where it acted, it is the guard's doing.
    worst_acted_id, worst_acted = worst_of([s for s in specs if not untouched(s)])
    # Exploding runs some peer rescued and the guard did not (the target is none).
    missed = [s.id for s in exploding if any(saved(s, m) for m in PEERS) and not saved(s, "guard")]
    aborts = {m: sum(results[s.id][m].status == "aborted" for s in specs) for m in METHODS}
    identical = sum(untouched(s) for s in healthy if s in supported)
    unsupported = len(specs) - len(supported)
    print(
        "\n| method | rescued exploding runs | guard / method, exploding (geo. mean) "
        "| guard / method, all runs | aborts |"
    )
    print("| --- | --- | --- | --- | --- |")
    for m in METHODS:
        g, g_all = ("1", "1") if m == "guard" else (f"{geo[m]:.3g}", f"{geo_all[m]:.3g}")
        print(f"| {m} | {counts[m]}/{len(exploding)} | {g} | {g_all} | {aborts[m]} |")
    n_healthy = sum(s in supported for s in healthy)
    rescued_text = " ".join(f"{m} {counts[m]}" for m in METHODS)
    geo_text = " ".join(f"{m} {geo[m]:.3g}" for m in geo)
    return (
        f"{half}: rescued of {len(exploding)} exploding: {rescued_text}; guard/peer geo-mean "
        f"{geo_text}; worst guard/clip-norm {worst:.2f} ({worst_id}), on exploding runs "
        f"{worst_exp:.2f} ({worst_exp_id}), where the guard acted {worst_acted:.2f} "
        f"({worst_acted_id}); rescued by a peer, not by guard: "
        f"{', '.join(missed) or 'none'}; aborts guard "
        f"{aborts['guard']} guard-clip1 {aborts['guard-clip1']}; healthy identical "
        f"{identical}/{n_healthy}; unsupported {unsupported}"
    )


# ------------------------------------------------------------------------------------ cost
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
    """CPU seconds per call of each function, ``reps`` interleaved rounds of ``steps`` calls.

    CPU time of this process, not wall time: on a machine shared with other jobs, time spent
    waiting for a core would otherwise count as cost (torch runs on one thread here).
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.process_time()
            for _ in range(steps):
                fn()
            times[name].append((time.process_time() - start) / steps)
    return times


@dataclasses.dataclass(frozen=True)
class Overhead:
    """One gradient set's per-step cost: milliseconds, and ratios of medians over rounds."""

    name: str
    base_ms: float
    torch_ms: float
    guard_ms: float
    clipping_ms: float
    beyond_us: float
    """Guard.step minus measure() alone, in microseconds: the Python side (observe, detectors,
    policy, sinks, records, rates) plus the weight-norm pass the default detectors ask for every
    ``param_norm_every`` steps."""
    r_guard: float
    r_torch: float
    r_clip: float


def guard_overhead(quick: bool) -> list[Overhead]:
    """Per gradient set: the cost of an incident-free and of a clipping guard step, side by side.

    Each round times every function for ``steps`` calls, interleaved; a ratio is taken within a
    round and the median over rounds is reported. ``steps`` is a multiple of 10, so every round
    holds the same share of steps on which the default detectors also measure the weights.
    """
    steps, reps = (10, 5) if quick else (20, 9)
    out = []
    for name, build in GRADIENT_SETS.items():
        torch.manual_seed(0)
        module = nn.ParameterList(nn.Parameter(torch.randn(s) * 0.02) for s in build())
        params = list(module)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        guard = gg.Guard(module, _NoStep(params), snapshot_every=None)
        named = gg.stats.named_tensors(module)  # validated once, as the guard does

        def baseline(params: list[nn.Parameter] = params) -> float:
            stats = gg.measure(params)
            gg.clip_by_global_norm_(None, 1.0, stats=stats)
            return stats.total_norm.item()  # the one host transfer

        def torch_clip(params: list[nn.Parameter] = params) -> float:
            return torch.nn.utils.clip_grad_norm_(params, 1.0).item()  # same one transfer

        # The same guard forced to clip every step: the cost while it intervenes.
        clipping = gg.Guard(module, _NoStep(params), snapshot_every=None, clip=1e-9)
        fns = {
            "base": baseline,
            "torch": torch_clip,
            "measure": lambda n=named: gg.measure(n),
            "guard": lambda g=guard: g.step(1.0),
            "clipping": lambda g=clipping: g.step(1.0),
        }
        times = _rounds(fns, steps, reps)

        def ratio(a: str, b: str, times: dict[str, list[float]] = times) -> float:
            return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

        beyond = statistics.median(
            g - m for g, m in zip(times["guard"], times["measure"], strict=True)
        )
        ms = {key: statistics.median(values) * 1e3 for key, values in times.items()}
        out.append(
            Overhead(
                name,
                ms["base"],
                ms["torch"],
                ms["guard"],
                ms["clipping"],
                beyond * 1e6,
                ratio("guard", "base"),
                ratio("guard", "torch"),
                ratio("clipping", "base"),
            )
        )
        del module, params, guard, clipping, named
    return out


def snapshot_cost(steps: int) -> list[tuple[str, float, float, float]]:
    """Per healthy catalogue run: ``(name, ms per guarded step, ms per snapshot, % of steps)``."""
    every = int(inspect.signature(gg.Guard).parameters["snapshot_every"].default)
    out = []
    for name in scenarios.names():
        scenario = scenarios.get(name)
        if scenario.explodes:
            continue
        run = scenario.build(0)
        guard = gg.Guard(run.model, run.optimizer, scheduler=run.scheduler, snapshot_every=None)
        start = time.perf_counter()
        for step in range(steps):
            run.optimizer.zero_grad(set_to_none=True)
            loss = run.compute_loss(step)
            loss.backward()
            guard.step(loss)
        t_step = (time.perf_counter() - start) / steps
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            guard.snapshot()
            samples.append(time.perf_counter() - start)
        t_snap = statistics.median(samples)
        out.append((name, t_step * 1e3, t_snap * 1e3, 100 * t_snap / (every * t_step)))
    return out


def cost(quick: bool) -> str:
    """Print the cost tables; return their summary."""
    print("\n## Cost of guarding (CPU, one thread)\n")
    print(
        "| gradient set | measure+clip+transfer | torch clip_grad_norm_ | Guard.step "
        "| ratio | ratio to torch | beyond measure | clipping guard | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    overhead = guard_overhead(quick)
    for o in overhead:
        print(
            f"| {o.name} | {o.base_ms:.2f} ms | {o.torch_ms:.2f} ms | {o.guard_ms:.2f} ms "
            f"| {o.r_guard:.3f}x | {o.r_torch:.3f}x | {o.beyond_us:.0f} µs "
            f"| {o.clipping_ms:.2f} ms | {o.r_clip:.3f}x |"
        )
    costs = snapshot_cost(10 if quick else 30)
    print("\n| run | guarded step | snapshot | cost at the default interval |")
    print("| --- | --- | --- | --- |")
    for name, t_step, t_snap, pct in costs:
        print(f"| {name} | {t_step:.2f} ms | {t_snap:.2f} ms | {pct:.2f} % |")
    joined = " ".join(f"{o.r_guard:.2f} ({o.name})" for o in overhead)
    to_torch = " ".join(f"{o.r_torch:.2f} ({o.name})" for o in overhead)
    beyond = " ".join(f"{o.beyond_us:.0f} µs ({o.name})" for o in overhead)
    return (
        f"guard cost: Guard.step / (measure+clip) {joined}, "
        f"{max(o.r_clip for o in overhead):.2f} when clipping every step; Guard.step / torch "
        f"clip_grad_norm_ {to_torch}; beyond measure {beyond}; snapshots "
        f"{max(p for *_, p in costs):.2f} % of step time (worst run)"
    )


# ------------------------------------------------------------------------------------ 1x
def _work_plain(spec: GeneratedScenario) -> tuple[str, RunResult]:
    return spec.id, generate.run(spec)


def check_base_rates(jobs: int, seeds: int) -> str:
    """Train every architecture x optimizer pair at 1x without protection; return a summary."""
    specs = [s for seed in range(seeds) for s in generate.base_rate_specs(seed)]
    results = dict(run_tasks(_work_plain, specs, jobs, 1))
    print("\n## 1x, no fault, unprotected: held-out loss final / initial\n")
    print("| run | lr | initial | final | final / initial |\n| --- | --- | --- | --- | --- |")
    ratios = []
    for spec in specs:
        r = results[spec.id]
        value = r.final / r.initial if r.finite else math.inf
        ratios.append((value, spec.id))
        print(f"| {spec.id} | {spec.lr:g} | {r.initial:.3g} | {_fmt(r)} | {value:.3f} |")
    trained = sum(v < 1.0 for v, _ in ratios)
    worst, worst_id = max(ratios)
    median = statistics.median(v for v, _ in ratios)
    return (
        f"1x check: {trained}/{len(specs)} runs end below their initial loss; final/initial "
        f"median {median:.2f}, worst {worst:.2f} ({worst_id})"
    )


# ------------------------------------------------------------------------------------ main
def main() -> None:
    parser = family_parser(__doc__.splitlines()[0], gradual=True)
    parser.add_argument("--cost", action="store_true", help="also time Guard.step and snapshots")
    parser.add_argument(
        "--check-1x",
        type=int,
        metavar="SEEDS",
        default=0,
        help="only train every architecture x optimizer pair at 1x for SEEDS seeds",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check_1x:
        print(check_base_rates(args.jobs, args.check_1x))
        return
    start = time.perf_counter()
    specs = family_specs(args)
    closures = "yes" if guard_supports_closures() else "no (LBFGS cells unsupported)"
    print(f"# Rescue on {len(specs)} generated runs x {len(METHODS)} methods")
    print(f"Guard.step takes a closure: {closures}")

    def describe(run_id: str, items: list[tuple[str, RunResult]]) -> str:
        got = dict(items)
        return f"none {_fmt(got['none'])} guard {_fmt(got['guard'])}"

    # A fault-free spec is its own twin: its "none" run is reused, not run twice.
    methods = {s.id: (*METHODS, TWIN) if s.fault != "none" else METHODS for s in specs}
    tasks = [(spec, m) for spec in specs for m in methods[spec.id]]
    counts = {run_id: len(ms) for run_id, ms in methods.items()}
    results: dict[str, dict[str, RunResult]] = {}
    for run_id, (method, result) in run_tasks(_work, tasks, args.jobs, counts, describe):
        results.setdefault(run_id, {})[method] = result
    for per in results.values():
        per.setdefault(TWIN, per["none"])
    slowest = max((r for per in results.values() for r in per.values()), key=lambda r: r.seconds)
    summaries = []
    for half in ("tune", "validate"):
        chosen = [s for s in specs if s.split == half]
        if chosen:
            summaries.append(report(half, chosen, results))
    cost_line = cost(args.quick) if args.cost else None
    elapsed = time.perf_counter() - start
    print(
        f"\n({elapsed:.0f} s with --jobs {args.jobs}; slowest run {slowest.seconds:.1f} s: "
        f"{slowest.id})"
    )
    if cost_line is not None:
        print(cost_line)
    print("rescue: " + " | ".join(summaries))


if __name__ == "__main__":
    main()
