"""Overhead of gradguard's measurement and clipping, side by side with torch's clip_grad_norm_.

Every variant runs on the same gradient tensors in interleaved rounds (the order rotates each
round); each round gives a ratio to torch's ``clip_grad_norm_(foreach=True)`` timed in that same
round, so a noisy, shared machine shifts both sides alike. The table shows the median ratio and
its inter-quartile range over rounds. A second table times one fused Adam step with the clip
coefficient and the skip folded into the optimizer (``grad_scale`` / ``found_inf``, the hooks
``GradScaler`` uses) against clipping first. The last line is the one-line summary.

Run: ``python benchmarks/overhead.py [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

import gradguard as gg
from gradguard.clip import fused_clipped_step, safe_coefficient
from gradguard.stats import observe

MAX_NORM = 1.0
T = TypeVar("T")


@dataclass
class GradSet:
    """One set of gradients: parameters whose ``.grad`` are views of one flat buffer."""

    name: str
    label: str
    params: list[Tensor]
    flat: Tensor

    @property
    def numel(self) -> int:
        return self.flat.numel()


Variant = tuple[str, Callable[[GradSet], object]]


# --- gradient sets ---------------------------------------------------------------------------


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """The 148 parameter tensors of GPT-2 small (124,439,808 parameters, tied output layer)."""
    vocab, context, width, layers = 50257, 1024, 768, 12
    shapes: list[tuple[int, ...]] = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,)]  # ln_1 weight, bias
        shapes += [(width, 3 * width), (3 * width,)]  # attention qkv projection
        shapes += [(width, width), (width,)]  # attention output projection
        shapes += [(width,), (width,)]  # ln_2 weight, bias
        shapes += [(width, 4 * width), (4 * width,)]  # MLP up
        shapes += [(4 * width, width), (width,)]  # MLP down
    return [*shapes, (width,), (width,)]  # final layer norm


def lstm_lm_shapes() -> list[tuple[int, ...]]:
    """A 2-layer LSTM language model: 10k vocabulary, 880 units (30.0 M parameters)."""
    vocab, hidden = 10_000, 880
    lstm = nn.LSTM(hidden, hidden, num_layers=2, device="meta")
    return (
        [(vocab, hidden)]
        + [tuple(p.shape) for p in lstm.parameters()]
        + [(vocab, hidden), (vocab,)]
    )


def gradient_sets(device: torch.device, names: Sequence[str]) -> list[GradSet]:
    table: dict[str, tuple[str, Callable[[], list[tuple[int, ...]]]]] = {
        "gpt2": ("GPT-2 small", gpt2_small_shapes),
        "lstm": ("2-layer LSTM", lstm_lm_shapes),
        "many": ("2000 x 1024", lambda: [(1024,)] * 2000),
        "1m": ("1M in 5", lambda: [(200, 1000)] * 5),
    }
    return [_make_set(name, *table[name], device) for name in names]


def _make_set(
    name: str, label: str, shapes_fn: Callable[[], list[tuple[int, ...]]], device: torch.device
) -> GradSet:
    shapes = shapes_fn()
    sizes = [math.prod(s) for s in shapes]
    flat = torch.randn(sum(sizes), device=device)
    params = []
    for shape, grad in zip(shapes, flat.split(sizes), strict=True):
        # Parameters cost no memory: clipping reads only .grad.
        param = torch.zeros((), device=device).expand(shape)
        param.grad = grad.view(shape)
        params.append(param)
    return GradSet(name, label, params, flat)


# --- variants --------------------------------------------------------------------------------


def torch_clip(gs: GradSet) -> object:
    return torch.nn.utils.clip_grad_norm_(gs.params, MAX_NORM, foreach=True)


def seed_monitor(gs: GradSet) -> object:
    """The seeds' per-parameter check: isnan/isinf/norm().item() on every tensor (our code)."""
    squares, has_nan, has_inf = 0.0, False, False
    for p in gs.params:
        grad = p.grad
        assert grad is not None
        if torch.isnan(grad).any():
            has_nan = True
        if torch.isinf(grad).any():
            has_inf = True
        squares += grad.norm().item() ** 2
    return math.sqrt(squares), has_nan, has_inf


def gg_measure(gs: GradSet) -> object:
    return gg.measure(gs.params)


def gg_measure_clip_transfer(gs: GradSet) -> object:
    stats = gg.measure(gs.params)
    gg.clip_by_global_norm_(None, MAX_NORM, stats=stats)
    # The host knows ``finite`` from the total: math.isfinite(total).
    summary = torch.stack([stats.total_norm, stats.norms.max()])
    return summary.tolist()  # HOST SYNC: the one transfer per step.


def gg_guard_flow(gs: GradSet) -> object:
    """The Guard's order: transfer the summary first, clip only when the norm is over the bound."""
    stats = gg.measure(gs.params)
    summary = torch.stack([stats.total_norm, stats.norms.max()])
    total, _ = summary.tolist()  # HOST SYNC: the one transfer per step.
    if math.isfinite(total) and total > MAX_NORM:
        gg.clip_by_global_norm_(None, MAX_NORM, stats=stats)
    return total


