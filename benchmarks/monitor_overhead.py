"""Cost of watching: Monitor.observe against torch's clip_grad_norm_ on the same gradients.

For each gradient set, times per optimizer step, side by side in one run:

* ``clip_grad_norm_``: ``torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)``, the
  operation users already pay for every step (one norm pass and one scaling pass);
* ``measure``: ``gradguard.measure`` alone (device tensors, no host transfer);
* ``Monitor.observe``: the default preset (measure, the one host transfer, every detector;
  parameter and per-tensor norms every 10th step, averaged in);
* ``textbook``: ``Monitor(preset="textbook")``, which measures the parameter norm every step.

On a GPU every timed call ends with a device synchronisation, so the ratio counts the
monitor's one host transfer. The detectors' own Python cost per step is reported in
microseconds. Ends with one summary line of ratios.

Usage: python benchmarks/monitor_overhead.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import gradguard as gg
from gradguard.stats import observe

Shapes = list[tuple[int, ...]]


def gpt2_small() -> Shapes:
    """Parameter shapes of GPT-2 small (124M parameters, 148 tensors)."""
    d, vocab, ctx = 768, 50257, 1024
    shapes: Shapes = [(vocab, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [*shapes, (d,), (d,)]


def lstm_30m() -> Shapes:
    """A 2-layer LSTM language model of about 30M parameters."""
    hidden, vocab = 1024, 10000
    shapes: Shapes = [(vocab, hidden)]
    for _ in range(2):
        shapes += [(4 * hidden, hidden), (4 * hidden, hidden), (4 * hidden,), (4 * hidden,)]
    return [*shapes, (vocab, hidden), (vocab,)]


SETS: dict[str, Callable[[], Shapes]] = {
    "gpt2-small": gpt2_small,
    "lstm-30M": lstm_30m,
    "2000x1024": lambda: [(1024,)] * 2000,
    "1M-in-5": lambda: [(200_000,)] * 5,
}


def make_params(shapes: Shapes, device: torch.device) -> list[nn.Parameter]:
    """Parameters of ``shapes`` with random gradients on ``device``."""
    params = []
    for shape in shapes:
        p = nn.Parameter(torch.randn(shape, device=device) * 0.02)
        p.grad = torch.randn(shape, device=device) * 1e-3
        params.append(p)
    return params


def per_step(fn: Callable[[], object], steps: int, reps: int, device: torch.device) -> float:
    """Median over ``reps`` of the mean seconds per call over ``steps`` calls."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
            sync()
        samples.append((time.perf_counter() - start) / steps)
    return statistics.median(samples)


def detector_cost_us(params: list[nn.Parameter], steps: int) -> float:
    """Mean microseconds per step spent in the default detectors' ``update`` calls."""
    monitor = gg.Monitor(params)
    stats = gg.measure(params)
    observations = [
        observe(stats, 1.0, i, want_tensor_norms=i % 10 == 0, param_norm=stats.total_norm)
        for i in range(10)
    ]
    start = time.perf_counter()
    for i in range(steps):
        obs = observations[i % 10]
        for detector in monitor.detectors:
            detector.update(obs)
    return (time.perf_counter() - start) / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps, reps = (10, 3) if args.quick else (20, 7)
    torch.manual_seed(0)

    print(f"device: {device}; {steps} steps x {reps} repetitions, median")
    print(
        "| gradient set | tensors | params | clip_grad_norm_ | measure | Monitor.observe "
        "| textbook | observe / clip |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios = []
    for name, build in SETS.items():
        params = make_params(build(), device)
        count = sum(p.numel() for p in params)

        def clip(params: list[nn.Parameter] = params) -> None:
            # Rescales in place every call (by a coefficient clamped at 1): same cost each time.
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)

        monitor = gg.Monitor(params)
        textbook = gg.Monitor(params, preset="textbook")
        t_clip = per_step(clip, steps, reps, device)
        t_measure = per_step(lambda params=params: gg.measure(params), steps, reps, device)
        t_observe = per_step(lambda m=monitor: m.observe(1.0), steps, reps, device)
        t_textbook = per_step(lambda m=textbook: m.observe(1.0), steps, reps, device)
        ratio = t_observe / t_clip
        ratios.append((name, ratio))
        print(
            f"| {name} | {len(params)} | {count / 1e6:.1f}M | {t_clip * 1e3:.3f} ms "
            f"| {t_measure * 1e3:.3f} ms | {t_observe * 1e3:.3f} ms | {t_textbook * 1e3:.3f} ms "
            f"| {ratio:.2f}x |"
        )
        del params, monitor, textbook
    detectors = detector_cost_us(
        make_params(gpt2_small()[:20], device), 2000 if args.quick else 20000
    )
    print(f"\ndefault detectors, Python cost per step: {detectors:.1f} µs")
    joined = " | ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios)
    print(
        f"monitor overhead ({device.type}): Monitor.observe / clip_grad_norm_ {joined}; "
        f"detectors {detectors:.0f} µs/step"
    )


if __name__ == "__main__":
    main()
