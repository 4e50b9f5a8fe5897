"""The rescue ladder's newer rungs: persistent bound, last resort, give-up modes, rate ceilings."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard.errors import ConfigError, TrainingDivergedError
from gradguard.records import ActionKind, Reason, StepRecord
from gradguard.recover import RateCeiling
from gradguard.scenarios import generate


def _nan_step(model: nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
    opt.zero_grad()
    loss = model(torch.randn(8, 4)).pow(2).mean() * math.nan
    loss.backward()
    return loss


def _guard(on_give_up: gg.GiveUp) -> tuple[gg.Guard, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    policy = gg.PolicyConfig(consecutive_limit=1, max_rollbacks=1)
    return gg.Guard(model, opt, policy=policy, on_give_up=on_give_up), model, opt


def test_give_up_stop_sets_should_stop_and_skips_every_later_step() -> None:
    guard, model, opt = _guard("stop")
    kinds = [guard.step(_nan_step(model, opt)).action for _ in range(3)]
    assert kinds == [ActionKind.ROLLBACK, ActionKind.ROLLBACK, ActionKind.ABORT]
    assert guard.should_stop
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    record = guard.step()
    assert not record.applied and record.reason is Reason.BUDGET_EXHAUSTED
    assert "should_stop" in record.message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert guard.state_dict()["should_stop"] is True


def test_give_up_continue_goes_on_and_raise_raises() -> None:
    guard, model, opt = _guard("continue")
    kinds = [guard.step(_nan_step(model, opt)).action for _ in range(4)]
    assert kinds[2:] == [ActionKind.ABORT, ActionKind.ABORT] and not guard.should_stop
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    assert guard.step().applied  # a healthy step after giving up is trained on
    guard, model, opt = _guard("raise")
    guard.step(_nan_step(model, opt))
    guard.step(_nan_step(model, opt))
    with pytest.raises(TrainingDivergedError):
        guard.step(_nan_step(model, opt))
    with pytest.raises(ConfigError, match="on_give_up"):
        gg.Guard(model, opt, on_give_up="ignore")  # type: ignore[arg-type]


def test_rate_ceiling_holds_a_ramping_schedule_at_the_rate_that_failed() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ceiling = RateCeiling(opt)
    with ceiling.applied():
        assert opt.param_groups[0]["lr"] == 1.0  # untouched before any backoff
    ceiling.set_scale(0.5)  # the trouble came at rate 1.0
    for scheduled, expected in [(1.0, 0.5), (4.0, 0.5), (0.2, 0.2)]:
        opt.param_groups[0]["lr"] = scheduled  # a scheduler's step, or the user's
        with ceiling.applied():
            assert opt.param_groups[0]["lr"] == pytest.approx(expected)
        assert opt.param_groups[0]["lr"] == scheduled  # the schedule's own value is kept
    opt.param_groups[0]["lr"] = 0.4
    ceiling.set_scale(0.25)  # a second backoff, while the schedule had fallen to 0.4
    assert ceiling.rate(0, 0.4) == pytest.approx(0.2) and ceiling.rate(0, 10.0) == pytest.approx(
        0.2
    )
    ceiling.set_scale(1.0)  # fully restored: the rate that failed stays the ceiling
    assert ceiling.rate(0, 10.0) == pytest.approx(0.8) and ceiling.rate(0, 0.1) == 0.1
    restored = RateCeiling(opt)
    restored.load_state_dict(ceiling.state_dict())
    assert restored.rate(0, 10.0) == ceiling.rate(0, 10.0)


def _lr_range_run(guarded: bool) -> tuple[list[float], float]:
    """An LR-range test: the rate grows 10x every 40 steps until the run blows up."""
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = x @ torch.randn(10, 1)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 10 ** (s / 40))
    guard = gg.Guard(model, opt, scheduler=sched) if guarded else None
    rates = []
    for t in range(240):
        opt.zero_grad()
        idx = torch.arange(t * 32, t * 32 + 32) % 256
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        if guard is not None:
            rates.append(guard.step(loss).lr or math.nan)
        else:
            opt.step()
            sched.step()
    with torch.no_grad():
        final = float(nn.functional.mse_loss(model(x), y))
    return rates, final


def test_an_lr_range_ramp_is_capped_not_fought_until_abort() -> None:
    rates, final = _lr_range_run(guarded=True)
    _, unguarded = _lr_range_run(guarded=False)
    assert not math.isfinite(unguarded) or unguarded > 1e3  # the ramp destroys the plain run
    assert math.isfinite(final) and final < 1.0
    # After the trouble the rate stops following the schedule (which reaches 1e3 at the end).
    assert max(rates[-40:]) < 1.0


def test_after_an_escalation_the_bound_stays_on() -> None:
    # A linear model at a rate past its stability limit: once the guard had to escalate, every
    # later step is clipped to the healthy scale instead of being released and re-fought.
    torch.manual_seed(0)
    x = torch.randn(512, 20) * 3
    y = x @ torch.randn(20, 1)
    model = nn.Linear(20, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    guard = gg.Guard(model, opt)
    records = []
    for t in range(300):
        opt.zero_grad()
        idx = torch.arange(t * 16, t * 16 + 64) % 512
        loss = nn.functional.mse_loss(model(x[idx]), y[idx])
        loss.backward()
        records.append(guard.step(loss))
    escalations = [r.step for r in records if r.action in (ActionKind.BACKOFF, ActionKind.ROLLBACK)]
    assert escalations
    after = records[escalations[-1] + 1 :]
    bound = guard.policy.healthy_norm()
    assert bound is not None and guard.policy.state_dict()["persistent"]
    assert all(r.total_norm * r.clip_coef <= max(bound, r.total_norm) * 2 + 1e-6 for r in after)
    assert all(math.isfinite(r.loss or 0.0) for r in records[-20:])


@settings(max_examples=10, deadline=None)
@given(
    bound=st.floats(0.05, 5.0),
    lr=st.floats(1e-3, 0.3),
    scale=st.floats(0.1, 30.0),
    seed=st.integers(0, 10_000),
)
def test_with_a_fixed_bound_every_untroubled_step_is_clip_grad_norm_then_step(
    bound: float, lr: float, scale: float, seed: int
) -> None:
    # Dominance by construction: Guard(clip=c) on finite steps without a critical alert is
    # exactly clip_grad_norm_(c) + step(), whatever the bound, rate and gradient scale.
    def run(guarded: bool) -> tuple[list[torch.Tensor], list[ActionKind]]:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
        guard = gg.Guard(model, opt, clip=bound) if guarded else None
        kinds = []
        for t in range(12):
            g = torch.Generator().manual_seed(seed + t)
            x = torch.randn(16, 6, generator=g) * scale
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), torch.randn(16, 1, generator=g))
            loss.backward()
            if guard is not None:
                kinds.append(guard.step(loss).action)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), bound)
                opt.step()
        return [p.detach().clone() for p in model.parameters()], kinds

    guarded, kinds = run(True)
    plain, _ = run(False)
    if set(kinds) <= {ActionKind.PROCEED, ActionKind.CLIP}:
        assert all(torch.equal(a, b) for a, b in zip(guarded, plain, strict=True))


def test_finish_step_twice_is_refused_instead_of_recording_the_step_twice() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = gg.Guard(model, opt)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    pending = guard.begin_step()
    guard.finish_step(pending)
    with pytest.raises(ConfigError, match="finish_step once"):
        guard.finish_step(pending)
    assert guard.counters["steps"] == 1


def _weighted_run(method: str) -> tuple[float, list[gg.StepRecord]]:
    """An MLP regression with SGD whose loss weight grows 1.25x a step from step 30 (an
    auxiliary loss on a schedule run away): the held-out loss, unweighted, and the records."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = gg.Guard(model, optimizer) if method == "guard" else None
    w = torch.randn(8, 1)
    held_x = torch.randn(256, 8, generator=torch.Generator().manual_seed(99))
    records = []
    for step in range(120):
        x = torch.randn(32, 8, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad(set_to_none=True)
        weight = 1.25 ** max(0, step - 29)
        loss = weight * nn.functional.mse_loss(model(x), torch.tanh(x @ w))
        loss.backward()
        if guard is not None:
            records.append(guard.step(loss))
            continue
        if method == "clip":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(held_x), torch.tanh(held_x @ w))), records


