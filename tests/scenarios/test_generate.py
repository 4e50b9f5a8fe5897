"""The generated family: size, stable ids, a fixed disjoint split, faults that strike, 1x trains."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from gradguard.errors import ConfigError, TrainingDivergedError
from gradguard.scenarios import generate as gen
from gradguard.scenarios.generate import GeneratedRun, GeneratedScenario, RunResult, Stepper

ALL = gen.generate()


def _spec(arch: gen.Arch, optimizer: gen.OptimizerName, **changes: object) -> GeneratedScenario:
    spec = GeneratedScenario(arch, optimizer, 1, "constant", "none", seed=7, split="tune")
    return dataclasses.replace(spec, **changes)  # type: ignore[arg-type]


def test_family_has_at_least_60_runs_with_unique_stable_ids() -> None:
    ids = [s.id for s in ALL]
    assert len(ALL) >= 60
    assert len(set(ids)) == len(ids)
    assert [s.id for s in gen.generate()] == ids  # the same family on every call
    # Pinned: a change to the sampler renames runs, and results tuned on them stop applying.
    assert ids[:2] == ["mlp-rmsprop-x1-constant-none#0", "deepmlp-adam-x1-warmup-none#1"]
    assert ALL[0].id.count("-") == 4 and ALL[0].id.endswith("#0")
    assert gen.by_id(ALL[41].id) == ALL[41]
    with pytest.raises(ConfigError, match="no generated run is called 'nope'"):
        gen.by_id("nope")


def test_split_is_deterministic_disjoint_and_covers_the_family() -> None:
    tune, validate = gen.generate("tune"), gen.generate("validate")
    assert tune == gen.generate("tune") and validate == gen.generate("validate")
    assert tune + validate == ALL
    assert not {s.id for s in tune} & {s.id for s in validate}
    assert {s.split for s in tune} == {"tune"} and {s.split for s in validate} == {"validate"}
    assert [s.id for s in gen.generate(seed=1)] != [s.id for s in ALL]
    with pytest.raises(ConfigError, match="split must be 'tune', 'validate' or 'all', got 'test'"):
        gen.generate("test")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="per_half must be an integer >= 20"):
        gen.generate(per_half=5)


def test_every_architecture_optimizer_fault_and_multiplier_is_in_both_halves() -> None:
    for half in ("tune", "validate"):
        specs = gen.generate(half)  # type: ignore[arg-type]
        assert {s.arch for s in specs} == set(gen.ARCHS)
        assert {s.optimizer for s in specs} == set(gen.OPTIMIZERS)
        assert {s.fault for s in specs} == {*gen.FAULTS, "runaway"}  # runaway: appended
        assert {s.multiplier for s in specs} == set(gen.MULTIPLIERS)
        assert {s.schedule for s in specs} == set(gen.SCHEDULES)
        # one healthy control (1x, no fault) per architecture
        assert {s.arch for s in specs if s.expected_healthy} == set(gen.ARCHS)
    assert not any(s.optimizer == "lbfgs" and s.fault == "overflow" for s in ALL)
    for s in ALL:
        assert (s.fault == "none") == (s.fault_step == -1)
        sampled = s.fault not in ("none", "runaway")  # runaway runs start early: see GRADUAL
        assert not sampled or s.steps // 3 <= s.fault_step <= 2 * s.steps // 3


@pytest.mark.parametrize("arch", gen.ARCHS)
def test_one_run_per_architecture_builds_and_takes_three_steps(arch: gen.Arch) -> None:
    spec = next(s for s in ALL if s.arch == arch)
    short = dataclasses.replace(spec, steps=3, fault="none", fault_step=-1)
    before = [p.detach().clone() for p in short.build().model.parameters()]
    result = gen.run(short)
    assert result.status == "ok" and len(result.losses) == 3
    assert all(math.isfinite(v) for v in result.losses) and result.finite
    assert math.isfinite(result.initial) and result.initial > 0
    after = short.build()  # building again gives the same initial weights
    assert all(torch.equal(a, b) for a, b in zip(before, after.model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("arch", "optimizer"),
    [("gru", "rmsprop"), ("cnn", "momentum"), ("mlp", "lbfgs"), ("transformer", "adamw")],
)
def test_a_1x_run_without_fault_trains(arch: gen.Arch, optimizer: gen.OptimizerName) -> None:
    result = gen.run(_spec(arch, optimizer, steps=60))
    assert result.divergence_step is None and result.finite
    assert result.final < 0.5 * result.initial  # the held-out loss at least halves
    assert gen.classify(_spec(arch, optimizer), result) == "healthy"


def test_a_100x_sgd_run_explodes_where_the_1x_run_does_not() -> None:
    result = gen.run(_spec("mlp", "sgd", multiplier=100, steps=40))
    assert not result.finite or result.divergence_step is not None
    assert gen.classify(_spec("mlp", "sgd", multiplier=100), result) == "exploding"


def _grads_after(spec: GeneratedScenario, step: int) -> tuple[GeneratedRun, Tensor, list[Tensor]]:
    run = spec.build()
    loss = run.compute_loss(step)
    torch.autograd.backward(loss)
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    return run, loss.detach(), grads


def test_faults_strike_at_their_step_only() -> None:
    nan = _spec("mlp", "sgd", fault="nan", fault_step=2, seed=8)  # even seed: NaN
    _, loss, grads = _grads_after(nan, 2)
    assert math.isfinite(loss.item()) and all(torch.isnan(g).any() for g in grads)
    _, _, grads = _grads_after(nan, 1)
    assert all(torch.isfinite(g).all() for g in grads)
    inf = _spec("mlp", "sgd", fault="nan", fault_step=2, seed=9)  # odd seed: Inf
    assert any(torch.isinf(g).any() for g in _grads_after(inf, 2)[2])

    corrupt = _spec("mlp", "sgd", fault="corrupt", fault_step=2)
    clean = _spec("mlp", "sgd").build().compute_loss(2).item()
    assert corrupt.build().compute_loss(2).item() > 1e4 * clean
    assert corrupt.build().compute_loss(3).item() == pytest.approx(clean, rel=1.0)

    weight = _spec("mlp", "sgd", fault="infweight", fault_step=2).build()
    weight.compute_loss(1)
    assert all(torch.isfinite(p).all() for p in weight.model.parameters())
    assert not math.isfinite(weight.compute_loss(2).item())

    noisy = _spec("mlp", "sgd", fault="labelnoise", fault_step=2).build()
    plain = _spec("mlp", "sgd").build()
    for step in (2, 2 + gen.LABEL_NOISE_STEPS - 1):
        assert noisy.compute_loss(step).item() > 10 * plain.compute_loss(step).item()
    assert noisy.compute_loss(2 + gen.LABEL_NOISE_STEPS).item() == plain.compute_loss(7).item()


def test_overflow_run_has_a_scaler_that_skips_the_overflowing_steps() -> None:
    spec = _spec("mlp", "adam", fault="overflow", fault_step=3, steps=40)
    assert spec.build().scaler is not None and _spec("mlp", "adam").build().scaler is None
    result = gen.run(spec)
    assert result.finite and result.divergence_step is None  # the scaler shrugs it off
    assert gen.classify(spec, result) == "tolerated"


def test_runner_reports_unsupported_and_aborted_methods() -> None:
    spec = _spec("mlp", "sgd", steps=10)
    assert gen.run(spec, lambda run: None).status == "unsupported"

    def aborting(run: GeneratedRun) -> Stepper:
        plain = gen.plain(run)

        def step(loss: Tensor | None, closure: Callable[[], Tensor] | None) -> None:
            if len(calls) == 4:
                raise TrainingDivergedError("gave up")
            calls.append(1)
            plain(loss, closure)

        return step

    calls: list[int] = []
    result = gen.run(spec, aborting)
    assert result.status == "aborted" and len(result.losses) == 4 and math.isfinite(result.final)
    unguarded = gen.run(spec)
    assert unguarded.losses[:4] == result.losses  # the same seeded run up to the abort


def test_incident_step_is_the_divergence_or_the_start_of_the_final_rise() -> None:
    spec = _spec("mlp", "sgd")

    def result(losses: tuple[float, ...], divergence: int | None) -> RunResult:
        final = losses[-1]
        return RunResult("x", "ok", losses, 1.0, final, math.isfinite(final), divergence, 0.0, 0.0)

    assert gen.incident_step(spec, result((1.0, math.nan, math.nan), 1)) == 1
    rising = result((1.0, 0.5, 3.0, 0.9, 2.5, 4.0, 8.0), None)
    assert gen.classify(spec, rising) == "exploding" and gen.incident_step(spec, rising) == 4
    assert gen.classify(spec, result((1.0, 0.5, 0.4), None)) == "healthy"
    faulty = dataclasses.replace(spec, fault="labelnoise", fault_step=1)
    assert gen.classify(faulty, result((1.0, 0.5, 0.4), None)) == "tolerated"
