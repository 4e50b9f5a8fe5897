"""The guard's snapshots under faults: another run's folder, a shared folder, failing writes,
damaged files, a model that does not hold the trained weights, schedulers it cannot step."""

from __future__ import annotations

import errno
import math
import resource
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradguard.recover.snapshot as snapshot_module
from gradguard.errors import ConfigError, SnapshotError
from gradguard.guard import Guard
from gradguard.policy import PolicyConfig
from gradguard.recover import DiskSnapshotStore, MemorySnapshotStore

X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randn(8, 1, generator=torch.Generator().manual_seed(2))


def _linear(fill: float) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.fill_(fill)
        model.bias.fill_(fill)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


def _step(guard: Guard, model: nn.Module, opt: torch.optim.Optimizer, nan: bool = False) -> Any:
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(X), Y)
    (loss * math.nan if nan else loss).backward()
    return guard.step(loss)


def _temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------- another run's folder
# Turns shared/repro/reliability/repro_reused_snapshot_dir.py into a test.
def test_a_new_run_in_an_old_runs_folder_refuses_to_step_and_touches_nothing(
    tmp_path: Path,
) -> None:
    model, opt = _linear(100.0)
    old = Guard(model, opt, snapshot_dir=tmp_path, snapshot_every=10)
    for _ in range(31):
        _step(old, model, opt)
    old.close()
    files = sorted(p.name for p in tmp_path.glob("snapshot-*.pt"))
    assert len(files) == 3

    model2, opt2 = _linear(0.0)
    new = Guard(model2, opt2, snapshot_dir=tmp_path, snapshot_every=10)
    with pytest.raises(SnapshotError, match=r"another run.*resume\(\).*fresh snapshot_dir"):
        _step(new, model2, opt2)
    with pytest.raises(SnapshotError, match="another run"):
        new.snapshot()
    # Nothing was stepped, written or deleted; the new weights are still the new run's.
    assert sorted(p.name for p in tmp_path.glob("snapshot-*.pt")) == files
    assert model2.weight.detach().abs().max().item() == 0.0
    new.close()

    # A fresh folder trains and rolls back within its own run only.
    fresh = Guard(model2, opt2, snapshot_dir=tmp_path / "fresh", snapshot_every=10)
    records = [_step(fresh, model2, opt2, nan=t in (60, 61)) for t in range(64)]
    rollbacks = [r for r in records if r.action.value == "rollback"]
    assert rollbacks and all(r.rolled_back_to <= 60 for r in rollbacks)
    assert model2.weight.detach().abs().max().item() < 1.0  # never the old run's ~100


def test_resume_continues_the_old_run_in_its_folder(tmp_path: Path) -> None:
    model, opt = _linear(100.0)
    old = Guard(model, opt, snapshot_dir=tmp_path, snapshot_every=10)
    for _ in range(30):
        _step(old, model, opt)
    weights = model.weight.detach().clone()  # what the snapshot of step 30 holds
    _step(old, model, opt)
    old.close()
    model2, opt2 = _linear(0.0)
    again = Guard(model2, opt2, snapshot_dir=tmp_path, snapshot_every=10)
    assert again.resume() == 30
    assert torch.equal(model2.weight.detach(), weights)
    for _ in range(15):
        _step(again, model2, opt2)
    assert again.store.steps() == [20, 30, 40]  # one run, numbered on


def test_resume_refuses_snapshots_of_a_differently_shaped_model(tmp_path: Path) -> None:
    model, opt = _linear(1.0)
    Guard(model, opt, snapshot_dir=tmp_path, snapshot_every=5).close()
    other = nn.Linear(4, 1, bias=False)
    opt3 = torch.optim.SGD(other.parameters(), lr=0.1)
    guard = Guard(other, opt3, snapshot_dir=tmp_path, snapshot_every=5)
    before = other.weight.detach().clone()
    with pytest.raises(SnapshotError, match=r"other parameters.*'bias', \(1,\)"):
        guard.resume()
    assert torch.equal(other.weight.detach(), before)
    with pytest.raises(SnapshotError, match=r"resume\(\)"):  # still refuses to mix the runs
        _step(guard, other, opt3)