def test_a_loss_weight_that_runs_away_is_clipped_through_not_rolled_back_again_and_again() -> None:
    # The weights are fine; the loss is scaled. One rollback tests that: the restored weights'
    # own loss grew alike, so the loss moved, not the weights; the abandoned weights come back
    # and the bound holds the rest of the run, as clip_grad_norm_ would. Before, the guard
    # rolled back to step 0 three times and ended near the untrained loss.
    plain, _ = _weighted_run("none")
    clipped, _ = _weighted_run("clip")
    guarded, records = _weighted_run("guard")
    assert math.isnan(plain) and 0.05 < clipped < 0.2
    assert guarded <= 1.05 * clipped
    kinds = [(r.action, r.reason) for r in records]
    (rollback,) = [r for r in records if r.action is ActionKind.ROLLBACK]
    (accept,) = [r for r in records if r.reason is Reason.REGIME_CHANGE]
    assert 30 < rollback.step < 50 and accept.step == rollback.step + 2
    assert not accept.applied and "abandoned are restored" in accept.message
    assert (ActionKind.ABORT, Reason.BUDGET_EXHAUSTED) not in kinds
    assert all(r.applied for r in records[accept.step + 1 :])
    assert all(r.clip_coef < 1.0 for r in records[accept.step + 1 :])  # the bound stays on


