"""Bounded stores of training snapshots: CPU copies in memory, or files written atomically.

A snapshot is a nested dict of state dicts (model, optimizer, scaler, scheduler, RNG, guard),
keyed by the step it was taken at. Both stores keep the newest ``keep`` snapshots and answer the
one question a rollback asks: which is the newest snapshot taken before a given step?

The disk store never leaves a half-written snapshot under a real name: it writes to a temporary
file in the same directory, flushes and ``fsync`` s it, renames it over the final name (atomic on
POSIX) and ``fsync`` s the directory. A process killed at any moment leaves the previous snapshots
loadable; its temporary file is removed when the next store opens the directory. File names carry
the run and a checksum, so a store never restores another run's weights or a damaged file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import socket
import time
import uuid
import warnings
import weakref
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast, runtime_checkable

import torch

from gradguard.errors import SnapshotError, check_int, check_path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no advisory file locks
    fcntl = None  # type: ignore[assignment]

__all__ = ["DiskSnapshotStore", "MemorySnapshotStore", "SnapshotStore", "cpu_copy"]

_NAME = re.compile(r"^snapshot-(?P<step>\d{12})-(?P<run>[0-9a-f]{12})-(?P<crc>[0-9a-f]{8})\.pt$")
_TEMP = re.compile(r"^\.snapshot-[0-9a-f-]+\.pt\.tmp-\d+$")
_LOCK = ".gradguard-snapshots.lock"


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
    """The newest ``keep`` snapshots of one run as files in ``directory``.

    Each file is a plain ``torch.save`` file named ``snapshot-<step>-<run>-<crc32>.pt``: the run
    it belongs to and the checksum of its bytes travel in the name, so both are written by the
    same atomic rename as the data (temporary file, ``fsync``, rename, directory ``fsync``).
    Loading verifies the checksum, then reads with ``torch.load(weights_only=True)``, which never
    runs code from the file; a damaged file is renamed ``*.damaged`` and leaves the index.

    The directory is listed once, when the store opens; from then on the store keeps its index in
    memory (a training step asks for it every time). Snapshots of other runs found there are
    never mixed with this one's: the store refuses to save until :meth:`adopt` continues that run
    (what ``Guard.resume()`` does). An ``fcntl`` lock on ``.gradguard-snapshots.lock`` keeps a
    second store (another process, another rank) out of the directory while this one is open, so
    the temporary files left behind are always those of a dead writer, removed on opening.

    Args:
        directory: where the files live; created if missing.
        keep: how many snapshots of this run to keep on disk.

    Raises:
        ConfigError: ``directory`` is not a path.
        SnapshotError: the directory cannot be created, or another store holds its lock.
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3) -> None:
        self.keep = _check_keep(keep)
        self.directory = _check_directory(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SnapshotError(
                f"cannot create the snapshot directory {str(directory)!r}: {err}. Pass a "
                "writable snapshot_dir, or None to keep snapshots in memory."
            ) from err
        # Closes the lock's descriptor (dropping the lock) on close() or garbage collection.
        self._release = weakref.finalize(self, os.close, _lock_directory(self.directory))
        self.run = uuid.uuid4().hex[:12]
        self._index: dict[int, Path] = {}  # this run's snapshots: step -> file
        self._others: dict[str, dict[int, Path]] = {}  # other runs' snapshots, by run
        try:
            entries = list(self.directory.iterdir())
        except OSError as err:
            self._release()
            raise SnapshotError(
                f"cannot list the snapshot directory {str(directory)!r}: {err}. Pass a "
                "readable snapshot_dir, or None to keep snapshots in memory."
            ) from err
        for entry in entries:
            if _TEMP.match(entry.name):  # a dead writer's: we hold the lock
                with contextlib.suppress(OSError):
                    entry.unlink()
            elif found := _NAME.match(entry.name):
                self._others.setdefault(found["run"], {})[int(found["step"])] = entry
        self._adopted = not self._others  # saving is refused until another run is adopted

    # --------------------------------------------------------------------------- the index
    def steps(self) -> list[int]:
        """Steps of this run's snapshots, oldest first (from memory: the folder is not listed)."""
        return sorted(self._index)

    def other_runs(self) -> dict[str, list[int]]:
        """Snapshot steps of the other runs found in the directory when it was opened, by run."""
        return {run: sorted(steps) for run, steps in self._others.items()}

    def path(self, step: int) -> Path:
        """The file that holds this run's snapshot of ``step``.

        Raises:
            SnapshotError: this run has no snapshot of that step.
        """
        if step not in self._index:
            raise SnapshotError(
                f"no snapshot of step {step!r} in {str(self.directory)!r}; this run's stored "
                f"steps are {self.steps()!r}."
            )
        return self._index[step]

    def adopt(self, run: str | None = None) -> list[int]:
        """Continue another run found in the directory: its snapshots become this store's.

        Snapshots this store wrote before are set aside as another run's (they are not deleted).

        Args:
            run: the run to continue (a key of :meth:`other_runs`); ``None`` for the one whose
                newest file was written last.

        Returns:
            The steps of the adopted snapshots, oldest first.

        Raises:
            SnapshotError: no run of that name is in the directory.
        """
        if run is None:
            if not self._others:
                return self.steps()
            run = max(self._others, key=lambda r: _newest_mtime(self._others[r].values()))
        if run not in self._others:
            raise SnapshotError(
                f"no snapshots of run {run!r} in {str(self.directory)!r}; the runs found there "
                f"are {sorted(self._others)!r}."
            )
        adopted = self._others.pop(run)
        if self._index:
            self._others[self.run] = self._index
        self.run, self._index, self._adopted = run, adopted, True
        return self.steps()

    def close(self) -> None:
        """Release the directory's lock; the store cannot save any more."""
        self._release()

    # --------------------------------------------------------------------------- read, write
    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Write ``state`` atomically as the snapshot of ``step``; drop the oldest beyond ``keep``.

        Raises:
            SnapshotError: the directory holds another run's snapshots and :meth:`adopt` was not
                called, the store is closed, or the file cannot be written (disk full, quota,
                read-only or deleted folder, an object ``torch.save`` cannot write). The
                temporary file is removed and the previous snapshots are left intact.
        """
        if not self._adopted:
            raise SnapshotError(self.conflict())
        if not self._release.alive:
            raise SnapshotError(
                f"the snapshot store of {str(self.directory)!r} is closed; open a new one."
            )
        step = int(step)
        temp = self.directory / f".snapshot-{step:012d}-{self.run}.pt.tmp-{os.getpid()}"
        try:
            with open(temp, "wb") as handle:
                writer = _ChecksumWriter(handle)
                torch.save(dict(state), cast(BinaryIO, writer))
                handle.flush()
                os.fsync(handle.fileno())
            final = self.directory / _file_name(step, self.run, writer.crc)
            os.replace(temp, final)
            _fsync_directory(self.directory)
        except Exception as err:  # torch.save wraps a failed write in a RuntimeError
            raise SnapshotError(
                f"cannot write the snapshot of step {step} to {str(self.directory)!r}: "
                f"{type(err).__name__}: {err}"
            ) from err
        finally:
            with contextlib.suppress(OSError):  # a read-only folder refuses this too
                temp.unlink(missing_ok=True)
        replaced = self._index.get(step)
        self._index[step] = final
        if replaced is not None and replaced != final:
            with contextlib.suppress(OSError):
                replaced.unlink(missing_ok=True)
        for old in self.steps()[: -self.keep]:
            self._forget(old)

    def load(self, step: int) -> dict[str, Any]:
        """Verify the checksum of this run's snapshot of ``step``, then read it.

        A damaged file (checksum mismatch, or not a snapshot) leaves the index and is renamed
        ``<name>.damaged``, kept for inspection but never offered again.

        Raises:
            SnapshotError: no such snapshot, or its file cannot be read, is damaged or is not a
                snapshot.
        """
        path = self.path(step)
        named = _NAME.match(path.name)
        expected = int(named["crc"], 16) if named is not None else -1
        try:
            crc = _file_crc(path)
        except OSError as err:
            raise SnapshotError(f"cannot read the snapshot {str(path)!r}: {err}.") from err
        if crc != expected:
            problem = (
                f"its bytes have checksum {crc:08x}, not the {expected:08x} written (truncated "
                "or altered since)"
            )
        else:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
                problem = f"cannot load it: {err}"
            else:
                if isinstance(loaded, dict):
                    snapshot: dict[str, Any] = loaded
                    return snapshot
                problem = "it does not hold a gradguard snapshot dict"
        del self._index[step]
        with contextlib.suppress(OSError):
            path.rename(path.with_name(path.name + ".damaged"))
        raise SnapshotError(
            f"the snapshot {str(path)!r} is damaged: {problem}. It was set aside as "
            f"'{path.name}.damaged'; this run's remaining steps are {self.steps()!r}."
        )

    def discard_after(self, step: int) -> None:
        """Delete this run's snapshot files taken after ``step``."""
        for later in [s for s in self._index if s > step]:
            self._forget(later)

    def conflict(self) -> str:
        """The sentence that explains why this store refuses to save beside other runs."""
        runs = "; ".join(f"run {r!r}: steps {s!r}" for r, s in self.other_runs().items())
        return (
            f"snapshot_dir {str(self.directory)!r} holds the snapshots of another run ({runs}). "
            "They are not mixed with a new run's: call guard.resume() before the first step to "
            "continue that run, or pass a fresh snapshot_dir (or delete those files) to start a "
            "new one."
        )

    def _forget(self, step: int) -> None:
        path = self._index.pop(step)
        with contextlib.suppress(OSError):  # gone already, or a read-only folder: not fatal
            path.unlink(missing_ok=True)


class _ChecksumWriter:
    """A write-only file object that keeps the CRC32 of what passes through it."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.crc = 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


def _file_name(step: int, run: str, crc: int) -> str:
    return f"snapshot-{step:012d}-{run}-{crc:08x}.pt"


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def _newest_mtime(paths: Iterable[Path]) -> float:
    times = [0.0]
    for path in paths:
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime)
    return max(times)


def _check_directory(directory: object) -> Path:
    fix = "Pass a folder such as 'runs/snapshots', or None to keep snapshots in memory."
    return Path(check_path("snapshot_dir", directory, fix=fix))


def _lock_directory(directory: Path) -> int:
    """Take an exclusive ``flock`` on the directory's lock file; returns the descriptor holding it.

    The lock file says who holds it, so a refusal can name the process. The lock lasts until the
    descriptor is closed, which the kernel also does when the process dies (even by SIGKILL). The
    descriptor is read-only: a file held open for writing would keep the filesystem from being
    remounted read-only.
    """
    path = directory / _LOCK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as err:
        raise SnapshotError(
            f"cannot create the lock file {str(path)!r}: {err}. Pass a writable snapshot_dir, "
            "or None to keep snapshots in memory."
        ) from err
    if fcntl is None:  # pragma: no cover - Windows
        warnings.warn(
            f"snapshot_dir {str(directory)!r} cannot be locked on this platform: make sure no "
            "other run or rank writes to it.",
            RuntimeWarning,
            stacklevel=4,
        )
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        holder = _read_holder(fd)
        os.close(fd)
        if isinstance(err, BlockingIOError):
            raise SnapshotError(
                f"snapshot_dir {str(directory)!r} is in use by another snapshot store ({holder}). "
                "Two runs, or two ranks of one run, must not share a snapshot_dir: give each its "
                "own (e.g. f'snapshots/rank{rank}'), or close the other guard first."
            ) from err
        raise SnapshotError(
            f"cannot lock the snapshot directory {str(directory)!r}: {err}. Use a folder on a "
            "local filesystem, or None to keep snapshots in memory."
        ) from err
    me = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    with contextlib.suppress(OSError):
        path.write_text(me)
    return fd


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    if not text:
        return "a process that did not say which"
    if text.startswith(f"pid {os.getpid()} "):
        return f"{text}: this very process"
    return text


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
