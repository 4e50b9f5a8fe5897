"""Benchmark the two analyses meant for big recurrent models: recurrent_report and bptt_profile.

Setting (the issue's): one ``nn.LSTM`` with hidden size 1024 (input size 1024), sequences of
T = 500 steps, batch 1, CPU. Each analysis is timed beside the baseline it replaces, in the same
run:

* ``recurrent_report`` (power iteration for the 1024x1024 gate blocks) against the same report
  with exact eigenvalues / SVD (``method="exact"``);
* ``bptt_profile`` (step-by-step unrolling that keeps every h_t and c_t) against one forward and
  backward pass of the fused LSTM kernel computing all parameter gradients.

Prints a markdown table and ends with one summary line. Target: each analysis under 2 s.

Usage: python benchmarks/analysis.py [--quick] [--hidden 1024] [--steps 500] [--batch 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gradguard.analysis import bptt_profile, recurrent_report

TARGET_S = 2.0


class Net(nn.Module):
    """LSTM encoder and a linear head on the last step."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lstm(x)[0][-1])


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Smallest wall time over ``repeats`` calls (the machine is shared), and the last result."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="hidden 256, T=100, one repeat")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.steps, args.repeats = 256, 100, 1
    torch.manual_seed(0)
    net = Net(args.hidden)
    x = torch.randn(args.steps, args.batch, args.hidden)
    y = torch.randn(args.batch, 1)
    loss_fn = nn.functional.mse_loss
    params = list(net.parameters())

    def native() -> None:
        torch.autograd.grad(loss_fn(net(x), y), params)

    report_s, report = best_of(args.repeats, lambda: recurrent_report(net, seq_len=args.steps))
    exact_s, exact = best_of(1, lambda: recurrent_report(net, seq_len=args.steps, method="exact"))
    native_s, _ = best_of(args.repeats, native)
    profile_s, profile = best_of(args.repeats, lambda: bptt_profile(net, x, y, loss_fn))
    pairs = list(zip(report.blocks, exact.blocks, strict=True))
    error = max(abs(a.radius - b.radius) / b.radius for a, b in pairs)
    sigma_error = max(abs(a.sigma_max - b.sigma_max) / b.sigma_max for a, b in pairs)
    setting = (
        f"LSTM hidden {args.hidden}, T={args.steps}, batch {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"## gradguard.analysis on {setting}\n")
    print("| measurement | seconds | note |")
    print("| --- | ---: | --- |")
    print(
        f"| recurrent_report (auto: {report.blocks[0].method}) | {report_s:.3f} | "
        f"4 gate blocks, max rel. error vs exact: rho {error:.1e}, sigma {sigma_error:.1e} |"
    )
    print(f"| recurrent_report (exact eig + SVD) | {exact_s:.3f} | baseline |")
    print(
        f"| bptt_profile | {profile_s:.3f} | {len(profile.series)} series x {profile.seq_len} "
        f"steps, growth {profile.growth_factor:.4f}/step |"
    )
    print(f"| fused LSTM forward+backward | {native_s:.3f} | baseline (all parameter grads) |")
    met = report_s < TARGET_S and profile_s < TARGET_S
    print(
        f"\nSUMMARY {setting}: recurrent_report {report_s:.2f} s "
        f"({report_s / exact_s:.2f}x exact {exact_s:.2f} s), bptt_profile {profile_s:.2f} s "
        f"({profile_s / native_s:.2f}x fused fwd+bwd {native_s:.2f} s); "
        f"target < {TARGET_S:g} s each: {'met' if met else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
