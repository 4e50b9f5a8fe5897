"""Scenarios: each explodes or stays healthy as labelled, deterministically, and quickly."""

from __future__ import annotations

import statistics

import pytest
import torch

import gradguard as gg
from gradguard import scenarios
from gradguard.errors import ConfigError
from gradguard.records import Severity
from gradguard.scenarios import TrainingRun
from gradguard.scenarios.exploding import CORRUPT_STEP

EXPLODING = [n for n in scenarios.names() if scenarios.get(n).explodes]
HEALTHY = [n for n in scenarios.names() if not scenarios.get(n).explodes]


def test_catalogue_has_the_required_runs() -> None:
    assert len(EXPLODING) >= 6 and len(HEALTHY) >= 4
    assert {"rnn_x3", "chain5_w2", "lstm_high_lr", "deep_mlp_gain", "corrupted_batch"} <= set(
        EXPLODING
    )
    assert any(scenarios.get(n).kind == "gradual" for n in EXPLODING)
    assert "noisy_tiny_batches" in HEALTHY
    assert all(scenarios.get(n).kind == "healthy" for n in HEALTHY)
    with pytest.raises(ConfigError, match="scenario must be one of"):
        scenarios.get("nope")


def _monitored(name: str, seed: int = 0) -> tuple[scenarios.Trace, list[int]]:
    alarms: list[int] = []
    monitors: list[gg.Monitor] = []

    def hook(run: TrainingRun, step: int, loss: torch.Tensor) -> None:
        if not monitors:
            monitors.append(gg.Monitor(run.model))
        if any(a.severity is not Severity.INFO for a in monitors[0].observe(loss)):
            alarms.append(step)

    return scenarios.train(scenarios.get(name), hook, seed=seed), alarms


@pytest.mark.parametrize("name", EXPLODING)
def test_exploding_run_diverges_deterministically_and_is_caught_in_time(name: str) -> None:
    trace, alarms = _monitored(name)
    assert trace.diverged and trace.divergence_step is not None
    assert trace.steps == trace.divergence_step + 1 <= scenarios.get(name).steps
    assert alarms and alarms[0] <= trace.divergence_step  # the default monitor warns in time
    again = scenarios.run_unguarded(scenarios.get(name))
    assert again == trace  # same losses, norms and divergence step: the monitor changed nothing


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_run_never_diverges_and_the_default_monitor_stays_quiet(name: str) -> None:
    trace, alarms = _monitored(name)
    assert not trace.diverged and trace.steps == scenarios.get(name).steps
    assert alarms == []


def test_noisy_healthy_run_has_natural_three_to_five_fold_spikes() -> None:
    norms = scenarios.run_unguarded(scenarios.get("noisy_tiny_batches")).norms
    ratios = [norms[i] / statistics.median(norms[i - 20 : i]) for i in range(20, len(norms))]
    assert sum(r >= 3.0 for r in ratios) >= 0.03 * len(ratios)  # a 3x jump every ~20 steps
    assert 5.0 <= max(ratios) < 100.0


def test_chain_reproduces_the_textbook_numbers() -> None:
    run = scenarios.get("chain5_w2").build()
    run.optimizer.zero_grad()
    run.compute_loss(0).backward()
    grads = [p.grad.item() for p in run.model.parameters()]  # type: ignore[union-attr]
    assert grads == [16.0] * 5  # each weight's gradient: product of the other four weights
    run.optimizer.step()
    assert [p.item() for p in run.model.parameters()] == pytest.approx([0.4] * 5)  # 2.0 - 1.6


def test_rnn_has_recurrent_weights_scaled_three_times() -> None:
    run = scenarios.get("rnn_x3").build()
    rnn = run.model.rnn  # type: ignore[union-attr]
    bound = 3.0 / 50**0.5  # default init is U(-1/sqrt(50), 1/sqrt(50)), times 3
    assert rnn.weight_hh_l0.abs().max().item() <= bound
    assert rnn.weight_hh_l0.abs().max().item() > 0.95 * bound
    assert run.batch(0)[0].shape == (100, 1, 10)
    assert run.optimizer.param_groups[0]["lr"] == 0.01


def test_build_is_seeded_and_leaves_the_global_rng_alone() -> None:
    scenario = scenarios.get("mlp_adam")
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    first, second = scenario.build(seed=3), scenario.build(seed=3)
    assert torch.rand(1) == expected
    for a, b in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.batch(7)[0], second.batch(7)[0])
    assert not torch.equal(first.batch(7)[0], first.batch(8)[0])


def test_a_hook_that_steps_itself_and_a_monitor_fed_measured_stats() -> None:
    scenario = scenarios.get("corrupted_batch")
    monitors: list[gg.Monitor] = []

    def guard_like(run: TrainingRun, step: int, loss: torch.Tensor) -> bool:
        if not monitors:
            monitors.append(gg.Monitor(run.model))
        monitors[0].observe(loss, stats=gg.measure(run.model))
        run.optimizer.step()
        run.step_scheduler()
        return True  # it stepped: train() must not step again

    trace = scenarios.train(scenario, guard_like, steps=160, stop_at_divergence=False)
    assert trace == scenarios.train(scenario, steps=160, stop_at_divergence=False)
    assert trace.divergence_step == 150 and trace.steps == 160
    assert monitors[0].summary()["first_alert_step"] == 150


def test_only_injected_faults_have_a_fault_free_twin() -> None:
    with_twin = {name for name in scenarios.names() if scenarios.get(name).fault_free is not None}
    assert with_twin == {"corrupted_batch"}
    assert scenarios.get("rnn_x3").build_fault_free(0) is None
    clean = scenarios.get("corrupted_batch").build_fault_free(0)
    faulty = scenarios.get("corrupted_batch").build(0)
    assert clean is not None
    for a, b in zip(clean.model.parameters(), faulty.model.parameters(), strict=True):
        assert torch.equal(a, b)  # same initialisation: only the batch at the fault differs
    assert torch.equal(clean.batch(7)[0], faulty.batch(7)[0])
    big = faulty.batch(CORRUPT_STEP)[0].abs().max() / clean.batch(CORRUPT_STEP)[0].abs().max()
    assert float(big) == pytest.approx(1e3)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_guarded_corrupted_run_ends_where_the_fault_free_run_ends(seed: int) -> None:
    # Skipping the corrupted step is the best a rescue can do without using the bad batch: the
    # guarded run lands within a few percent of a run that never saw it (one batch fewer).
    scenario = scenarios.get("corrupted_batch")

    def final_loss(run: TrainingRun, guard: gg.Guard | None) -> float:
        losses = []
        for step in range(scenario.steps):
            run.optimizer.zero_grad(set_to_none=True)
            loss = run.compute_loss(step)
            loss.backward()
            losses.append(float(loss.detach()))
            if guard is not None:
                guard.step(loss)
            else:
                run.optimizer.step()
        return sum(losses[-10:]) / 10

    run = scenario.build(seed)
    guard = gg.Guard(run.model, run.optimizer)
    guarded = final_loss(run, guard)
    clean_run = scenario.build_fault_free(seed)
    assert clean_run is not None
    clean = final_loss(clean_run, None)
    assert guard.counters["skipped"] == 1 and guard.counters["rollbacks"] == 0
    assert guarded == pytest.approx(clean, rel=0.03)
