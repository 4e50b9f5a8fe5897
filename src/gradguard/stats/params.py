"""Turn what users pass as "parameters" into one list of named tensors, with errors that teach."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeAlias

from torch import Tensor, nn

from gradguard.errors import EmptyParametersError

__all__ = ["Parameters", "named_tensors"]

Parameters: TypeAlias = nn.Module | Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Tensor
"""An ``nn.Module``, one tensor, an iterable of tensors, or an iterable of ``(name, tensor)``."""


def named_tensors(parameters: Parameters) -> list[tuple[str, Tensor]]:
    """Return ``parameters`` as a list of ``(name, tensor)`` pairs, in the order given.

    Unnamed tensors are called ``"[i]"`` by position. An iterator that yields nothing (for example
    ``model.parameters()`` already consumed by an optimizer) raises :class:`EmptyParametersError`;
    an empty list or tuple is fine and yields ``[]``.
    """
    if isinstance(parameters, nn.Module):
        return list(parameters.named_parameters())
    if isinstance(parameters, Tensor):
        return [("[0]", parameters)]
    if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
        raise TypeError(
            f"parameters must be an nn.Module, a tensor, or an iterable of tensors or "
            f"(name, tensor) pairs; got {type(parameters).__name__} {parameters!r:.80}."
        )
    was_iterator = isinstance(parameters, Iterator)
    out: list[tuple[str, Tensor]] = []
    for i, item in enumerate(parameters):
        if isinstance(item, Tensor):
            out.append((f"[{i}]", item))
        elif (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], Tensor)
        ):
            out.append(item)
        else:
            raise TypeError(
                f"parameters[{i}] must be a tensor or a (name, tensor) pair, got "
                f"{type(item).__name__} {item!r:.80}. Pass model.parameters() or "
                f"model.named_parameters()."
            )
    if was_iterator and not out:
        raise EmptyParametersError(
            f"parameters is an iterator that yielded nothing ({parameters!r:.80}); it was "
            "probably consumed already, for example by the optimizer. Pass the model itself, "
            "or list(model.parameters())."
        )
    return out
