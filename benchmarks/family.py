"""Shared by rescue.py and detection.py: run many (spec, method) tasks on worker processes.

Every task is independent and seeded, so the results do not depend on ``--jobs``; only the
order in which the progress lines appear does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import torch

from gradguard.scenarios import generate

T = TypeVar("T")
R = TypeVar("R")


def _init_worker() -> None:
    torch.set_num_threads(1)  # one core per worker: --jobs N uses N cores


def run_tasks(
    worker: Callable[[T], tuple[str, R]],
    tasks: list[T],
    jobs: int,
    per_key: int | Mapping[str, int],
    describe: Callable[[str, list[R]], str] | None = None,
) -> list[tuple[str, R]]:
    """Run ``worker`` on every task (``jobs`` processes) and print one line per finished key.

    ``worker`` returns ``(key, result)``; a key (a run id) is finished once ``per_key`` of its
    tasks are (one count for every key, or a count by key). Progress goes to stderr so that the
    tables on stdout stay clean.
    """
    start = time.perf_counter()
    done: Counter[str] = Counter()
    by_key: dict[str, list[R]] = {}
    out: list[tuple[str, R]] = []

    def needed(key: str) -> int:
        return per_key[key] if isinstance(per_key, Mapping) else per_key

    keys_total = len(per_key) if isinstance(per_key, Mapping) else max(1, len(tasks) // per_key)

    def collect(items: Iterable[tuple[str, R]]) -> None:
        for key, result in items:
            out.append((key, result))
            done[key] += 1
            by_key.setdefault(key, []).append(result)
            if done[key] == needed(key):
                finished = sum(1 for k, n in done.items() if n == needed(k))
                extra = f" {describe(key, by_key[key])}" if describe is not None else ""
                print(
                    f"[{finished}/{keys_total}] {key}{extra} ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )

    if jobs <= 1:
        _init_worker()
        collect(worker(task) for task in tasks)
    else:
        with multiprocessing.get_context("spawn").Pool(jobs, initializer=_init_worker) as pool:
            collect(pool.imap_unordered(worker, tasks))
    return out


def family_parser(description: str, *, gradual: bool = False) -> argparse.ArgumentParser:
    """The options every benchmark on the generated family takes: split, quick, jobs, seed.

    ``gradual`` says whether the appended runaway runs (``generate.GRADUAL``) are in by default;
    the other choice is one flag away (``--sampled-only`` or ``--gradual``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--split", choices=("tune", "validate", "all"), default="all")
    parser.add_argument("--quick", action="store_true", help="every sixth run only")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated family")
    if gradual:
        parser.add_argument(
            "--sampled-only",
            dest="gradual",
            action="store_false",
            help="leave out the appended runaway (gradual) runs: the 64 sampled runs only",
        )
    else:
        parser.add_argument(
            "--gradual",
            dest="gradual",
            action="store_true",
            help="add the 8 runaway runs (slow explosions) to the 64 sampled runs",
        )
    return parser


def family_specs(args: argparse.Namespace) -> list[generate.GeneratedScenario]:
    """The generated runs the parsed options select."""
    specs = generate.generate(args.split, seed=args.seed, gradual=args.gradual)
    return specs[::6] if args.quick else specs
