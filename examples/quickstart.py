"""Measure and clip the gradients of a small model: the shortest tour of gradguard."""

import torch
from torch import nn

import gradguard as gg

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
x, y = torch.randn(64, 8), torch.randn(64, 1)
nn.functional.mse_loss(model(x), y).backward()

stats = gg.measure(model)  # device tensors, no host sync
norm = gg.clip_by_global_norm_(model, max_norm=0.1, stats=stats)
after = gg.measure(model).total_norm
# HOST SYNC: one transfer each to print the result.
print(f"global norm before clipping: {norm.item():.4f}; after: {after.item():.4f}")
for name, value in zip(stats.names, stats.norms.tolist(), strict=True):
    print(f"  {name:>10}: {value:.4f}")