def flat_lower_bound(gs: GradSet) -> object:
    norm = torch.linalg.vector_norm(gs.flat)
    gs.flat.mul_(torch.clamp(MAX_NORM / (norm + 1e-6), max=1.0))
    return norm


_MONITORS: dict[str, gg.Monitor] = {}


def gg_monitor_observe(gs: GradSet) -> object:
    """Monitor.observe, default preset: measure, 1 transfer, detectors; weights' norm every 10th."""
    monitor = _MONITORS.get(gs.name)
    if monitor is None:
        weights = []
        for p in gs.params:
            # Real weight memory, so the scheduled parameter-norm pass costs what it would.
            weight = torch.randn(p.shape, device=gs.flat.device)
            weight.grad = p.grad
            weights.append(weight)
        monitor = _MONITORS[gs.name] = gg.Monitor(weights)
    return monitor.observe(1.0)


def detector_cost_us(gs: GradSet, steps: int) -> float:
    """Microseconds per step spent in the default detectors alone (no measuring, no transfer)."""
    monitor = gg.Monitor(gs.params)
    stats = gg.measure(gs.params)
    weights = torch.ones((), device=gs.flat.device)
    observations = [
        observe(stats, 1.0, i, param_norm=weights, want_tensor_norms=i % 10 == 0) for i in range(10)
    ]
    start = time.perf_counter()
    for i in range(steps):
        for detector in monitor.detectors:
            detector.update(observations[i % 10])
    return (time.perf_counter() - start) / steps * 1e6


VARIANTS: list[Variant] = [
    ("torch clip_grad_norm_(foreach=True)", torch_clip),
    ("seed monitor (per-tensor isnan/isinf/.item())", seed_monitor),
    ("gg.measure", gg_measure),
    ("gg.measure + clip_by_global_norm_ + 1 transfer", gg_measure_clip_transfer),
    ("flat buffer lower bound (norm + mul_)", flat_lower_bound),
    (
        "gg.measure + 1 transfer, clip only if over the bound (all steps here are under it)",
        gg_guard_flow,
    ),
    ("Monitor.observe (default preset: measure + 1 transfer + detectors)", gg_monitor_observe),
]
"""The rows of the main table; the first is the reference (= 1.00). Append rows here."""


# --- fused optimizer: clip folded into the step ----------------------------------------------


@dataclass
class OptimizerSet:
    """Real parameters with gradients, and two fused Adam optimizers over them."""

    label: str
    params: list[Tensor]
    plain: torch.optim.Adam
    folded: torch.optim.Adam


def optimizer_set(gs: GradSet) -> OptimizerSet:
    params = []
    for view in gs.params:
        param = nn.Parameter(torch.zeros(view.shape, device=gs.flat.device))
        param.grad = view.grad
        params.append(param)
    plain = torch.optim.Adam(params, lr=1e-4, fused=True)
    folded = torch.optim.Adam(params, lr=1e-4, fused=True)
    return OptimizerSet(gs.label, list(params), plain, folded)


def adam_only(os_: OptimizerSet) -> object:
    return os_.plain.step()


def torch_clip_then_adam(os_: OptimizerSet) -> object:
    torch.nn.utils.clip_grad_norm_(os_.params, MAX_NORM, foreach=True)
    return os_.plain.step()


def gg_clip_then_adam(os_: OptimizerSet) -> object:
    stats = gg.measure(os_.params)
    gg.clip_by_global_norm_(None, MAX_NORM, stats=stats)
    return os_.plain.step()


def gg_folded_adam(os_: OptimizerSet) -> object:
    stats = gg.measure(os_.params)
    coef = safe_coefficient(MAX_NORM, stats.total_norm, stats.finite, 1e-6)
    fused_clipped_step(os_.folded, coef, skip=~stats.finite)
    return coef


FUSED_VARIANTS: list[tuple[str, Callable[[OptimizerSet], object]]] = [
    ("torch clip + fused Adam", torch_clip_then_adam),
    ("fused Adam alone (no clip)", adam_only),
    ("gg.measure + clip + fused Adam", gg_clip_then_adam),
    ("gg.measure + fused_clipped_step (grad_scale=1/coef, found_inf)", gg_folded_adam),
]


# --- timing ----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[T], object], arg: T, reps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn(arg)
    _sync(device)
    return (time.perf_counter() - start) / reps


def interleaved_ratios(
    variants: Sequence[tuple[str, Callable[[T], object]]],
    arg: T,
    rounds: int,
    min_block_s: float,
    device: torch.device,
) -> tuple[list[list[float]], list[float]]:
    """Per variant, the ratio to variant 0 in each round; and variant 0's seconds per call."""
    fns = [fn for _, fn in variants]
    single = [_time(fn, arg, 1, device) for fn in fns]  # warm-up and calibration
    reps = [max(1, math.ceil(min_block_s / max(s, 1e-7))) for s in single]
    ratios: list[list[float]] = [[] for _ in fns]
    base_seconds: list[float] = []
    for r in range(rounds):
        order = [(i + r) % len(fns) for i in range(len(fns))]
        seconds = [0.0] * len(fns)
        for i in order:
            seconds[i] = _time(fns[i], arg, reps[i], device)
        base_seconds.append(seconds[0])
        for i in range(len(fns)):
            ratios[i].append(seconds[i] / seconds[0])
    return ratios, base_seconds


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q3 - q1


