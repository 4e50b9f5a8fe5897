"""Named device tensors that hold a clipper's mutable state, with checked save and load."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradguard.errors import ConfigError

__all__ = ["TensorState", "check_empty_state"]


class TensorState:
    """The mutable state of one clipper: a fixed set of named tensors on one device.

    The tensors follow the gradients to their device on first use (an async copy, not a host
    sync), are replaced as a whole at each step, and are copied on save and load.
    """

    def __init__(self, owner: str, **tensors: Tensor) -> None:
        self._owner = owner
        self._tensors = dict(tensors)

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def update(self, **tensors: Tensor) -> None:
        """Replace some of the tensors (same names, shapes and dtypes)."""
        self._tensors.update(tensors)

    def follow(self, device: torch.device) -> None:
        """Move every tensor to ``device`` if it lives elsewhere."""
        for name, tensor in self._tensors.items():
            if tensor.device != device:
                self._tensors[name] = tensor.to(device)

    def state_dict(self) -> dict[str, Any]:
        """Copies of the tensors, by name."""
        return {name: tensor.detach().clone() for name, tensor in self._tensors.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take copies of ``state``'s tensors, checking names, shapes and dtypes first."""
        if not isinstance(state, Mapping) or set(state) != set(self._tensors):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ConfigError(
                f"{self._owner}.load_state_dict got keys {got!r}; expected "
                f"{sorted(self._tensors)!r}. Load a state saved by {self._owner}.state_dict()."
            )
        loaded: dict[str, Tensor] = {}
        for name, current in self._tensors.items():
            value = state[name]
            if not isinstance(value, Tensor) or value.shape != current.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else value
                raise ConfigError(
                    f"{self._owner}.load_state_dict: {name!r} must be a tensor of shape "
                    f"{tuple(current.shape)!r}, got {shape!r}. Was it saved by a clipper "
                    "built with other settings (for example another window)?"
                )
            loaded[name] = value.detach().to(current.device, current.dtype, copy=True)
        self._tensors = loaded


def check_empty_state(owner: str, state: Mapping[str, Any]) -> None:
    """For stateless clippers: accept only the empty state they save."""
    if not isinstance(state, Mapping) or len(state) > 0:
        raise ConfigError(
            f"{owner} has no state, so load_state_dict takes {{}}; got {state!r:.80}. "
            f"Load a state saved by {owner}.state_dict()."
        )
