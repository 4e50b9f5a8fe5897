"""Guard.step: skips skip everything, scaler/scheduler/param-group interplay, rollback, resume."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import gradguard as gg
from gradguard.errors import ConfigError, SnapshotError, TrainingDivergedError
from gradguard.guard import Guard
from gradguard.policy import PolicyConfig
from gradguard.records import ActionKind, Reason, StepRecord
from gradguard.stats import GradStats
from tests.host_sync import count_host_syncs

X = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
Y = torch.randn(16, 1, generator=torch.Generator().manual_seed(4))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _loss(model: nn.Module, scale: float = 1.0) -> Tensor:
    return nn.functional.mse_loss(model(X * scale), Y)


def _backward(model: nn.Module, opt: torch.optim.Optimizer, poison: float | None = None) -> Tensor:
    opt.zero_grad(set_to_none=True)
    loss = _loss(model)
    loss.backward()
    if poison is not None:
        first = next(model.parameters())
        assert first.grad is not None
        first.grad.view(-1)[0] = poison
    return loss


def _params(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class _Sink:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.closed = False

    def write(self, record: StepRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


def test_gg_exports_guard() -> None:
    assert gg.Guard is Guard and "Guard" in gg.__all__


def test_a_skipped_step_leaves_weights_optimizer_and_schedule_untouched() -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    guard = Guard(model, opt, scheduler=sched)
    for _ in range(3):
        guard.step(_backward(model, opt))
    before = _params(model)
    state = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    epoch, lr = sched.last_epoch, opt.param_groups[0]["lr"]
    record = guard.step(_backward(model, opt, poison=math.nan))
    assert record.action is ActionKind.SKIP and record.reason is Reason.NONFINITE_GRAD
    assert not record.applied and record.clip_coef == 1.0 and math.isnan(record.total_norm or 0)
    assert _same(before, _params(model))
    after = opt.state[next(model.parameters())]
    for key, value in state.items():  # moments and the step counter
        assert torch.equal(after[key], value), key
    assert (sched.last_epoch, opt.param_groups[0]["lr"]) == (epoch, lr)
    applied = guard.step(_backward(model, opt))
    assert applied.applied and sched.last_epoch == epoch + 1


def test_record_carries_norms_coefficient_lr_and_culprits() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = _Sink()
    guard = Guard(model, opt, clip=0.01, sinks=[sink])
    loss = _backward(model, opt)
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    record = guard.step(loss)
    assert record.action is ActionKind.CLIP and record.reason is Reason.NORM_ABOVE_BOUND
    assert record.total_norm == pytest.approx(norm, rel=1e-6)
    assert record.clip_coef == pytest.approx(0.01 / (norm + 1e-6), rel=1e-6)
    assert record.loss == pytest.approx(loss.item())
    assert record.lr == 0.1 and record.top[0][0] in dict(model.named_parameters())
    assert sink.records == [record]
    guard.close()
    assert sink.closed


@pytest.mark.parametrize("clip", ["auto", 0.01, None])
def test_one_host_transfer_per_step_clipping_or_not(clip: float | str | None) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = Guard(model, opt, snapshot_every=None, clip=clip)
    for _ in range(12):  # past the monitor's every-10-steps parameter norm
        loss = _backward(model, opt)
        with count_host_syncs() as calls:
            record = guard.step(loss)
        assert calls == ["tolist"]
    assert (record.action is ActionKind.CLIP) == (clip == 0.01)


def test_param_groups_keep_their_rates_under_backoff() -> None:
    model, ref = _mlp(), _mlp()
    groups = lambda m: [  # noqa: E731
        {"params": m[0].parameters(), "lr": 0.1},
        {"params": m[2].parameters(), "lr": 0.01},
    ]
    opt = torch.optim.SGD(groups(model))
    ref_opt = torch.optim.SGD(groups(ref))
    config = PolicyConfig(skip_budget=0, cooldown=0)
    guard = Guard(model, opt, policy=config, clip=None, snapshot_every=None)
    record = guard.step(_backward(model, opt, poison=math.inf))
    assert record.action is ActionKind.BACKOFF and guard.lr_scale == 0.5
    guard.step(_backward(model, opt))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.01]  # the schedule is untouched
    ref_opt.zero_grad()
    _loss(ref).backward()
    for group in ref_opt.param_groups:
        group["lr"] *= 0.5
    ref_opt.step()
    assert _same(_params(model), _params(ref))


def test_gradient_accumulation_acts_on_optimizer_steps() -> None:
    model, ref = _mlp(), _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.01)
    guard = Guard(model, opt, clip=1.0)
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            for chunk in range(4):
                (nn.functional.mse_loss(m(X[chunk::4]), Y[chunk::4]) / 4).backward()
        guard.step()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
    assert guard.counters["steps"] == 3 and _same(_params(model), _params(ref))


def test_grad_scaler_unscales_before_measuring_and_updates_on_skips() -> None:
    model, ref = _mlp(), _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    guard = Guard(model, opt, scaler=scaler, clip=1.0)
    opt.zero_grad()
    loss = _loss(model)
    scaler.scale(loss).backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item() / 1024
    record = guard.step(loss)
    assert record.total_norm == pytest.approx(norm, rel=1e-5)
    ref_scaler.scale(_loss(ref)).backward()
    ref_scaler.unscale_(ref_opt)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    ref_scaler.step(ref_opt)
    ref_scaler.update()
    assert _same(_params(model), _params(ref))
    # An overflow (non-finite gradient under a finite loss) is the scaler's own business.
    opt.zero_grad()
    loss = _loss(model)
    scaler.scale(loss).backward()
    first = next(model.parameters())
    assert first.grad is not None
    first.grad.view(-1)[0] = math.inf
    before = _params(model)
    record = guard.step(loss)
    assert record.action is ActionKind.SKIP and record.reason is Reason.SCALER_OVERFLOW
    assert scaler.get_scale() == 512.0 and _same(before, _params(model))
    assert guard.counters["scaler_overflows"] == 1 and guard.policy.incident_start is None


def test_rollback_restores_the_snapshot_resets_moments_and_reports_the_loss_of_steps() -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 / (1 + epoch))
    config = PolicyConfig(quiet=3)
    guard = Guard(model, opt, scheduler=sched, snapshot_every=5, policy=config)
    saved: dict[int, list[Tensor]] = {0: _params(model)}
    for _ in range(12):
        guard.step(_backward(model, opt))
        if guard.counters["snapshots"] > len(saved):
            saved[guard.store.steps()[-1]] = _params(model)
    assert guard.store.steps() == [0, 5, 10]
    records = [guard.step(_backward(model, opt, poison=math.nan)) for _ in range(2)]
    rollback = records[-1]
    assert [r.action for r in records] == [ActionKind.SKIP, ActionKind.ROLLBACK]
    # The incident began at step 12; snapshot 10 is too close (quiet=3), so 5 is restored.
    assert rollback.rolled_back_to == 5 and rollback.steps_lost == 7
    assert "restored the snapshot of step 5" in rollback.message
    assert _same(_params(model), saved[5])
    assert len(opt.state) == 0 and sched.last_epoch == 5
    assert guard.store.steps() == [0, 5] and guard.lr_scale == 0.5
    summary = guard.summary()
    assert (summary["rollbacks"], summary["steps_lost"], summary["skipped"]) == (1, 7, 2)
    assert summary["progress"] == 5


def test_without_snapshots_the_guard_resets_the_optimizer_instead() -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    guard = Guard(model, opt, snapshot_every=None)
    guard.step(_backward(model, opt))
    kinds = [guard.step(_backward(model, opt, poison=math.nan)).action for _ in range(2)]
    assert kinds == [ActionKind.SKIP, ActionKind.RESET_OPTIMIZER_STATE] and len(opt.state) == 0
    assert guard.store.steps() == []


def test_abort_raises_with_advice_and_the_record() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sink = _Sink()
    config = PolicyConfig(consecutive_limit=1, max_rollbacks=1)
    guard = Guard(model, opt, policy=config, sinks=[sink])
    guard.step(_backward(model, opt, poison=math.nan))  # rollback: the budget of one is spent
    last = guard.step(_backward(model, opt, poison=math.nan))  # the last resort, then give up
    assert last.action is ActionKind.ROLLBACK and "Last resort" in last.message
    with pytest.raises(TrainingDivergedError, match="lower the learning rate") as err:
        guard.step(_backward(model, opt, poison=math.nan))
    record = err.value.record
    assert isinstance(record, StepRecord) and record.action is ActionKind.ABORT
    assert sink.records[-1] == record and "truncate backpropagation" in str(err.value)
    assert guard.counters["aborted"] == 1


def test_no_snapshot_is_taken_during_an_incident() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = Guard(model, opt, snapshot_every=2, policy=PolicyConfig(quiet=6))
    guard.step(_backward(model, opt, poison=math.nan))
    for _ in range(5):
        guard.step(_backward(model, opt))
    assert guard.store.steps() == [0]  # quiet for 5 steps only
    guard.step(_backward(model, opt))
    assert guard.store.steps() == [0, 7]


class _HalfClipper:
    """A minimal stateful clipper: always scales the gradients by one half."""

    def __init__(self) -> None:
        self.calls = 0

    def clip_(self, stats: GradStats) -> Tensor:
        self.calls += 1
        coef = torch.tensor(0.5)
        gg.clip.scale_grads_(stats, coef)
        return coef

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def test_a_clipper_object_replaces_the_fixed_bound() -> None:
    model, ref = _mlp(), _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    clipper = _HalfClipper()
    guard = Guard(model, opt, clip=clipper)
    record = guard.step(_backward(model, opt))
    assert (record.action, record.clip_coef, guard.counters["clipped"]) == (ActionKind.CLIP, 0.5, 1)
    assert "_HalfClipper scaled the gradients by 0.5 and the step applied" in record.message
    _loss(ref).backward()
    for p in ref.parameters():
        assert p.grad is not None
        p.grad.mul_(0.5)
    ref_opt.step()
    assert _same(_params(model), _params(ref)) and clipper.calls == 1
    assert guard.state_dict()["clipper"] == {"calls": 1}


def _scaled_backward(model: nn.Module, opt: torch.optim.Optimizer, scale: float) -> Tensor:
    """Gradients of ``scale`` times the loss: the norm varies from step to step."""
    opt.zero_grad(set_to_none=True)
    loss = _loss(model) * scale
    loss.backward()
    return loss


_SCALES = (1.0, 1.6, 2.2, 0.5, 2.8, 1.3, 3.0, 0.7)


def test_a_percentile_clipper_is_recorded_counted_and_matches_the_clipper_by_hand() -> None:
    model, ref = _mlp(), _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    clipper, ref_clipper = gg.clip.PercentileClipper(10), gg.clip.PercentileClipper(10)
    guard = Guard(model, opt, clip=clipper)
    records, by_hand = [], []
    for scale in _SCALES:
        records.append(guard.step(_scaled_backward(model, opt, scale)))
        _scaled_backward(ref, ref_opt, scale)
        by_hand.append(ref_clipper.clip_(gg.measure(ref)).item())
        ref_opt.step()
    assert _same(_params(model), _params(ref))
    assert [r.clip_coef for r in records] == by_hand  # the same float32 values, exactly
    assert all(r.applied and math.isfinite(r.clip_coef) for r in records)
    clipped = [t for t, coef in enumerate(by_hand) if coef < 1.0 - 1e-5]
    assert [t for t, r in enumerate(records) if r.action is ActionKind.CLIP] == clipped
    assert guard.counters["clipped"] == len(clipped) == 4 and clipped == [4, 5, 6, 7]
    for t in clipped:
        assert records[t].clip_coef < 0.99
        assert f"PercentileClipper scaled the gradients by {by_hand[t]:.3g}" in records[t].message
    # Steps 1 to 3: each norm is the smallest so far, under the percentile: nothing is clipped.
    for record in records[1:4]:
        assert (record.action, record.clip_coef) == (ActionKind.PROCEED, 1.0)
        assert record.message.endswith("is within bounds: step applied.")
    # Step 0: the bound is the step's own norm; eps leaves a coefficient a hair under 1.
    assert records[0].action is ActionKind.PROCEED and 1.0 - 1e-5 < records[0].clip_coef < 1.0


def test_a_per_tensor_clipper_records_the_shrink_of_the_global_norm() -> None:
    model, ref = _mlp(), _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = Guard(model, opt, clip=gg.clip.PerTensorNormClipper(0.05), snapshot_every=None)
    record = guard.step(_backward(model, opt))
    _loss(ref).backward()
    before = gg.measure(ref).total_norm.item()
    gg.clip.PerTensorNormClipper(0.05).clip_(gg.measure(ref))
    after = gg.measure(ref).total_norm.item()
    assert record.action is ActionKind.CLIP and guard.counters["clipped"] == 1
    assert record.clip_coef == pytest.approx(after / before, rel=1e-5) and after < 0.5 * before
    assert record.total_norm == pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize("name", sorted(gg.clip.REGISTRY))
def test_one_host_transfer_per_step_with_a_clipper(name: str) -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    guard = Guard(model, opt, snapshot_every=None, clip=gg.clip.REGISTRY[name]())
    for scale in (*_SCALES, *_SCALES[:4]):  # 12 steps: past the every-10-steps parameter norm
        loss = _scaled_backward(model, opt, scale)
        with count_host_syncs() as calls:
            record = guard.step(loss)
        assert calls == ["tolist"]
        assert record.applied and 0.0 < record.clip_coef <= 1.0


def test_state_dict_round_trip_continues_identically() -> None:
    def run(steps: range, guard: Guard, model: nn.Module, opt: Any) -> list[StepRecord]:
        out = []
        for t in steps:
            poison = math.nan if t in (3, 9, 10, 11, 15) else None
            out.append(guard.step(_backward(model, opt, poison=poison)))
        return out

    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    guard = Guard(model, opt, snapshot_every=4, policy=PolicyConfig(quiet=2))
    full = run(range(20), guard, model, opt)

    model2 = _mlp()
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    guard2 = Guard(model2, opt2, snapshot_every=4, policy=PolicyConfig(quiet=2))
    first = run(range(10), guard2, model2, opt2)
    state = (model2.state_dict(), opt2.state_dict(), guard2.state_dict())
    model3 = _mlp(seed=5)
    opt3 = torch.optim.Adam(model3.parameters(), lr=0.01)
    guard3 = Guard(model3, opt3, snapshot_every=4, policy=PolicyConfig(quiet=2))
    model3.load_state_dict(state[0])
    opt3.load_state_dict(state[1])
    guard3.load_state_dict(state[2])
    guard3.store = guard2.store  # the snapshots live on with the run (on disk in practice)
    second = run(range(10, 20), guard3, model3, opt3)
    assert [(r.action, r.reason, r.applied, r.rolled_back_to) for r in full] == [
        (r.action, r.reason, r.applied, r.rolled_back_to) for r in first + second
    ]
    assert _same(_params(model), _params(model3))
    assert guard.summary()["skipped"] == guard3.summary()["skipped"] == 5


def test_disk_snapshots_resume_a_crashed_run(tmp_path: Path) -> None:
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    guard = Guard(model, opt, scheduler=sched, snapshot_every=5, snapshot_dir=tmp_path)
    for _ in range(10):
        guard.step(_backward(model, opt))
    assert guard.store.steps() == [0, 5, 10]
    weights, moments = _params(model), opt.state_dict()["state"][0]["exp_avg"].clone()
    state = guard.state_dict()
    guard.close()  # a crashed process releases snapshot_dir's lock with its file descriptors
    # A new process: fresh objects, same directory.
    model2 = _mlp(seed=9)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 3)
    guard2 = Guard(model2, opt2, scheduler=sched2, snapshot_every=5, snapshot_dir=tmp_path)
    assert guard2.resume() == 10
    assert _same(_params(model2), weights)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], moments)
    assert sched2.last_epoch == 10 and guard2.state_dict()["counters"] == state["counters"]
    with pytest.raises(SnapshotError, match="snapshot_dir"):
        Guard(model, torch.optim.SGD(model.parameters(), 0.1), snapshot_every=None).resume()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip": -1.0}, "clip"),
        ({"clip": "big"}, "clip"),
        ({"snapshot_every": 0}, "snapshot_every"),
        ({"policy": {"skip_budget": 3}}, "policy"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict[str, Any], match: str) -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match=match):
        Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), **kwargs)


def test_model_and_optimizer_are_checked() -> None:
    model = _mlp()
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        Guard("model", torch.optim.SGD(model.parameters(), lr=0.1))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"torch\.optim\.Optimizer"):
        Guard(model, "sgd")  # type: ignore[arg-type]


def test_a_second_rollback_in_one_incident_looks_further_back() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = Guard(model, opt, snapshot_every=2, policy=PolicyConfig(quiet=1, cooldown=0))
    for _ in range(7):
        guard.step(_backward(model, opt))
    assert guard.store.steps() == [2, 4, 6]  # keep=3
    first = [guard.step(_backward(model, opt, poison=math.nan)) for _ in range(2)][-1]
    assert first.action is ActionKind.ROLLBACK and first.rolled_back_to == 6
    second = [guard.step(_backward(model, opt, poison=math.nan)) for _ in range(2)][-1]
    assert second.action is ActionKind.ROLLBACK and second.rolled_back_to == 4
    assert "older than the one restored before" in second.message
    assert guard.lr_scale == 0.5 * 0.25  # the second rollback backs off twice


def test_default_guard_clips_to_the_healthy_scale_after_a_fault() -> None:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = Guard(model, opt)
    norms = [guard.step(_backward(model, opt)).total_norm for _ in range(6)]
    assert guard.counters["clipped"] == 0
    guard.step(_backward(model, opt, poison=math.inf))
    opt.zero_grad()
    (_loss(model) * 100).backward()  # a 100x gradient right after the fault
    record = guard.step()
    # One isolated skipped fault: only a gradient beyond 4x the healthy median is clipped, to it.
    bound = 4.0 * statistics.median(n for n in norms if n is not None)
    assert record.action is ActionKind.CLIP and record.total_norm is not None
    assert record.clip_coef == pytest.approx(bound / (record.total_norm + 1e-6), rel=1e-5)
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert after == pytest.approx(bound, rel=1e-4)


def test_a_rollback_restores_the_detectors_baselines_of_the_snapshot() -> None:
    # A noiseless regression that barely moves until step 80, then converges fast: at the fault
    # the detectors' baselines describe a loss ~1e4x below that of the weights a rollback to
    # step 80 restores. Kept live, they would call the restored run's ordinary loss a critical
    # spike, skip and roll back again until the budget is spent.
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x = torch.randn(64, 4)
    y = x @ torch.randn(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1e-3 if s < 80 else 1.0)
    guard = Guard(model, optimizer, scheduler=schedule, snapshot_every=20)
    snapshots: dict[int, Any] = {}
    records = []
    for step in range(140):
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if step in (100, 101):  # two faulty steps in a row: the weights are suspect
            model.weight.grad.fill_(math.nan)
        records.append(guard.step(loss))
        key = guard.store.steps()[-1]
        snapshots.setdefault(key, guard.monitor.detector_state())
    rollback = records[101]
    assert rollback.action is ActionKind.ROLLBACK and rollback.rolled_back_to == 80
    assert records[80].loss / records[99].loss > 1e4  # the baselines moved a long way down
    assert records[102].loss == pytest.approx(records[80].loss, rel=0.01)  # back at step 80
    after = records[102:]
    assert [r.action for r in after if r.action is not ActionKind.PROCEED] == []
    assert all(not r.alerts for r in after)
    assert guard.counters["rollbacks"] == 1 and guard.counters["skipped"] == 2


def test_a_new_task_with_a_higher_loss_is_accepted_not_fought_until_abort() -> None:
    # Targets switch to a new, 30x larger function at step 120 (a curriculum stage, a new
    # dataset). The guard backs off and clips, rolls back once, sees the restored weights fail
    # alike on the next two batches (as much evidence as the rollback had) and accepts the new
    # level; before, it rolled back three times and aborted.
    weights: list[list[torch.Tensor]] = []
    moments: list[int] = []
    lost: list[int] = []

    def run(guarded: bool) -> tuple[list[StepRecord], list[float]]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 1))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        guard = Guard(model, optimizer) if guarded else None
        old, new = torch.randn(8, 1), torch.randn(8, 1)
        records, losses = [], []
        for step in range(240):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(32, 8, generator=g)
            y = torch.tanh(x @ old) if step < 120 else 30**0.5 * torch.tanh(x @ new)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            losses.append(float(loss.detach()))
            if guard is None:
                optimizer.step()
            else:
                records.append(guard.step(loss))
                weights.append([p.detach().clone() for p in model.parameters()])
                moments.append(len(optimizer.state))
                lost.append(guard.counters["steps_lost"])
        return records, losses

    records, losses = run(guarded=True)
    _, plain = run(guarded=False)
    kinds = [r.action for r in records]
    assert kinds.count(ActionKind.ROLLBACK) == 1 and ActionKind.ABORT not in kinds
    (rollback,) = [r for r in records if r.action is ActionKind.ROLLBACK]
    (accepted,) = [r for r in records if r.reason is Reason.REGIME_CHANGE]
    assert 120 < rollback.step < 140 and accepted.step == rollback.step + 2
    assert "data changed" in accepted.message
    # The weights the rollback abandoned had begun to learn the new task: they come back, and
    # the probe's step (a gradient of the restored weights) is not applied.
    assert not accepted.applied and "abandoned are restored" in accepted.message
    before = weights[rollback.step - 1]  # what the rollback abandoned
    assert not all(torch.equal(a, b) for a, b in zip(weights[rollback.step], before, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(weights[accepted.step], before, strict=True))
    assert moments[accepted.step] == 0  # moments reset, as the rollback reset the restored ones
    assert lost[rollback.step] > 0 and lost[accepted.step] == 0  # its lost steps are back
    # From then on every step is applied, clipped at the new level's healthy scale at most.
    after = records[accepted.step + 1 :]
    assert all(r.applied and r.action in (ActionKind.PROCEED, ActionKind.CLIP) for r in after)
    # It learns the new task, a few steps behind the unguarded run (the steps clipped and backed
    # off before the rollback, and the probe's two).
    final = statistics.fmean(losses[-10:])
    assert accepted.loss is not None and final < 0.3 * accepted.loss
    assert final < 3 * statistics.fmean(plain[-10:])
