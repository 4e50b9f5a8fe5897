"""Snapshot stores: copies not references, bounded, atomic on disk, crash-safe under SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from gradguard.errors import ConfigError, SnapshotError
from gradguard.recover import DiskSnapshotStore, MemorySnapshotStore, SnapshotStore, cpu_copy


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, object]:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "note": ("a", 1, None)}


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(8, 3)).sum().backward()
    opt.step()
    return model, opt


def test_cpu_copy_clones_every_tensor() -> None:
    t = torch.ones(3)
    copied = cpu_copy({"a": [t, (t, 2)], "b": "x"})
    t.add_(1)
    assert copied["a"][0].tolist() == [1.0, 1.0, 1.0]
    assert copied["a"][1][0].tolist() == [1.0, 1.0, 1.0] and copied["a"][1][1] == 2
    assert copied["b"] == "x"


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_store_round_trip_is_a_copy_and_restores_exactly(kind: str, tmp_path: Path) -> None:
    store: SnapshotStore = (
        MemorySnapshotStore(keep=2) if kind == "memory" else DiskSnapshotStore(tmp_path, keep=2)
    )
    assert isinstance(store, SnapshotStore)
    model, opt = _trained()
    store.save(5, _state(model, opt))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    moments = opt.state_dict()["state"][0]["exp_avg"].clone()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    model(torch.randn(8, 3)).sum().backward()
    opt.step()  # the live state moves on; the snapshot must not
    loaded = store.load(5)
    model.load_state_dict(loaded["model"])
    opt.load_state_dict(loaded["optimizer"])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)
    torch.testing.assert_close(opt.state_dict()["state"][0]["exp_avg"], moments, rtol=0, atol=0)
    assert loaded["note"] in (("a", 1, None), ["a", 1, None])


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_keep_bounds_the_store_and_discard_after_drops_the_future(
    kind: str, tmp_path: Path
) -> None:
    store: SnapshotStore = (
        MemorySnapshotStore(keep=3) if kind == "memory" else DiskSnapshotStore(tmp_path, keep=3)
    )
    for step in (0, 10, 20, 30, 40):
        store.save(step, {"w": torch.full((2,), float(step))})
    assert store.steps() == [20, 30, 40]
    assert store.load(30)["w"].tolist() == [30.0, 30.0]
    store.discard_after(25)
    assert store.steps() == [20]
    with pytest.raises(SnapshotError, match="30"):
        store.load(30)


def test_disk_store_adopts_existing_files_and_removes_stale_temporaries(tmp_path: Path) -> None:
    first = DiskSnapshotStore(tmp_path)
    first.save(7, {"w": torch.ones(1)})
    first.close()
    stale = tmp_path / f".snapshot-000000000008-{first.run}.pt.tmp-123"
    stale.write_bytes(b"half a snapshot")
    (tmp_path / "notes.txt").write_text("kept")
    store = DiskSnapshotStore(tmp_path)
    assert store.steps() == [] and store.other_runs() == {first.run: [7]}
    assert store.adopt() == [7] and store.run == first.run
    assert store.load(7)["w"].tolist() == [1.0]
    assert not stale.exists() and (tmp_path / "notes.txt").exists()


def test_disk_store_loads_with_weights_only(tmp_path: Path) -> None:
    # A file that needs arbitrary code to unpickle is refused, not executed (its checksum and
    # name are right: only the unpickler stands in the way).
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    store = DiskSnapshotStore(tmp_path)
    store.save(3, {"w": torch.ones(1)})
    path = store.path(3)
    torch.save({"x": Evil()}, path)
    crc = zlib.crc32(path.read_bytes())
    path.rename(path.with_name(f"snapshot-{3:012d}-{store.run}-{crc:08x}.pt"))
    store.close()
    reopened = DiskSnapshotStore(tmp_path)
    reopened.adopt()
    with pytest.raises(SnapshotError, match="cannot load"):
        reopened.load(3)


def test_disk_store_reports_unwritable_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SnapshotError, match="snapshot_dir"):
        DiskSnapshotStore(blocker / "sub")


@pytest.mark.parametrize("keep", [0, -1, 1.5, True])
def test_bad_keep_is_rejected(keep: object) -> None:
    with pytest.raises(ConfigError, match="keep"):
        MemorySnapshotStore(keep=keep)  # type: ignore[arg-type]


def _write_forever(directory: Path, payload: torch.Tensor) -> None:
    """Child process: write ever newer 4 MB snapshots until killed.

    It runs no torch kernel (OpenMP is not fork-safe), only serialisation and file writes.
    """
    store = DiskSnapshotStore(directory, keep=2)
    store.adopt()  # continue the parent's run
    step = 1
    while True:
        store.save(step, {"step": step, "w": payload})
        step += 1


def test_sigkill_while_writing_leaves_the_previous_snapshot_loadable(tmp_path: Path) -> None:
    rng = random.Random(0)
    mid_write = 0
    payload = torch.arange(1_000_000, dtype=torch.float32)
    for repeat in range(12):
        directory = tmp_path / f"run{repeat}"
        DiskSnapshotStore(directory).save(0, {"step": 0, "w": payload})
        with warnings.catch_warnings():  # Python >= 3.12 warns about fork with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                _write_forever(directory, payload)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.005, 0.08))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        mid_write += any(p.name.startswith(".snapshot-") for p in directory.iterdir())
        store = DiskSnapshotStore(directory, keep=2)
        steps = store.adopt()
        assert steps, "no snapshot survived the kill"
        for step in steps:  # every visible snapshot is complete
            loaded = store.load(step)
            assert loaded["step"] == step
            assert torch.equal(loaded["w"], payload)
        assert not any(p.name.startswith(".snapshot-") for p in directory.iterdir())
    assert mid_write >= 3, f"only {mid_write} of 12 kills hit a write in progress"


def test_a_second_process_is_refused_while_a_store_holds_the_directory(tmp_path: Path) -> None:
    store = DiskSnapshotStore(tmp_path)
    store.save(1, {"w": torch.ones(1)})
    in_progress = tmp_path / f".snapshot-000000000002-{store.run}.pt.tmp-{os.getpid()}"
    in_progress.write_bytes(b"being written")  # as if this process were in the middle of save()
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 3
        try:
            DiskSnapshotStore(tmp_path)
        except SnapshotError as err:
            code = 0 if f"in use by another snapshot store (pid {os.getppid()} " in str(err) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert in_progress.exists()  # the refused opener deleted nothing
    store.close()
    reopened = DiskSnapshotStore(tmp_path)  # the lock is free again; the dead writer's file goes
    assert not in_progress.exists() and reopened.other_runs() == {store.run: [1]}


def test_without_file_locks_the_store_warns_and_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Windows has no fcntl: the package still imports, and the store says what it cannot do.
    from gradguard.recover import snapshot

    monkeypatch.setattr(snapshot, "fcntl", None)
    with pytest.warns(RuntimeWarning, match="cannot be locked on this platform"):
        store = snapshot.DiskSnapshotStore(tmp_path, keep=2)
    store.save(3, {"model": {"w": torch.ones(2)}})
    assert store.steps() == [3] and torch.equal(store.load(3)["model"]["w"], torch.ones(2))
    store.close()
