"""Wrong arguments at every public entry point raise a GradguardError that names the value and
the fix, before anything changes; and the shared validators in gradguard.errors, as properties.

Turns shared/repro/reliability/repro_input_validation.py into tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import gradguard as gg
from gradguard import errors
from gradguard.errors import (
    ConfigError,
    ConfigTypeError,
    GradguardError,
    UnsupportedGradientError,
)
from gradguard.sinks import CsvSink, TensorBoardSink


def _param(value: float, n: int = 4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    p = torch.zeros(n, dtype=dtype, requires_grad=True)
    p.grad = torch.full((n,), value, dtype=dtype)
    return p


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    model(torch.randn(3, 2)).sum().backward()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


# ---------------------------------------------------------------- tensors listed twice


def test_a_tensor_listed_twice_is_measured_and_clipped_once() -> None:
    p = _param(10.0)
    assert gg.measure([p, p]).total_norm.item() == 20.0
    gg.clip_by_global_norm_([p, p], 1.0)
    assert p.grad is not None and p.grad.norm().item() == pytest.approx(1.0, rel=1e-6)
    named = gg.measure([("a", p), ("b", p)])  # a tied weight under two names
    assert named.names == ("a",)


# --------------------------------------------------------- gradients that cannot be clipped


def test_an_expanded_gradient_is_refused_before_anything_changes() -> None:
    first = _param(10.0)
    expanded = torch.zeros(5, requires_grad=True)
    expanded.grad = torch.tensor([10.0]).expand(5)
    for clip in (
        lambda: gg.clip_by_global_norm_([first, expanded], 1.0),
        lambda: gg.clip_per_tensor_norm_([first, expanded], 1.0),
        lambda: gg.clip_by_value_([first, expanded], 1.0),
        lambda: gg.clip.AdaptiveUnitClipper().clip_(gg.measure([first, expanded])),
    ):
        with pytest.raises(UnsupportedGradientError, match=r"'\[1\]'.*expanded.*clone\(\)"):
            clip()
        assert first.grad is not None and first.grad.tolist() == [10.0] * 4
    expanded.grad = expanded.grad.clone()  # the fix the message names
    gg.clip_by_global_norm_([first, expanded], 1.0)


def test_a_transposed_gradient_is_not_mistaken_for_an_expanded_one() -> None:
    p = torch.zeros(3, 4, requires_grad=True)
    p.grad = torch.full((4, 3), 5.0).t()  # not contiguous, but no two elements share memory
    gg.clip_by_global_norm_([p], 1.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)


def test_a_complex_gradient_is_refused_by_value_clipping() -> None:
    c = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    c.grad = torch.ones(3, dtype=torch.complex64) * 5
    for clip in (
        lambda: gg.clip_by_value_([c], 1.0),
        lambda: gg.clip_grad_value_([c], 1.0),
        lambda: gg.clip.ValueClipper(1.0).clip_(gg.measure([c])),
    ):
        with pytest.raises(UnsupportedGradientError, match=r"complex64.*clip_grad_norm_"):
            clip()
    assert c.grad.tolist() == [5 + 0j] * 3
    gg.clip_grad_norm_([c], 1.0)  # norm clipping of complex gradients works, as in torch
    assert c.grad.abs().norm().item() == pytest.approx(1.0, rel=1e-5)


# ------------------------------------------------------------ strings and bools as numbers


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda: gg.clip_by_global_norm_([_param(1.0)], "0.5"), "max_norm.*'0.5'"),
        (lambda: gg.clip_by_value_([_param(3.0)], True), "clip_value.*True"),
        (lambda: gg.measure([_param(1.0)], norm_type=True), "norm_type.*True"),
        (lambda: gg.PolicyConfig(skip_nonfinite="no"), "skip_nonfinite must be True or False"),
        (lambda: gg.PolicyConfig(recovered_ratio="2"), "recovered_ratio.*'2'"),
        (lambda: gg.PolicyConfig(window=100.0), "window.*100.0"),
        (lambda: gg.clip.ZScoreClipper(warmup_steps=True), "warmup_steps.*True"),
        (lambda: gg.clip.PercentileClipper(percentile="10"), "percentile.*'10'"),
        (lambda: gg.clip.GlobalNormClipper(torch.tensor(1.0)), r"max_norm.*\.item\(\)"),
    ],
)
def test_strings_bools_and_tensors_are_not_numbers(call: object, shown: str) -> None:
    with pytest.raises(ConfigTypeError, match=shown) as caught:
        call()  # type: ignore[operator]
    assert isinstance(caught.value, TypeError)  # also what Python's own checks raise


# ------------------------------------------------------------------------ the Guard


def test_an_empty_snapshot_dir_is_refused_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model, optimizer = _trained()
    with pytest.raises(ConfigError, match="snapshot_dir must name a folder, got ''"):
        gg.Guard(model, optimizer, snapshot_dir="")
    with pytest.raises(ConfigTypeError, match=r"snapshot_dir must be a folder path.*got 42"):
        gg.Guard(model, optimizer, snapshot_dir=42)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_reduce_lr_on_plateau_is_refused_before_any_step() -> None:
    model, optimizer = _trained()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    with pytest.raises(ConfigError, match=r"ReduceLROnPlateau.*scheduler\.step\(val_loss\)"):
        gg.Guard(model, optimizer, scheduler=plateau)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"scheduler": "cosine"}, "scheduler must have step.*'cosine'"),
        ({"sinks": [print]}, "sinks must have write.*close"),
        ({"sinks": gg.ConsoleSink()}, "sinks must be a list"),
        ({"scaler": object()}, "scaler must have scale"),
    ],
)
def test_guard_refuses_wrong_collaborators_at_construction(kwargs: dict, shown: str) -> None:
    model, optimizer = _trained()
    before = model.weight.detach().clone()
    with pytest.raises(ConfigTypeError, match=shown):
        gg.Guard(model, optimizer, **kwargs)
    assert torch.equal(model.weight, before)


def test_guard_load_state_dict_names_what_is_missing() -> None:
    model, optimizer = _trained()
    guard = gg.Guard(model, optimizer)
    with pytest.raises(ConfigTypeError, match="state must be a dict, got NoneType"):
        guard.load_state_dict(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"lacks \['counters'.*Guard\.state_dict\(\)"):
        guard.load_state_dict({"version": guard.state_dict()["version"]})
    guard.load_state_dict(guard.state_dict())  # the real thing still loads


# ------------------------------------------------------------------- monitor and sinks


def test_monitor_refuses_a_sink_object_and_a_complex_loss() -> None:
    model, _ = _trained()
    with pytest.raises(ConfigTypeError, match="sinks must be a list"):
        gg.Monitor(model, sinks=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigTypeError, match=r"loss must be a real number.*complex"):
        gg.Monitor(model).observe(torch.tensor(1 + 2j))
    with pytest.raises(ConfigTypeError, match=r"loss must be a tensor, a number or None.*'1.5'"):
        gg.Monitor(model).observe("1.5")  # type: ignore[arg-type]


def test_sinks_check_their_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigTypeError, match=r"path must be a file path.*got 5"):
        gg.JsonlSink(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigTypeError, match=r"metadata must be a dict, got list \[1, 2\]"):
        gg.JsonlSink(tmp_path / "x.jsonl", metadata=[1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="flush_secs must be a finite number > 0, got -1"):
        TensorBoardSink(tmp_path / "tb", flush_secs=-1)
    assert not (tmp_path / "x.jsonl").exists()


def test_csv_sink_does_not_replace_an_existing_table(tmp_path: Path) -> None:
    table = tmp_path / "results.csv"
    table.write_text("epoch,accuracy\n1,0.93\n")
    with pytest.raises(ConfigError, match=r"results.csv.*if_exists='overwrite'"):
        CsvSink(table)
    assert table.read_text() == "epoch,accuracy\n1,0.93\n"
    CsvSink(table, if_exists="overwrite").close()
    assert table.read_text().startswith("step,action")
    empty = tmp_path / "empty.csv"
    empty.touch()
    CsvSink(empty).close()  # an empty file holds nothing to lose


# ------------------------------------------------------------------------ clippers


@pytest.mark.parametrize("name", sorted(gg.clip.REGISTRY))
def test_every_clipper_refuses_anything_but_a_measurement(name: str) -> None:
    model, _ = _trained()
    before = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    with pytest.raises(
        ConfigTypeError, match=r"\.clip_ takes this step.s measurement.*gg\.measure\(model\)"
    ):
        gg.clip.REGISTRY[name]().clip_(model)  # type: ignore[arg-type]
    for p, g in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.grad, g)  # type: ignore[arg-type]


def test_clipper_settings_are_checked() -> None:
    with pytest.raises(ConfigTypeError, match=r"exclude must be a collection of names.*got 5"):
        gg.clip.AdaptiveUnitClipper(exclude=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigTypeError, match=r"Write exclude=\['fc.weight'\]"):
        gg.clip.AdaptiveUnitClipper(exclude="fc.weight")
    with pytest.raises(ConfigError, match="window must be an integer between 1 and 10000000"):
        gg.clip.PercentileClipper(window=10**12)
    assert gg.clip.AdaptiveUnitClipper(exclude=("a", "b")).exclude == {"a", "b"}


# ------------------------------------------------------------------ fused_clipped_step


@pytest.mark.parametrize("coef", [math.nan, math.inf, 0.0, -0.5])
def test_fused_step_skips_an_unusable_coefficient(coef: float) -> None:
    model, _ = _trained()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    before = [p.detach().clone() for p in model.parameters()]
    gg.clip.fused_clipped_step(optimizer, torch.tensor(coef))
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert not hasattr(optimizer, "grad_scale")


def test_fused_step_still_applies_a_good_coefficient_and_checks_types() -> None:
    model, _ = _trained()
    twin = nn.Linear(2, 1)
    twin.load_state_dict(model.state_dict())
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone() * 0.5  # type: ignore[union-attr]
    fused = torch.optim.SGD(model.parameters(), lr=0.1, fused=True)
    gg.clip.fused_clipped_step(fused, torch.tensor(0.5))
    torch.optim.SGD(twin.parameters(), lr=0.1).step()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    with pytest.raises(ConfigTypeError, match="coef must be a 0-d floating-point tensor"):
        gg.clip.fused_clipped_step(fused, torch.tensor(1))
    with pytest.raises(ConfigTypeError, match=r"coef must be .*float 0.5"):
        gg.clip.fused_clipped_step(fused, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigTypeError, match=r"optimizer must be a torch.optim.Optimizer"):
        gg.clip.fused_clipped_step(model, torch.tensor(0.5))  # type: ignore[arg-type]


# -------------------------------------------------------------- the validators themselves

_NOT_NUMBERS = st.one_of(
    st.booleans(), st.text(max_size=5), st.none(), st.lists(st.integers(), max_size=2)
)


@given(st.floats(min_value=1e-300, max_value=1e300))
def test_check_positive_returns_every_finite_positive_number(value: float) -> None:
    assert errors.check_positive("x", value) == value


@given(_NOT_NUMBERS)
def test_no_validator_takes_a_non_number_for_a_number(value: object) -> None:
    for check in (
        lambda: errors.check_positive("x", value),
        lambda: errors.check_real("x", value),
        lambda: errors.check_fraction("x", value),
        lambda: errors.check_ratio("x", value),
        lambda: errors.check_nonnegative("x", value),
        lambda: errors.check_int("x", value, minimum=0),
    ):
        with pytest.raises(ConfigTypeError) as caught:
            check()
        assert str(caught.value).startswith("x must be ")
        assert f"got {value!r}" in str(caught.value)


@given(st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf)))
def test_check_positive_refuses_zero_negative_nan_and_inf(value: float) -> None:
    with pytest.raises(ConfigError, match="x must be"):
        errors.check_positive("x", value)


@given(st.integers(-5, 5), st.integers(0, 3))
def test_check_int_enforces_its_range(value: int, minimum: int) -> None:
    if value >= minimum:
        assert errors.check_int("n", value, minimum=minimum) == value
    else:
        with pytest.raises(ConfigError, match=f"n must be an integer >= {minimum}, got {value}"):
            errors.check_int("n", value, minimum=minimum)


def test_every_error_is_a_gradguard_error_and_keeps_its_builtin_kind() -> None:
    assert issubclass(ConfigTypeError, ConfigError) and issubclass(ConfigTypeError, TypeError)
    assert issubclass(errors.NonFiniteError, RuntimeError)  # what torch's error_if_nonfinite raises
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, GradguardError), name


def test_check_path_and_mapping_and_interface() -> None:
    assert errors.check_path("d", Path("a")) == "a"
    with pytest.raises(ConfigError, match="d must name a folder, got ''"):
        errors.check_path("d", "")
    with pytest.raises(ConfigTypeError, match="m must be a dict, got str 'x'"):
        errors.check_mapping("m", "x")
    with pytest.raises(ConfigTypeError, match="which lacks close"):
        errors.check_interface("s", print, ("__call__", "close"))


# ------------------------------------------------------------- more entry points, swept


@pytest.mark.parametrize(
    ("call", "shown"),
    [
        (lambda m, o: gg.Monitor(m, detectors=5), "detectors must be a list, got 5"),
        (lambda m, o: gg.Monitor(m, detectors=[5]), "detectors must have update"),
        (lambda m, o: gg.Monitor(m, sharded_grads="no"), "sharded_grads must be True or False"),
        (lambda m, o: gg.Guard(m, o, restore_rng="yes"), "restore_rng must be True or False"),
        (lambda m, o: gg.Guard(m, o, monitor=5), "monitor must be a gg.Monitor or None, got int"),
        (lambda m, o: gg.Monitor(m).load_state_dict(None), "state must be a dict"),
        (lambda m, o: gg.Monitor(m).load_detector_state({}), "must be the list"),
        (lambda m, o: gg.Guard(m, o).policy.load_state_dict(None), "state must be a dict"),
        (lambda m, o: gg.remedies.init_for_stability(5), "model must be an nn.Module, got int"),
        (lambda m, o: gg.clip.step_coefficient(None, torch.ones(2)), "step_coefficient takes"),
        (lambda m, o: gg.Monitor(m).observe(1.0, stats=m), "stats must be this step's"),
        (lambda m, o: gg.clip_by_global_norm_(None, 1.0, stats=m), r"\(stats=\.\.\.\) takes"),
        (
            lambda m, o: gg.clip.safe_coefficient(
                "1", torch.ones(()), torch.ones((), dtype=bool), 0
            ),
            "bound must be a real number, got '1'",
        ),
    ],
)
def test_more_entry_points_refuse_wrong_types(call: object, shown: str) -> None:
    model, optimizer = _trained()
    with pytest.raises(ConfigTypeError, match=shown):
        call(model, optimizer)  # type: ignore[operator]


def test_monitor_load_state_dict_names_what_is_missing() -> None:
    model, _ = _trained()
    monitor = gg.Monitor(model)
    with pytest.raises(ConfigError, match=r"lacks \['alerts', 'counts'"):
        monitor.load_state_dict({"detectors": monitor.detector_state()})
    monitor.load_state_dict(monitor.state_dict())