def _cell(values: Sequence[float]) -> str:
    median, iqr = median_iqr(values)
    return f"{median:.2f} ± {iqr / 2:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer rounds; under 60 s on CPU")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per set")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared machine, OpenMP threads that wait for "
        "a busy core make every parallel kernel erratic)",
    )
    parser.add_argument(
        "--sets", default="gpt2,lstm,many,1m", help="comma-separated: gpt2,lstm,many,1m"
    )
    parser.add_argument(
        "--fused-sets",
        default=None,
        help="sets for the fused-optimizer table (default: lstm,many,1m; all on cuda)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (5 if args.quick else 15)
    min_block = 0.02 if args.quick else 0.1
    names = [n for n in args.sets.split(",") if n]
    fused_default = "gpt2,lstm,many,1m" if device.type == "cuda" else "lstm,many,1m"
    fused_names = [n for n in (args.fused_sets or fused_default).split(",") if n in names]
    torch.manual_seed(0)

    where = f"{device}, {torch.get_num_threads()} thread(s)" if device.type == "cpu" else device
    print(f"# gradguard overhead on {where} (torch {torch.__version__}, {rounds} rounds)")
    print("\nTime per call as a ratio to torch `clip_grad_norm_(foreach=True)` timed in the same")
    print("round: median ± half the inter-quartile range over rounds. Lower is faster.\n")
    sets = gradient_sets(device, names)
    header = "| variant | " + " | ".join(
        f"{s.label} ({s.numel / 1e6:.1f}M, {len(s.params)})" for s in sets
    )
    print(header + " |")
    print("|" + " --- |" * (len(sets) + 1))
    results: dict[str, list[list[float]]] = {}
    base: dict[str, float] = {}
    for gs in sets:
        ratios, seconds = interleaved_ratios(VARIANTS, gs, rounds, min_block, device)
        results[gs.name] = ratios
        base[gs.name] = statistics.median(seconds)
    for i, (vname, _) in enumerate(VARIANTS):
        print(f"| {vname} | " + " | ".join(_cell(results[s.name][i]) for s in sets) + " |")
    print(
        "| (torch clip, ms per call) | "
        + " | ".join(f"{base[s.name] * 1e3:.2f}" for s in sets)
        + " |"
    )

    fused: dict[str, list[list[float]]] = {}
    if fused_names:
        print("\nOne fused Adam step, ratio to `clip_grad_norm_` + fused Adam in the same round.\n")
        fsets = [optimizer_set(gs) for gs in sets if gs.name in fused_names]
        print("| variant | " + " | ".join(f.label for f in fsets) + " |")
        print("|" + " --- |" * (len(fsets) + 1))
        for fs in fsets:
            ratios, _ = interleaved_ratios(FUSED_VARIANTS, fs, rounds, min_block, device)
            fused[fs.label] = ratios
        for i, (vname, _) in enumerate(FUSED_VARIANTS):
            print(f"| {vname} | " + " | ".join(_cell(fused[f.label][i]) for f in fsets) + " |")

    detectors = detector_cost_us(sets[0], 2000 if args.quick else 20000)
    print(f"\nDefault detectors' Python cost per step ({sets[0].label}): {detectors:.1f} µs")
    print()
    print(summary_line(sets, results, fused) + f"; detectors {detectors:.0f} µs/step")
    return 0


def summary_line(
    sets: Sequence[GradSet],
    results: dict[str, list[list[float]]],
    fused: dict[str, list[list[float]]],
) -> str:
    names = [n for n, _ in VARIANTS]
    clip_row = names.index("gg.measure + clip_by_global_norm_ + 1 transfer")
    seed_row = names.index("seed monitor (per-tensor isnan/isinf/.item())")
    measure_row = names.index("gg.measure")
    parts = [f"{median_iqr(results[s.name][clip_row])[0]:.2f} ({s.label})" for s in sets]
    seed = [
        statistics.median(
            a / b
            for a, b in zip(results[s.name][seed_row], results[s.name][measure_row], strict=True)
        )
        for s in sets
    ]
    monitor_row = names.index("Monitor.observe (default preset: measure + 1 transfer + detectors)")
    observed = [f"{median_iqr(results[s.name][monitor_row])[0]:.2f}" for s in sets]
    line = f"overhead: measure+clip / torch clip = {' '.join(parts)}"
    line += f"; Monitor.observe / torch clip = {' '.join(observed)}"
    line += f"; seed monitor / gradguard = {min(seed):.1f} (min over sets)"
    if fused:
        folded = [
            statistics.median(r[3][k] / r[2][k] for k in range(len(r[2]))) for r in fused.values()
        ]
        line += f"; folded into fused Adam / clip then fused Adam = {statistics.median(folded):.2f}"
    return line


if __name__ == "__main__":
    sys.exit(main())
