"""One rank of the 2-process gloo test of ``reduce_across_ranks`` (run by test_reduce_dist.py).

Usage (from the repository root): ``python -m tests.stats.dist_worker RANK WORLD_SIZE PORT
OUT.json``. Both ranks build the same full
gradients from a fixed seed and keep only their shard (rows ``rank::world``... split in halves),
measure, reduce, and write what they saw to ``OUT.json`` for the parent to compare.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import gradguard as gg
from gradguard.stats import measure, reduce_across_ranks
from tests.host_sync import no_host_sync


def full_grads() -> dict[str, torch.Tensor]:
    """The same full gradients on every rank (seeded), 6x4 and 5 (odd: unequal shards)."""
    gen = torch.Generator().manual_seed(1234)
    return {
        "w": torch.randn(6, 4, generator=gen, dtype=torch.float64).float(),
        "b": torch.randn(5, generator=gen, dtype=torch.float64).float(),
    }


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s chunk of ``t`` along dim 0 (an empty chunk is allowed)."""
    chunks = list(torch.tensor_split(t, world, dim=0))
    return chunks[rank].clone()


def sharded_params(rank: int, world: int, *, nan: bool = False) -> list[tuple[str, nn.Parameter]]:
    """Local shards of ``w`` and ``b`` as parameters holding their local gradient shards."""
    out = []
    for name, g in full_grads().items():
        local = shard(g, rank, world)
        p = nn.Parameter(torch.zeros_like(local))
        if nan and name == "w":
            local[0, 0] = math.nan
        p.grad = local
        out.append((name, p))
    return out


def stats_dict(stats: gg.GradStats) -> dict[str, Any]:
    return {
        "total": stats.total_norm.item(),
        "norms": stats.norms.tolist(),
        "finite": bool(stats.finite.item()),
        "reduced": stats.reduced,
    }


class Sharded(nn.Module):
    """A linear layer of which this rank holds rows ``shard`` of the weight (ZeRO-style)."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        full = torch.randn(6, 4, generator=gen)
        self.weight = nn.Parameter(shard(full, rank, world))


def guard_actions(rank: int, world: int) -> list[dict[str, Any]]:
    """Five guarded steps; rank 1 alone gets a NaN gradient at step 3 and a bigger loss."""
    model = Sharded(rank, world)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = gg.Guard(model, opt, sharded_grads=True, snapshot_every=None)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(rank))
    out = []
    for step in range(5):
        opt.zero_grad()
        loss = (x @ model.weight.T).pow(2).mean() * (1 + rank)
        loss.backward()
        if step == 3 and rank == 1:
            assert model.weight.grad is not None
            model.weight.grad[0, 0] = math.nan
        record = guard.step(loss)
        out.append(
            {
                "action": record.action.value,
                "applied": record.applied,
                "norm": record.total_norm,
                "loss": record.loss,
            }
        )
    return out


def dtensor_case(rank: int, world: int) -> dict[str, Any]:
    """FSDP2-style DTensor parameters and gradients sharded on dim 0 over a CPU mesh."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    grads = full_grads()
    params = []
    for name, g in grads.items():
        p = nn.Parameter(distribute_tensor(torch.zeros_like(g), mesh, [Shard(0)]))
        p.grad = distribute_tensor(g, mesh, [Shard(0)])
        params.append((name, p))
    monitor = gg.Monitor(params, top_k=2)  # sharded_grads detected from the DTensors
    stats = measure(params)
    local_types = [type(g).__name__ for g in stats.grads]
    monitor.observe(torch.tensor(float(rank)), stats=stats)
    obs = monitor.last
    assert obs is not None
    # Clipping the local shards in place reaches the DTensor gradients.
    for g in stats.grads:
        g.mul_(0.5)
    first = params[0][1].grad
    assert first is not None
    return {
        "sharded": monitor.sharded_grads,
        "local_types": local_types,
        "total": obs.total_norm,
        "loss": obs.loss,
        "top": [list(t) for t in obs.top],
        "halved": first.full_tensor().tolist(),
    }


def main() -> None:
    rank, world, port, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result: dict[str, Any] = {}
        for p in (2.0, 1.0, math.inf):
            params = sharded_params(rank, world)
            local = measure(params, p)
            result[f"local_p{p}"] = stats_dict(local)
            with no_host_sync():  # the reduction queues device work only
                reduced = reduce_across_ranks(local, sharded=True)
            result[f"sharded_p{p}"] = stats_dict(reduced)
            result[f"twice_p{p}"] = reduce_across_ranks(reduced).total_norm.item()
        nan = measure(sharded_params(rank, world, nan=rank == 1))
        result["nan"] = stats_dict(reduce_across_ranks(nan))
        replicated = measure(sharded_params(rank, world))
        result["replicated"] = stats_dict(reduce_across_ranks(replicated, sharded=False))
        result["replicated_nan"] = stats_dict(
            reduce_across_ranks(measure(sharded_params(rank, world, nan=rank == 1)), sharded=False)
        )
        result["guard"] = guard_actions(rank, world)
        result["dtensor"] = dtensor_case(rank, world)
        with open(out_path, "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
