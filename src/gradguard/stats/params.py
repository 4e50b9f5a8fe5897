"""Turn what users pass as "parameters" into one list of named tensors, with errors that teach."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeAlias

import torch
from torch import Tensor, nn

from gradguard.errors import (
    ConfigTypeError,
    EmptyParametersError,
    NoGradientsError,
    UnsupportedGradientError,
)

__all__ = [
    "NamedTensors",
    "Parameters",
    "check_dense",
    "grads_of",
    "local_tensor",
    "named_grads",
    "named_tensors",
]

_PLAIN = (Tensor, nn.Parameter)
# C-level getters: map() with them reads 2000 attributes several times faster than a Python loop.
_GRAD = operator.attrgetter("grad")
_LAYOUT = operator.attrgetter("layout")
_NAME = operator.itemgetter(0)
_TENSOR = operator.itemgetter(1)

Parameters: TypeAlias = nn.Module | Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Tensor
"""An ``nn.Module``, one tensor, an iterable of tensors, or an iterable of ``(name, tensor)``."""


class NamedTensors(list[tuple[str, Tensor]]):
    """A validated list of ``(name, tensor)`` pairs: :func:`named_tensors` returns it as is.

    Monitor and Guard validate their parameters once and hand this list to every step's
    :func:`~gradguard.stats.measure`, so the per-step Python cost is one gradient read per tensor.
    Treat it as read-only once built: it keeps its names and tensors as tuples (see
    :meth:`columns`).
    """

    _columns: tuple[tuple[str, ...], tuple[Tensor, ...]] | None = None

    def columns(self) -> tuple[tuple[str, ...], tuple[Tensor, ...]]:
        """The names and the tensors as two aligned tuples, built once and reused every step."""
        cached = self._columns
        if cached is None or len(cached[0]) != len(self):
            cached = self._columns = (tuple(map(_NAME, self)), tuple(map(_TENSOR, self)))
        return cached


_INDEX_NAMES: list[str] = []


def _index_names(count: int) -> list[str]:
    """``["[0]", "[1]", ...]`` of length ``count``, built once and reused across steps."""
    if len(_INDEX_NAMES) < count:
        _INDEX_NAMES.extend(f"[{i}]" for i in range(len(_INDEX_NAMES), count))
    return _INDEX_NAMES[:count]


def named_tensors(parameters: Parameters) -> NamedTensors:
    """Return ``parameters`` as a list of ``(name, tensor)`` pairs, in the order given.

    Unnamed tensors are called ``"[i]"`` by position; a tensor listed twice is kept once (its
    gradient would otherwise count twice in the norm and be scaled twice). An iterator that
    yields nothing (for example ``model.parameters()`` already consumed by an optimizer) raises
    :class:`EmptyParametersError`; an empty list or tuple is fine and yields ``[]``. A
    :class:`NamedTensors` is returned as is.
    """
    if type(parameters) is NamedTensors:
        return parameters
    if isinstance(parameters, nn.Module):
        return NamedTensors(parameters.named_parameters())
    if isinstance(parameters, Tensor):
        return NamedTensors([("[0]", parameters)])
    if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
        raise ConfigTypeError(
            f"parameters must be an nn.Module, a tensor, or an iterable of tensors or "
            f"(name, tensor) pairs; got {type(parameters).__name__} {parameters!r:.80}."
        )
    was_iterator = isinstance(parameters, Iterator)
    items = list(parameters)
    # The common case, model.parameters(), is recognised by C-level passes over the list.
    if set(map(type, items)) <= {Tensor, nn.Parameter} or all(
        isinstance(item, Tensor) for item in items
    ):
        out = NamedTensors(zip(_index_names(len(items)), items, strict=True))
    else:
        out = NamedTensors(_checked_pair(i, item) for i, item in enumerate(items))
    if len(set(map(id, map(_TENSOR, out)))) != len(out):
        out = _first_of_each(out)
    if was_iterator and not out:
        raise EmptyParametersError(
            f"parameters is an iterator that yielded nothing ({parameters!r:.80}); it was "
            "probably consumed already, for example by the optimizer. Pass the model itself, "
            "or list(model.parameters())."
        )
    return out


def _first_of_each(named: NamedTensors) -> NamedTensors:
    """Keep the first entry of each tensor listed more than once (``[p, p]``, a tied weight
    under two names): counted twice, it would inflate the norm and be clipped twice."""
    seen: set[int] = set()
    kept = NamedTensors()
    for name, tensor in named:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            kept.append((name, tensor))
    return kept


def _checked_pair(i: int, item: object) -> tuple[str, Tensor]:
    if isinstance(item, Tensor):
        return (f"[{i}]", item)
    if (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], Tensor)
    ):
        return item
    raise ConfigTypeError(
        f"parameters[{i}] must be a tensor or a (name, tensor) pair, got "
        f"{type(item).__name__} {item!r:.80}. Pass model.parameters() or "
        f"model.named_parameters()."
    )


def named_grads(parameters: Parameters) -> list[tuple[str, Tensor, Tensor]]:
    """Return ``(name, tensor, gradient)`` for every tensor of ``parameters`` that has a gradient.

    Tensors without a gradient are skipped; an empty list gives ``[]``. A ``DTensor`` gradient
    (FSDP2, tensor parallel) is returned as its local shard (``grad.to_local()``, which shares
    its storage, so in-place clipping reaches the DTensor);
    :func:`gradguard.stats.reduce_across_ranks` turns norms of local shards into global ones.

    Raises:
        EmptyParametersError: ``parameters`` is an iterator that was already consumed.
        NoGradientsError: tensors were given but none has a gradient (call ``backward`` first).
        UnsupportedGradientError: a gradient is sparse (or of another non-strided layout).
    """
    named = named_tensors(parameters)
    # The hot path: one gradient read per tensor, then one cheap pass over the gradients.
    out = [(name, tensor, grad) for name, tensor in named if (grad := tensor.grad) is not None]
    strided = torch.strided
    odd = [i for i, (_, _, grad) in enumerate(out) if type(grad) is not Tensor]
    if odd or any(grad.layout != strided for _, _, grad in out):
        for name, _, grad in out:
            if grad.layout != strided:
                raise _unsupported_layout(name, grad)
        for i in odd:  # a Tensor subclass, maybe a DTensor: measure its local shard
            name, tensor, grad = out[i]
            out[i] = (name, tensor, local_tensor(grad))
    if named and not out:
        shown = ", ".join(name for name, _ in named[:3]) + (", ..." if len(named) > 3 else "")
        raise NoGradientsError(
            f"none of the {len(named)} tensors given ({shown}) "
            "has a gradient. Call loss.backward() before measuring, and check that the "
            "parameters require grad."
        )
    return out


def grads_of(
    parameters: Parameters, *, check_layout: bool = True
) -> tuple[tuple[str, ...], tuple[Tensor, ...], list[Tensor]]:
    """``(names, tensors, gradients)`` of the tensors of ``parameters`` that have a gradient.

    What :func:`named_grads` returns, as three aligned columns, at the cost the hot path allows:
    when every tensor has a plain gradient (the common step), C-level passes over the list and
    no Python code per tensor; any other case (a missing gradient, a ``DTensor``) goes through
    :func:`named_grads`, with the same checks and errors.

    Args:
        parameters: as for :func:`named_grads`.
        check_layout: refuse a sparse gradient here. ``False`` leaves that to the caller:
            :func:`gradguard.measure` lets the norm kernel refuse it, then names it with
            :func:`check_dense` (a pass over the list saved on every healthy step).

    Raises:
        As :func:`named_grads`.
    """
    named = named_tensors(parameters)
    names, tensors = named.columns()
    grads = list(map(_GRAD, tensors))
    # One C-level pass proves that no gradient is None or a subclass.
    if set(map(type, grads)) == {Tensor}:
        if check_layout:
            check_dense(names, grads)
        return names, tensors, grads
    out = named_grads(named)
    return (
        tuple(name for name, _, _ in out),
        tuple(tensor for _, tensor, _ in out),
        [grad for _, _, grad in out],
    )


def check_dense(names: Sequence[str], grads: Sequence[Tensor]) -> None:
    """Refuse a sparse (or otherwise non-strided) gradient, by name.

    Raises:
        UnsupportedGradientError: a gradient's layout is not ``torch.strided``.
    """
    if set(map(_LAYOUT, grads)) <= {torch.strided}:
        return
    for name, grad in zip(names, grads, strict=True):
        if grad.layout != torch.strided:
            raise _unsupported_layout(name, grad)


def local_tensor(tensor: Tensor) -> Tensor:
    """The local shard of a ``DTensor`` (sharing its storage), any other tensor unchanged."""
    if type(tensor) in _PLAIN or not torch.distributed.is_available():
        return tensor
    from torch.distributed.tensor import DTensor  # lazy: keeps ``import gradguard`` light

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _unsupported_layout(name: str, grad: Tensor) -> UnsupportedGradientError:
    return UnsupportedGradientError(
        f"the gradient of {name!r} has layout {grad.layout}; gradguard measures and clips dense "
        "(strided) gradients only. Use nn.Embedding(sparse=False), or convert with "
        "grad.to_dense() before measuring."
    )
