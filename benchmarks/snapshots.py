"""Cost of disk snapshots: a guarded step beside a crowded snapshot_dir, and a checksummed write.

Table 1 times ``Guard.step`` on a small model with ``snapshot_dir`` holding 0, 2,000 and 20,000
unrelated files, against the same guard with in-memory snapshots, in interleaved rounds (each
round gives a ratio to the memory guard timed in that round, so a shared machine shifts both
sides alike). The store lists the folder only when it opens, so the ratios should stay flat.

Table 2 times one snapshot written and read back by :class:`DiskSnapshotStore` (CRC32 while
writing, ``fsync``, rename; checksum verified before ``torch.load``) against a bare
``torch.save`` + ``fsync`` + rename and a bare ``torch.load`` of the same state. The last line is
the one-line summary.

Run: ``python benchmarks/snapshots.py [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gradguard as gg
from gradguard.recover import DiskSnapshotStore


def _guarded(directory: Path | None) -> Callable[[], None]:
    """A closure that runs one guarded step of a small regression model."""
    model = nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    guard = gg.Guard(model, opt, snapshot_dir=directory, snapshot_every=10**9)
    x, y = torch.randn(8, 16), torch.randn(8, 1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        guard.step(loss)

    return step


def _per_step_ms(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def crowded_folder(root: Path, rounds: int, steps: int) -> dict[int, float]:
    """Median ratio of a disk-snapshot guard's step time to a memory one's, by files in the dir."""
    variants: dict[int, Callable[[], None]] = {}
    for extra in (0, 2000, 20000):
        folder = root / f"files{extra}"
        folder.mkdir()
        for i in range(extra):
            (folder / f"epoch-{i}.log").touch()
        variants[extra] = _guarded(folder)
    memory = _guarded(None)
    for step in (memory, *variants.values()):  # warm up
        _per_step_ms(step, 20)
    ratios: dict[int, list[float]] = {extra: [] for extra in variants}
    times: dict[int, list[float]] = {extra: [] for extra in variants}
    base: list[float] = []
    for r in range(rounds):
        order = list(variants)[r % 3 :] + list(variants)[: r % 3]
        reference = _per_step_ms(memory, steps)
        base.append(reference)
        for extra in order:
            ms = _per_step_ms(variants[extra], steps)
            times[extra].append(ms)
            ratios[extra].append(ms / reference)
    print(f"{'snapshot_dir holds':>22} {'ms per step':>12} {'vs memory store':>16}")
    print(f"{'(memory store)':>22} {statistics.median(base):12.3f} {1.0:15.2f}x")
    for extra in variants:
        ms, ratio = statistics.median(times[extra]), statistics.median(ratios[extra])
        print(f"{f'{extra} other files':>22} {ms:12.3f} {ratio:15.2f}x")
    return {extra: statistics.median(values) for extra, values in ratios.items()}


def _bare_save(folder: Path, state: dict[str, object]) -> None:
    temp, final = folder / ".bare.tmp", folder / "bare.pt"
    with open(temp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, final)


def write_and_read(root: Path, rounds: int, numel: int) -> tuple[float, float]:
    """Median ratios (store / bare) of writing and of reading one snapshot of ``numel`` floats."""
    state: dict[str, object] = {"model": {"w": torch.randn(numel)}, "step": 1}
    bare = root / "bare"
    bare.mkdir()
    store = DiskSnapshotStore(root / "store", keep=2)
    writes: list[float] = []
    reads: list[float] = []
    for r in range(rounds):
        t0 = time.perf_counter()
        _bare_save(bare, state)
        t1 = time.perf_counter()
        store.save(r, state)
        t2 = time.perf_counter()
        torch.load(bare / "bare.pt", weights_only=True)
        t3 = time.perf_counter()
        store.load(r)
        t4 = time.perf_counter()
        writes.append((t2 - t1) / (t1 - t0))
        reads.append((t4 - t3) / (t3 - t2))
    store.close()
    mb = numel * 4 / 2**20
    print(f"\n{'one snapshot of':>22} {'store / bare torch':>20}")
    print(f"{f'{mb:.0f} MB, write':>22} {statistics.median(writes):19.2f}x")
    print(f"{f'{mb:.0f} MB, read':>22} {statistics.median(reads):19.2f}x")
    return statistics.median(writes), statistics.median(reads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, smaller snapshot")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rounds, steps, numel = (5, 100, 2_500_000) if args.quick else (11, 300, 25_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        crowded = crowded_folder(root, rounds, steps)
        write, read = write_and_read(root, rounds, numel)
    print(
        f"\nsummary: step time with 20000 / 2000 / 0 other files in snapshot_dir vs memory store "
        f"{crowded[20000]:.2f}x / {crowded[2000]:.2f}x / {crowded[0]:.2f}x; checksummed snapshot "
        f"vs bare torch: write {write:.2f}x, read {read:.2f}x"
    )


if __name__ == "__main__":
    main()
