"""A guard that fails any test code path that pulls a device value to the host.

On CPU nothing really synchronises, so we intercept the calls that would on a GPU (``item``,
``tolist``, ``cpu``, ``numpy``, ``bool``/``float``/``int`` of a tensor, ``nonzero``) with a
``TorchFunctionMode`` and count them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

SYNCING = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
    torch.Tensor.__bool__,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__index__,
    torch.Tensor.nonzero,
    torch.nonzero,
}


class HostSyncError(AssertionError):
    """Raised when code under ``no_host_sync`` pulls a device value to the host."""


class _CountSyncs(TorchFunctionMode):
    def __init__(self, strict: bool) -> None:
        super().__init__()
        self.strict = strict
        self.calls: list[str] = []

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        name = getattr(func, "__name__", repr(func))
        if func in SYNCING:
            self.calls.append(name)
            if self.strict:
                raise HostSyncError(f"host synchronisation through Tensor.{name}")
        return func(*args, **(kwargs or {}))


@contextmanager
def no_host_sync() -> Iterator[None]:
    """Fail at once when the code inside pulls a tensor value to the host."""
    with _CountSyncs(strict=True):
        yield


@contextmanager
def count_host_syncs() -> Iterator[list[str]]:
    """Record, without failing, every host-syncing call made inside; yields the list of names."""
    mode = _CountSyncs(strict=False)
    with mode:
        yield mode.calls
