"""A real 2-process gloo run: sharded norms become global and every rank decides alike.

Both ranks of ``dist_worker.py`` hold different shards of the same gradients (one rank gets a
NaN in some cases). The parent launches them once and checks what each rank saw against norms of
the full (concatenated) gradients computed here. Two tests only, so xdist launches it at most twice.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.stats.dist_worker import full_grads

ROOT = Path(__file__).parents[2]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _args(rank: int, port: str, out: Path) -> list[str]:
    return [str(rank), str(WORLD), port, str(out / f"{rank}.json")]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run both ranks once; return what each wrote."""
    out = tmp_path_factory.mktemp("dist")
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.stats.dist_worker", *_args(r, port, out)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log
    return [json.loads((out / f"{r}.json").read_text()) for r in range(WORLD)]


def _full_norms(p: float) -> tuple[float, list[float]]:
    grads = full_grads()
    flat = torch.cat([g.double().flatten() for g in grads.values()])
    per_tensor = [torch.linalg.vector_norm(g.double(), p).item() for g in grads.values()]
    return torch.linalg.vector_norm(flat, p).item(), per_tensor


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_sharded_norms_are_global_identical_and_nan_anywhere_is_seen_everywhere(
    ranks: list[dict[str, Any]],
) -> None:
    for p in (2.0, 1.0, math.inf):
        total, per_tensor = _full_norms(p)
        key = f"sharded_p{p}"
        # The shards really differ: the local norms are not the global one (the max-norm of the
        # rank holding the largest entry is, by definition).
        assert ranks[0][f"local_p{p}"]["total"] < total * (1 - 1e-6)
        if p != math.inf:
            assert ranks[1][f"local_p{p}"]["total"] < total * (1 - 1e-6)
        for r in ranks:
            assert r[key]["total"] == pytest.approx(total, rel=1e-6)
            assert r[key]["norms"] == pytest.approx(per_tensor, rel=1e-6)
            assert r[key]["finite"] and r[key]["reduced"]
            assert r[f"twice_p{p}"] == r[key]["total"]  # reducing again changes nothing
        assert ranks[0][key] == ranks[1][key]  # bit-identical on both ranks

    # Rank 1 alone has a NaN: both ranks see a non-finite step.
    for key in ("nan", "replicated_nan"):
        assert [r[key]["finite"] for r in ranks] == [False, False]
        assert all(math.isnan(r[key]["total"]) for r in ranks)

    # Replicated (DDP) mode: the norm is only made identical, the largest of the ranks'.
    local = [r["local_p2.0"]["total"] for r in ranks]
    assert [r["replicated"]["total"] for r in ranks] == [max(local)] * WORLD
    assert all(r["replicated"]["finite"] for r in ranks)


def test_guard_decides_alike_on_every_rank_and_dtensor_grads_reduce(
    ranks: list[dict[str, Any]],
) -> None:
    guard0, guard1 = ranks[0]["guard"], ranks[1]["guard"]
    assert [s["action"] for s in guard0] == [s["action"] for s in guard1]
    assert all(
        _same(a["norm"], b["norm"]) and a["loss"] == b["loss"]  # loss is the mean of the ranks'
        for a, b in zip(guard0, guard1, strict=True)
    )
    # Only rank 1 had a NaN at step 3, yet both skipped it.
    assert guard0[3]["action"] == "skip" and not guard0[3]["applied"]
    assert all(s["applied"] for i, s in enumerate(guard0) if i != 3)

    total, per_tensor = _full_norms(2.0)
    grads = full_grads()
    for r in ranks:
        d = r["dtensor"]
        assert d["sharded"]  # detected from the DTensor parameters
        assert d["local_types"] == ["Tensor", "Tensor"]  # measured on local shards
        assert d["total"] == pytest.approx(total, rel=1e-6)
        assert [n for _, n in d["top"]] == pytest.approx(sorted(per_tensor, reverse=True))
        assert d["loss"] == 0.5  # mean of the ranks' losses 0 and 1
        # Scaling the local shards in place scaled the DTensor gradient itself.
        torch.testing.assert_close(torch.tensor(d["halved"]), grads["w"] * 0.5)
