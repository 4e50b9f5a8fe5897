"""Rank-0 gating: in a distributed run only one process writes logs and prints."""

from __future__ import annotations

import os

import torch.distributed as dist

from gradguard.records import StepRecord
from gradguard.sinks.base import Sink

__all__ = ["RankZeroSink", "is_launch_rank_zero", "is_rank_zero"]


def is_rank_zero() -> bool:
    """``True`` unless ``torch.distributed`` is initialised and this process has rank != 0."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def is_launch_rank_zero() -> bool:
    """Rank 0 of the process group, or before one exists, of the launch (torchrun sets RANK)."""
    if not is_rank_zero():
        return False
    initialised = dist.is_available() and dist.is_initialized()
    return initialised or os.environ.get("RANK", "0").strip() in ("", "0")


class RankZeroSink:
    """Forward records to ``sink`` on rank 0 only; other ranks drop them.

    The rank is asked at every call (a cheap check that reads no device value), so a sink made
    before ``init_process_group`` still gates correctly once the group exists. A file sink opens
    its file when it is built: build it only where :func:`is_rank_zero` holds, e.g.
    ``sinks = [JsonlSink(path)] if is_rank_zero() else []``, and wrap it for the time before the
    group is initialised.

    Args:
        sink: the sink to protect.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def write(self, record: StepRecord) -> None:
        """Pass ``record`` on when this process is rank 0."""
        if is_rank_zero():
            self.sink.write(record)

    def close(self) -> None:
        """Close the wrapped sink on every rank, releasing whatever it opened."""
        self.sink.close()
