"""Bounded stores of training snapshots: CPU copies in memory, or files written atomically.

A snapshot is a nested dict of state dicts (model, optimizer, scaler, scheduler, RNG, guard),
keyed by the step it was taken at. Both stores keep the newest ``keep`` snapshots and answer the
one question a rollback asks: which is the newest snapshot taken before a given step?

The disk store never leaves a half-written snapshot under a real name: it writes to a temporary
file in the same directory, flushes and ``fsync`` s it, renames it over the final name (atomic on
POSIX) and ``fsync`` s the directory. A process killed at any moment leaves the previous snapshots
loadable; stale temporary files are removed when the next store opens the directory.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from gradguard.errors import SnapshotError, check_int, check_path

__all__ = ["DiskSnapshotStore", "MemorySnapshotStore", "SnapshotStore", "cpu_copy"]

_NAME = re.compile(r"^snapshot-(\d{12})\.pt$")
_TEMP = re.compile(r"^\.snapshot-\d{12}\.pt\.tmp-\d+$")


@runtime_checkable
class SnapshotStore(Protocol):
    """Where the guard keeps its snapshots; both stores below implement it."""

    keep: int

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Store ``state`` as the snapshot of ``step``, dropping the oldest beyond ``keep``."""

    def steps(self) -> list[int]:
        """Steps of the stored snapshots, oldest first."""

    def load(self, step: int) -> dict[str, Any]:
        """The snapshot of ``step`` (a fresh copy the caller may hand to ``load_state_dict``)."""

    def discard_after(self, step: int) -> None:
        """Forget every snapshot taken after ``step`` (they belong to an abandoned trajectory)."""


def cpu_copy(obj: Any) -> Any:
    """Deep-copy ``obj`` (nested dicts, lists and tuples) with every tensor cloned to the CPU.

    State dicts hold references to live tensors (``model.state_dict()`` returns the parameters
    themselves), so a snapshot must clone them; other leaves are returned as they are.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(value) for value in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_copy(value) for value in obj)
    return obj


def _check_keep(keep: object) -> int:
    fix = (
        "Keep at least 2 so that a rollback can still reach a snapshot from before a slowly "
        "growing incident."
    )
    return check_int("keep", keep, minimum=1, fix=fix)


class MemorySnapshotStore:
    """The newest ``keep`` snapshots as CPU copies in host memory.

    Args:
        keep: how many snapshots to keep; memory is bounded by ``keep`` copies of the state.
    """

    def __init__(self, keep: int = 3) -> None:
        self.keep = _check_keep(keep)
        self._snapshots: dict[int, dict[str, Any]] = {}

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Store a CPU copy of ``state`` under ``step``; the oldest beyond ``keep`` is dropped."""
        self._snapshots[int(step)] = cpu_copy(state)
        for old in sorted(self._snapshots)[: -self.keep]:
            del self._snapshots[old]

    def steps(self) -> list[int]:
        """Steps of the stored snapshots, oldest first."""
        return sorted(self._snapshots)

    def load(self, step: int) -> dict[str, Any]:
        """A fresh copy of the snapshot of ``step``.

        Raises:
            SnapshotError: no snapshot of that step is stored.
        """
        if step not in self._snapshots:
            raise SnapshotError(
                f"no snapshot of step {step!r} in memory; stored steps are {self.steps()!r}."
            )
        copied: dict[str, Any] = cpu_copy(self._snapshots[step])
        return copied

    def discard_after(self, step: int) -> None:
        """Forget the snapshots taken after ``step``."""
        for later in [s for s in self._snapshots if s > step]:
            del self._snapshots[later]


class DiskSnapshotStore:
    """The newest ``keep`` snapshots as files ``snapshot-<step>.pt`` in ``directory``.

    Files are written atomically (temporary file, ``fsync``, rename, directory ``fsync``) and read
    with ``torch.load(weights_only=True)``, so loading never runs code from the file. Snapshots
    already in the directory are picked up, which is how a crashed run resumes.

    Args:
        directory: where the files live; created if missing.
        keep: how many snapshots to keep on disk.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        self.keep = _check_keep(keep)
        check_path("directory", directory, fix="Pass a folder for the snapshots, e.g. 'ckpt'.")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SnapshotError(
                f"cannot create the snapshot directory {str(directory)!r}: {err}. Pass a "
                "writable snapshot_dir, or None to keep snapshots in memory."
            ) from err
        for entry in self.directory.iterdir():
            if _TEMP.match(entry.name):
                entry.unlink(missing_ok=True)

    def path(self, step: int) -> Path:
        """The file that holds (or would hold) the snapshot of ``step``."""
        return self.directory / f"snapshot-{int(step):012d}.pt"

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Write ``state`` atomically as the snapshot of ``step``; drop the oldest beyond ``keep``.

        Raises:
            SnapshotError: the file cannot be written (disk full, permissions); the previous
                snapshots are left intact.
        """
        final = self.path(step)
        temp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        try:
            with open(temp, "wb") as handle:
                torch.save(dict(state), handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
            _fsync_directory(self.directory)
        except OSError as err:
            temp.unlink(missing_ok=True)
            raise SnapshotError(
                f"cannot write the snapshot {str(final)!r}: {err}. Free disk space or choose "
                "another snapshot_dir; the previous snapshots are intact."
            ) from err
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink(missing_ok=True)

    def steps(self) -> list[int]:
        """Steps of the snapshot files in the directory, oldest first."""
        found = (_NAME.match(entry.name) for entry in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, step: int) -> dict[str, Any]:
        """Read the snapshot of ``step`` with ``torch.load(weights_only=True)``.

        Raises:
            SnapshotError: the file is missing or unreadable.
        """
        path = self.path(step)
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
            raise SnapshotError(
                f"cannot load the snapshot {str(path)!r}: {err}. Stored steps are {self.steps()!r}."
            ) from err
        if not isinstance(loaded, dict):
            raise SnapshotError(f"{str(path)!r} does not hold a gradguard snapshot dict.")
        return loaded

    def discard_after(self, step: int) -> None:
        """Delete the snapshot files taken after ``step``."""
        for later in [s for s in self.steps() if s > step]:
            self.path(later).unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable: flush the directory entry (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystems that refuse directory fsync
        pass
    finally:
        os.close(fd)