def test_lbfgs_is_not_clipped_by_the_automatic_bound_and_survives_its_ramp() -> None:
    # LBFGS at 100x with a rising rate (a run of the generated family, seed 1, never tuned on).
    # Its step comes from a curvature model fitted to gradient differences: gradients clipped
    # by a factor that changes from step to step corrupted it, and the guard ended at a loss of
    # 230 after five rollbacks. Unclipped, skipped and rolled back as needed, it trains.
    (spec,) = [s for s in generate.generate(seed=1) if s.id == "mlp-lbfgs-x100-ramp-none#56"]
    guards: list[gg.Guard] = []

    def guarded(run: generate.GeneratedRun) -> generate.Stepper:
        guard = gg.Guard(run.model, run.optimizer, scheduler=run.scheduler)
        guards.append(guard)
        return lambda loss, closure: guard.step(closure=closure)

    result = generate.run(spec, guarded)
    assert guards[0].policy.clip is None and guards[0].counters["clipped"] == 0
    assert math.isnan(generate.run(spec).final)  # unguarded
    assert result.finite and result.final < 0.1
    # An explicit bound is still honoured: the user asked for it.
    model = nn.Linear(4, 1)
    explicit = gg.Guard(model, torch.optim.LBFGS(model.parameters()), clip=0.5)
    assert explicit.policy.clip == 0.5


def _guard_against_clip_norm(
    run_id: str, seed: int = 0
) -> tuple[generate.RunResult, generate.RunResult, list[StepRecord]]:
    """A run of the generated family under ``Guard()`` and under ``clip_grad_norm_(1.0)``."""
    spec = generate.by_id(run_id, seed=seed)
    records: list[StepRecord] = []

    def guarded(run: generate.GeneratedRun) -> generate.Stepper:
        guard = gg.Guard(run.model, run.optimizer, scheduler=run.scheduler)
        return lambda loss, closure: records.append(guard.step(loss))

    def clip_norm(run: generate.GeneratedRun) -> generate.Stepper:
        params = list(run.model.parameters())

        def step(loss: torch.Tensor | None, closure: object) -> None:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            run.optimizer.step()
            run.step_scheduler()

        return step

    return generate.run(spec, guarded), generate.run(spec, clip_norm), records


def test_a_nine_fold_norm_jump_is_clipped_before_a_runaway_loss_damages_the_weights() -> None:
    # A runaway loss weight on an SGD RNN of the generated family (validation half). Its norm
    # went 1.7 -> 4.0 -> 14.5: the 14.5 step, 9x the healthy median but under the old 10x spike
    # ratio, was applied whole, and the guard ended 1.48x clip_grad_norm_(1.0)'s final loss.
    result, peer, records = _guard_against_clip_norm("rnn-sgd-x1-constant-runaway#65")
    assert result.finite and result.final <= 1.25 * peer.final
    jump = next(r for r in records if r.total_norm > 5.0 * records[0].total_norm)
    assert jump.reason is Reason.SPIKE and jump.applied and jump.clip_coef < 0.2


def test_one_corrupt_batch_is_clipped_without_slowing_the_rest_of_the_run() -> None:
    # A momentum CNN at its base rate meets one corrupt batch (validation half): loss 19 and a
    # gradient 500x healthy. The guard used to halve the rate for the rest of the run for that
    # one loss spike and ended 2.2x clip_grad_norm_(1.0)'s final loss.
    result, peer, records = _guard_against_clip_norm("cnn-momentum-x1-constant-corrupt#55")
    assert result.finite and result.final <= 1.25 * peer.final
    corrupt = max(records, key=lambda r: r.total_norm)
    assert "loss_spike" in {a.kind.value for a in corrupt.alerts}
    assert corrupt.applied and corrupt.clip_coef < 0.01
    assert all(r.action is not ActionKind.BACKOFF for r in records)


def test_a_stretch_of_noisy_labels_is_a_new_level_and_the_trained_weights_come_back() -> None:
    # A GRU with AdamW on a rising rate (a family never tuned on, seed 2) meets 5 batches of
    # noisy labels, loss 650-1800. Two of them in a row roll back to the step-0 snapshot; the
    # restored weights meet the same noise, so the level moved, not the weights. The guard kept
    # the step-0 weights because their loss on a later noisy batch was lower, and ended at 0.75,
    # 7x clip_grad_norm_(1.0) and 2.8x unguarded; the weights the rollback abandoned come back.
    result, peer, records = _guard_against_clip_norm("gru-adamw-x3-ramp-labelnoise#45", seed=2)
    assert result.finite and result.final <= 1.25 * peer.final
    (accept,) = [r for r in records if r.reason is Reason.REGIME_CHANGE]
    assert not accept.applied and "abandoned are restored" in accept.message


def test_the_state_a_rollback_abandons_is_kept_only_while_its_probe_runs() -> None:
    # Two non-finite losses in a row roll back. Non-finite values are never a new level, so no
    # probe runs and nothing of what the rollback abandoned is copied.
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    guard = gg.Guard(model, opt, snapshot_every=5)
    held = []
    for step in range(36):
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        if step in (30, 31):
            loss = loss * math.nan
        loss.backward()
        record = guard.step(loss)
        held.append((record.action, guard.policy.probing, guard._abandoned is not None))
    assert held[31] == (ActionKind.ROLLBACK, False, False)
    assert all(not probing and not kept for _, probing, kept in held[32:])