# Turns shared/repro/reliability/repro_shared_snapshot_dir.py into a test.
def test_a_second_guard_on_an_open_folder_is_refused_and_the_first_keeps_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, opt = _linear(1.0)
    guard = Guard(model, opt, snapshot_dir=tmp_path, snapshot_every=5)
    refusals: list[str] = []
    real_save = torch.save

    def save_while_another_opens(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        with pytest.raises(SnapshotError) as caught:  # e.g. rank 1 building its guard now
            DiskSnapshotStore(tmp_path)
        refusals.append(str(caught.value))

    monkeypatch.setattr(snapshot_module.torch, "save", save_while_another_opens)
    for _ in range(10):
        _step(guard, model, opt)
    monkeypatch.undo()
    assert len(refusals) == 2 and guard.store.steps() == [0, 5, 10]
    assert "in use by another snapshot store (pid" in refusals[0]
    assert "this very process" in refusals[0] and "rank" in refusals[0]
    guard.close()
    DiskSnapshotStore(tmp_path).close()  # free again once the guard is closed


# --------------------------------------------------------------------------- failing writes
def _limit_file_size(limit: int) -> Any:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _read_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(snapshot_module, "open", refuse, raising=False)
    monkeypatch.setattr(Path, "unlink", refuse)  # the clean-up fails as well


def _train_through(
    guard: Guard, model: nn.Module, opt: torch.optim.Optimizer, fault: Any
) -> list[Any]:
    """26 steps; ``fault()`` strikes before step 3, NaN losses at steps 20-21 force a rollback."""
    x = torch.randn(8, 256)
    records = []
    for t in range(26):
        if t == 3:
            fault()
        opt.zero_grad(set_to_none=True)
        loss = model(x).pow(2).mean()
        (loss * math.nan if t in (20, 21) else loss).backward()
        records.append(guard.step(loss))
    return records


@pytest.mark.parametrize("fault", ["file size limit", "folder deleted", "read-only"])
# Turns shared/repro/reliability/repro_snapshot_write_failures.py into a test.
def test_a_failing_snapshot_write_warns_once_and_training_goes_on_in_memory(
    fault: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    folder = tmp_path / "snaps"
    guard = Guard(model, opt, snapshot_dir=folder, snapshot_every=5, policy=PolicyConfig(quiet=1))
    restore: list[Any] = []
    strike = {
        # Adam's moments make the next file ~800 KB; torch.save fails with a RuntimeError.
        "file size limit": lambda: restore.append(_limit_file_size(400 * 1024)),
        "folder deleted": lambda: shutil.rmtree(folder),
        "read-only": lambda: _read_only(monkeypatch),
    }[fault]
    try:
        with pytest.warns(RuntimeWarning, match="snapshots disabled: ") as caught:
            records = _train_through(guard, model, opt, strike)
    finally:
        monkeypatch.undo()
        for undo in restore:
            undo()
    assert len(caught) == 1
    assert "rollback falls back to the in-memory snapshot" in str(caught[0].message)
    assert isinstance(guard.store, MemorySnapshotStore)
    assert guard.store.steps()[-1] >= 15 and guard.counters["snapshots"] >= 4
    assert len(records) == 26 and any(r.action.value == "rollback" for r in records)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if folder.exists():
        assert _temporaries(folder) == []


def test_a_failed_write_raises_a_snapshot_error_and_leaves_no_temporary(tmp_path: Path) -> None:
    store = DiskSnapshotStore(tmp_path)
    with pytest.raises(SnapshotError, match="cannot write the snapshot of step 1"):
        store.save(1, {"f": lambda: 1})  # torch.save cannot write a lambda
    restore = _limit_file_size(64 * 1024)
    try:
        with pytest.raises(SnapshotError, match="cannot write"):
            store.save(2, {"w": torch.zeros(100_000)})
    finally:
        restore()
    assert _temporaries(tmp_path) == [] and store.steps() == []
    store.save(3, {"w": torch.ones(2)})
    assert store.steps() == [3]


# --------------------------------------------------------------------------- damaged files
def test_a_damaged_snapshot_is_detected_by_its_checksum(tmp_path: Path) -> None:
    store = DiskSnapshotStore(tmp_path)
    store.save(4, {"w": torch.arange(1000.0)})
    path = store.path(4)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match="is damaged: its bytes have checksum"):
        store.load(4)


# Turns shared/repro/reliability/repro_corrupt_snapshot_no_fallback.py into a test.
def test_a_rollback_to_a_damaged_snapshot_falls_back_to_the_next_older(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, opt = _linear(0.5)
    guard = Guard(
        model,
        opt,
        snapshot_dir=tmp_path,
        snapshot_every=2,
        policy=PolicyConfig(quiet=1, cooldown=0),
    )
    for _ in range(7):
        _step(guard, model, opt)
    assert guard.store.steps() == [2, 4, 6]
    damaged = guard.store.path(6)
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    with pytest.warns(RuntimeWarning, match=r"snapshot-000000000006.*is damaged"):
        record = [_step(guard, model, opt, nan=True) for _ in range(2)][-1]
    assert record.action.value == "rollback" and record.rolled_back_to == 4
    assert "(the nearest that loads: the snapshot of step 6 could not be loaded)" in record.message
    assert guard.store.steps() == [2, 4] and not damaged.exists()
    assert damaged.with_name(damaged.name + ".damaged").exists()  # set aside for inspection
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_skips_a_damaged_newest_snapshot(tmp_path: Path) -> None:
    model, opt = _linear(0.5)
    guard = Guard(model, opt, snapshot_dir=tmp_path, snapshot_every=3)
    for _ in range(6):
        _step(guard, model, opt)
    guard.store.path(6).write_bytes(b"not a snapshot")
    guard.close()
    model2, opt2 = _linear(0.0)
    again = Guard(model2, opt2, snapshot_dir=tmp_path, snapshot_every=3)
    with pytest.warns(RuntimeWarning, match="damaged"):
        assert again.resume() == 3


# --------------------------------------------------------------------------- the index
# Turns shared/repro/reliability/repro_disk_store_lists_dir_every_step.py into a test.
def test_steps_never_list_the_folder_after_it_was_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(50):
        (tmp_path / f"epoch-{i}.log").touch()
    model, opt = _linear(1.0)
    guard = Guard(model, opt, snapshot_dir=tmp_path, snapshot_every=4)

    def no_listing(self: Path) -> Any:
        raise AssertionError(f"listed {self}")

    monkeypatch.setattr(Path, "iterdir", no_listing)
    monkeypatch.setattr(snapshot_module.os, "listdir", no_listing)
    monkeypatch.setattr(snapshot_module.os, "scandir", no_listing)
    for _ in range(13):
        _step(guard, model, opt)
    assert guard.store.steps() == [4, 8, 12]
    monkeypatch.undo()
    assert len(list(tmp_path.glob("snapshot-*.pt"))) == 3


# --------------------------------------------------------------------------- construction
# Turns shared/repro/reliability/repro_guard_model_optimizer_mismatch.py into a test.
def test_a_model_that_does_not_hold_the_optimizers_parameters_is_refused() -> None:
    trained, other = nn.Linear(4, 1), nn.Linear(4, 1)  # e.g. other is an EMA copy
    opt = torch.optim.SGD(trained.parameters(), lr=0.5)
    with pytest.raises(ConfigError, match=r"does not hold 2 of the 2 parameters.*EMA"):
        Guard(other, opt)
    scale = nn.Parameter(torch.ones(1))  # a learnable loss weight kept outside the model
    opt2 = torch.optim.SGD([*trained.parameters(), scale], lr=0.5)
    with pytest.raises(ConfigError, match=r"1 of the 3 parameters .*shapes \[\(1,\)\]"):
        Guard(trained, opt2)
    holder = nn.ParameterDict({"scale": scale})
    both = nn.ModuleDict({"model": trained, "loss": holder})
    guard = Guard(both, opt2)  # registered on one module: accepted and snapshotted
    assert set(guard.store.load(0)["model"]) == {"model.weight", "model.bias", "loss.scale"}


def test_reduce_lr_on_plateau_is_refused_before_any_step() -> None:
    model, opt = _linear(1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    with pytest.raises(ConfigError, match=r"ReduceLROnPlateau needs the metric.*val_loss"):
        Guard(model, opt, scheduler=plateau)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "  ", 42])
def test_a_snapshot_dir_that_is_not_a_folder_path_is_refused(bad: Any) -> None:
    model, opt = _linear(1.0)
    with pytest.raises(ConfigError, match="snapshot_dir"):
        Guard(model, opt, snapshot_dir=bad)


def test_a_resume_into_a_guard_without_the_scheduler_of_the_run_restores_the_rest(
    tmp_path: Path,
) -> None:
    model, opt = _linear(1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
    guard = Guard(model, opt, scheduler=scheduler, snapshot_dir=tmp_path, sinks=())
    for _ in range(3):
        _step(guard, model, opt)
    key = guard.snapshot()
    weight = model.weight.detach().clone()
    guard.close()
    model2, opt2 = _linear(5.0)
    resumed = Guard(model2, opt2, snapshot_dir=tmp_path, sinks=())  # no scheduler this time
    assert resumed.resume() == key
    assert torch.equal(model2.weight, weight) and resumed.summary()["progress"] == 3
    resumed.close()


def test_restore_rng_is_read_at_each_rollback(tmp_path: Path) -> None:
    model, opt = _linear(1.0)
    guard = Guard(model, opt, snapshot_every=1, sinks=())
    _step(guard, model, opt)
    state = guard.parts.save()
    assert "rng" not in guard.parts.load(state, rollback=True)  # off by default
    guard.restore_rng = True  # a public switch, changed after the guard was built
    assert "rng" in guard.parts.load(state, rollback=True)
    assert "detectors" not in guard.parts.load(state, rollback=False)  # the guard state has them
