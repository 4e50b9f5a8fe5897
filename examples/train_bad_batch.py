"""A plain PyTorch training script with no gradguard in it, and one corrupted label at step 40.

    python examples/train_bad_batch.py             # the bad batch blows the run up: exit code 1
    gradguard run examples/train_bad_batch.py      # the same file, protected: it finishes

One target of 1e6 among values of order 1 gives a gradient a million times the usual size; SGD
with momentum carries the weights away and the loss overflows to inf, then NaN. Under
``gradguard run`` the step is recognised as a spike against the run's own history, clipped to the
healthy scale, and training goes on.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from torch import nn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--bad-step", type=int, default=40, help="step whose batch is corrupted")
    parser.add_argument("--lr", type=float, default=0.02)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    true_weights = torch.randn(16, 1)

    for step in range(args.steps):
        data = torch.Generator().manual_seed(step)
        x = torch.randn(32, 16, generator=data)
        y = x @ true_weights + 0.1 * torch.randn(32, 1, generator=data)
        if step == args.bad_step:
            y[0] = 1e6  # a corrupted label
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {value:.4g}")
        if not math.isfinite(value):
            print(f"step {step}: the loss is {value}; training diverged", file=sys.stderr)
            return 1

    with torch.no_grad():
        x = torch.randn(512, 16, generator=torch.Generator().manual_seed(10_000))
        error = nn.functional.mse_loss(model(x), x @ true_weights).item()
    print(f"done: {args.steps} steps, held-out error {error:.4g}")
    return 0 if math.isfinite(error) else 1


if __name__ == "__main__":
    sys.exit(main())
