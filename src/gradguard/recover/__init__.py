"""Recover a run: snapshots (memory or disk, atomic), rollback, LR backoff, state reset."""

from gradguard.recover.optim import (
    RateCeiling,
    already_unscaled,
    reset_optimizer_state_,
    scaled_lr,
)
from gradguard.recover.rng import capture_rng_state, restore_rng_state
from gradguard.recover.snapshot import (
    DiskSnapshotStore,
    MemorySnapshotStore,
    SnapshotStore,
    cpu_copy,
)

__all__ = [
    "DiskSnapshotStore",
    "MemorySnapshotStore",
    "RateCeiling",
    "SnapshotStore",
    "already_unscaled",
    "capture_rng_state",
    "cpu_copy",
    "reset_optimizer_state_",
    "restore_rng_state",
    "scaled_lr",
]
