"""Find the recurrent weights of a model and split them into their gate blocks.

``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` (any number of layers, bidirectional, LSTM ``proj_size``)
and the cells ``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell`` store the recurrent matrices of all
their gates stacked in one ``weight_hh`` tensor: rows ``[k*H:(k+1)*H]`` belong to gate ``k``, in
PyTorch's order (LSTM ``i, f, g, o``; GRU ``r, z, n``). Both the analysis (spectra per gate) and
the remedies (per-gate orthogonal initialisation and constraints) need that map, so it lives here,
below both of them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from torch import Tensor, nn

__all__ = [
    "GATES",
    "GATE_GAINS",
    "RecurrentWeight",
    "recurrent_kind",
    "recurrent_weights",
]

GATES: dict[str, tuple[str, ...]] = {
    "RNN_TANH": ("h",),
    "RNN_RELU": ("h",),
    "LSTM": ("i", "f", "g", "o"),
    "GRU": ("r", "z", "n"),
}
"""Gate names of each recurrent kind, in the order their blocks are stacked in ``weight_hh``."""

GATE_GAINS: dict[str, tuple[float, ...]] = {
    "RNN_TANH": (1.0,),
    "RNN_RELU": (1.0,),
    "LSTM": (0.25, 0.25, 1.0, 0.25),
    "GRU": (0.25, 0.25, 1.0),
}
"""Largest slope of each gate's nonlinearity (sigmoid 1/4, tanh and ReLU 1), aligned with GATES."""

Direction = Literal["forward", "reverse"]


@dataclasses.dataclass(frozen=True, eq=False)
class RecurrentWeight:
    """One recurrent matrix ``weight_hh`` of one layer and direction of a recurrent module.

    Attributes:
        module_name: path of the owning module in the model (``""`` for the model itself).
        module: the owning ``nn.RNNBase`` or ``nn.RNNCellBase``.
        attr: attribute name on the module, e.g. ``"weight_hh_l1_reverse"``.
        kind: ``"RNN_TANH"``, ``"RNN_RELU"``, ``"LSTM"`` or ``"GRU"``.
        layer: layer index (0 for cells).
        direction: ``"forward"`` or ``"reverse"``.
        hidden_size: rows per gate block.
        projection_attr: for an LSTM with ``proj_size > 0`` the attribute of the projection
            ``weight_hr`` (shape ``(P, H)``) that closes the recurrent loop, else ``None``.
    """

    module_name: str
    module: nn.Module
    attr: str
    kind: str
    layer: int
    direction: Direction
    hidden_size: int
    projection_attr: str | None = None

    @property
    def name(self) -> str:
        """Full dotted name, e.g. ``"encoder.weight_hh_l0"``."""
        return f"{self.module_name}.{self.attr}" if self.module_name else self.attr

    @property
    def gates(self) -> tuple[str, ...]:
        """Gate names of the stacked blocks, in order."""
        return GATES[self.kind]

    @property
    def gains(self) -> tuple[float, ...]:
        """Largest slope of each gate's nonlinearity, aligned with :attr:`gates`."""
        return GATE_GAINS[self.kind]

    @property
    def weight(self) -> Tensor:
        """The current (possibly parametrised) stacked matrix, shape ``(gates*H, H or P)``."""
        value = getattr(self.module, self.attr)
        assert isinstance(value, Tensor)  # internal invariant: RNN modules hold tensors here
        return value

    @property
    def projection(self) -> Tensor | None:
        """The LSTM projection ``weight_hr`` closing the loop, or ``None``."""
        if self.projection_attr is None:
            return None
        value = getattr(self.module, self.projection_attr)
        assert isinstance(value, Tensor)  # internal invariant
        return value

    def blocks(self) -> list[tuple[str, float, Tensor]]:
        """``(gate, gain, block)`` for each gate; ``block`` is a view of shape ``(H, H or P)``."""
        weight = self.weight
        h = self.hidden_size
        return [
            (gate, gain, weight[k * h : (k + 1) * h])
            for k, (gate, gain) in enumerate(zip(self.gates, self.gains, strict=True))
        ]


def recurrent_kind(module: nn.Module) -> str | None:
    """The recurrent kind of ``module`` (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``).

    Returns ``None`` for modules that are not ``nn.RNNBase`` / ``nn.RNNCellBase`` instances.
    """
    if isinstance(module, nn.RNNBase):
        return module.mode if module.mode in GATES else None
    if isinstance(module, nn.LSTMCell):
        return "LSTM"
    if isinstance(module, nn.GRUCell):
        return "GRU"
    if isinstance(module, nn.RNNCell):
        return "RNN_RELU" if module.nonlinearity == "relu" else "RNN_TANH"
    return None


def recurrent_weights(model: nn.Module) -> list[RecurrentWeight]:
    """Every recurrent matrix in ``model`` (itself included), in module order.

    Args:
        model: any module; its ``nn.RNN``/``nn.LSTM``/``nn.GRU`` and cell submodules are found.

    Returns:
        One :class:`RecurrentWeight` per layer and direction of every recurrent module; an empty
        list when the model has none.
    """
    found: list[RecurrentWeight] = []
    for module_name, module in model.named_modules():
        kind = recurrent_kind(module)
        if kind is None:
            continue
        if isinstance(module, nn.RNNBase):
            directions: tuple[Direction, ...] = (
                ("forward", "reverse") if module.bidirectional else ("forward",)
            )
            for layer in range(module.num_layers):
                for direction in directions:
                    suffix = f"_l{layer}" + ("_reverse" if direction == "reverse" else "")
                    found.append(
                        RecurrentWeight(
                            module_name=module_name,
                            module=module,
                            attr="weight_hh" + suffix,
                            kind=kind,
                            layer=layer,
                            direction=direction,
                            hidden_size=module.hidden_size,
                            projection_attr="weight_hr" + suffix if module.proj_size > 0 else None,
                        )
                    )
        else:
            assert isinstance(module, nn.RNNCellBase)  # recurrent_kind only accepts these
            found.append(
                RecurrentWeight(
                    module_name=module_name,
                    module=module,
                    attr="weight_hh",
                    kind=kind,
                    layer=0,
                    direction="forward",
                    hidden_size=module.hidden_size,
                )
            )
    return found
