"""The hot path of measure(): its C-level fast path agrees with the checked slow path.

``grads_of`` reads every gradient with C-level passes when all of them are plain dense tensors,
and falls back to ``named_grads`` otherwise; the norms are computed in inference mode and handed
back as ordinary tensors. These tests pin that the shortcut changes no value, name or error.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradguard as gg
from gradguard.errors import NoGradientsError, UnsupportedGradientError
from gradguard.stats import named_grads, named_tensors, param_norm
from gradguard.stats.params import grads_of


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 1))
    model(torch.randn(5, 4)).pow(2).sum().backward()
    return model


def _columns(triples: list[tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[object, ...]:
    return (
        tuple(n for n, _, _ in triples),
        tuple(t for _, t, _ in triples),
        [g for _, _, g in triples],
    )


def test_fast_path_returns_what_named_grads_returns() -> None:
    model = _model()
    named = named_tensors(model)
    names, tensors, grads = grads_of(named)
    ref_names, ref_tensors, ref_grads = _columns(named_grads(named))
    assert names == ref_names == ("0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias")
    assert all(a is b for a, b in zip(tensors, ref_tensors, strict=True))  # type: ignore[call-overload]
    assert all(a is b for a, b in zip(grads, ref_grads, strict=True))  # type: ignore[call-overload]


def test_missing_gradients_take_the_slow_path_and_are_skipped() -> None:
    model = _model()
    model[2].weight.grad = None
    names, tensors, grads = grads_of(model)
    assert "2.weight" not in names and len(names) == len(tensors) == len(grads) == 5
    assert grads[2] is model[2].bias.grad
    model.zero_grad(set_to_none=True)
    with pytest.raises(NoGradientsError, match="backward"):
        grads_of(model)


def test_a_sparse_gradient_is_still_refused_by_name() -> None:
    emb = nn.Embedding(10, 3, sparse=True)
    lin = nn.Linear(3, 1)
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    named = named_tensors([("lin.weight", lin.weight), ("emb.weight", emb.weight)])
    with pytest.raises(UnsupportedGradientError, match=r"'emb\.weight'.*sparse=False"):
        gg.measure(named)  # the norm kernel refuses it; measure names it
    with pytest.raises(UnsupportedGradientError, match=r"'emb\.weight'.*sparse=False"):
        grads_of(named)  # checked up front by default
    assert grads_of(named, check_layout=False)[0] == ("lin.weight", "emb.weight")


def test_norms_are_bit_identical_to_clip_grad_norm_and_ordinary_tensors() -> None:
    model = _model()
    stats = gg.measure(named_tensors(model))
    expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert torch.equal(stats.total_norm, expected)
    reference = torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])  # type: ignore[arg-type]
    assert torch.equal(stats.norms, reference)
    # Computed in inference mode, handed back as ordinary tensors: in-place and autograd work.
    assert not stats.norms.is_inference() and not stats.total_norm.is_inference()
    weight = torch.ones((), requires_grad=True)
    (weight * stats.total_norm).backward()
    assert weight.grad is not None and torch.equal(weight.grad, stats.total_norm)
    stats.norms.mul_(2.0)


def test_a_dtype_changed_in_place_after_validation_is_measured_in_its_new_dtype() -> None:
    model = _model()
    named = named_tensors(model)  # validated once, as Monitor and Guard do
    assert gg.measure(named).total_norm.dtype == torch.float32
    model.double()  # swaps every parameter's data in place: same objects, new dtype
    model[2].bfloat16()  # and a second group, between two float64 layers
    torch.manual_seed(1)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    stats = gg.measure(named)
    # Grouped by dtype: the names, tensors and gradients follow the norms, whatever the order.
    assert sorted(stats.names) == sorted(name for name, _ in model.named_parameters())
    assert stats.total_norm.dtype == stats.norms.dtype == torch.float64  # the widest group
    by_name = dict(model.named_parameters())
    for name, norm, param, grad in zip(
        stats.names, stats.norms, stats.params, stats.grads, strict=True
    ):
        assert param is by_name[name] and grad is by_name[name].grad
        expected = torch.linalg.vector_norm(grad, dtype=torch.float32 if name[0] == "2" else None)
        assert torch.equal(norm, expected.double())


def test_named_tensors_cache_their_columns_and_notice_a_new_entry() -> None:
    model = _model()
    named = named_tensors(model)
    first = named.columns()
    assert named.columns() is first  # built once, reused every step
    extra = torch.zeros(2, requires_grad=True)
    extra.grad = torch.tensor([3.0, 4.0])
    named.append(("extra", extra))
    names, tensors = named.columns()
    assert names[-1] == "extra" and tensors[-1] is extra
    assert gg.measure(named).norms[-1].item() == 5.0


def test_param_norm_of_a_validated_list_matches_torch() -> None:
    model = _model()
    expected = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.detach()) for p in model.parameters()])
    )
    got = param_norm(named_tensors(model))
    assert torch.equal(got, expected) and not got.is_inference()
