"""What ``inspect`` and ``analyze`` read from a checkpoint: its tensors, their health, spectra."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from gradguard.analysis import BlockSpectrum, RecurrentReport, critical_radius, recurrent_report
from gradguard.errors import ConfigError

__all__ = [
    "WEIGHT_SECTIONS",
    "CheckpointSpectra",
    "TensorHealth",
    "flatten_tensors",
    "is_judged",
    "load_checkpoint",
    "recurrent_spectra",
    "tensor_health",
    "weight_sections",
]

_RECURRENT = re.compile(r"weight_hh")


def load_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint safely: ``torch.load(weights_only=True)`` on the CPU, nothing unpickled.

    Raises:
        pickle.UnpicklingError: the file holds Python objects that ``weights_only`` refuses.
        RuntimeError, EOFError, ValueError: the file is not a PyTorch checkpoint.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


WEIGHT_SECTIONS = frozenset(
    {
        "state_dict",
        "model",
        "model_state_dict",
        "model_state",
        "module",
        "net",
        "ema",
        "ema_state_dict",
        "optimizer",
        "optimizer_states",
        "optimizer_state_dict",
        "optimizer_state",
        "optim",
    }
)
"""Top-level keys of a training checkpoint that hold weights or optimizer state.

A framework checkpoint also keeps bookkeeping beside them: Lightning's ``callbacks`` (a
``ModelCheckpoint`` stores ``inf`` as its initial best score), ``loops``, ``lr_schedulers``;
NaN or Inf there is a placeholder, not a broken model.
"""


def weight_sections(obj: Any) -> frozenset[str] | None:
    """The top-level keys of ``obj`` that hold weights or optimizer state.

    Returns ``None`` (judge every tensor) for a plain ``state_dict`` or any dict without a
    container under a :data:`WEIGHT_SECTIONS` key.
    """
    if not isinstance(obj, Mapping):
        return None
    found = frozenset(
        str(key)
        for key, value in obj.items()
        if str(key) in WEIGHT_SECTIONS and isinstance(value, (Mapping, list, tuple))
    )
    return found or None


def is_judged(name: str, sections: frozenset[str] | None) -> bool:
    """Whether the tensor ``name`` (dotted) counts toward the verdict: weights, optimizer state."""
    return sections is None or name.split(".", 1)[0] in sections


def flatten_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(dotted name, tensor)`` for every tensor in nested dicts, lists and tuples.

    A plain ``state_dict`` gives its own keys; ``{"model": state_dict, "optimizer": {...}}``
    gives ``model.<key>`` and ``optimizer.state.0.exp_avg`` and so on.
    """
    if isinstance(obj, torch.Tensor):
        yield prefix or "<tensor>", obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from flatten_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from flatten_tensors(value, f"{prefix}.{index}" if prefix else str(index))


@dataclasses.dataclass(frozen=True)
class TensorHealth:
    """Norm and finiteness of one tensor.

    Attributes:
        name: dotted name in the checkpoint.
        shape: its shape.
        dtype: its dtype, as text (``"float32"``).
        numel: number of elements.
        norm: L2 norm (NaN when it holds NaN; ``None`` for non-floating tensors).
        max_abs: largest absolute value (``None`` for non-floating or empty tensors).
        nan: number of NaN elements.
        inf: number of infinite elements.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    numel: int
    norm: float | None
    max_abs: float | None
    nan: int
    inf: int

    @property
    def finite(self) -> bool:
        """``True`` when the tensor holds no NaN and no Inf."""
        return self.nan == 0 and self.inf == 0


def tensor_health(name: str, tensor: torch.Tensor) -> TensorHealth:
    """Measure ``tensor``: L2 norm (in float64), max |x|, and how many NaN and Inf it holds."""
    dense = tensor.to_dense() if tensor.layout != torch.strided else tensor
    dtype = str(tensor.dtype).removeprefix("torch.")
    if not (dense.is_floating_point() or dense.is_complex()):
        return TensorHealth(name, tuple(tensor.shape), dtype, tensor.numel(), None, None, 0, 0)
    values = dense.detach().to(torch.complex128 if dense.is_complex() else torch.float64)
    nan = int(torch.isnan(values).sum())
    inf = int(torch.isinf(values).sum())
    norm = float(torch.linalg.vector_norm(values)) if values.numel() else 0.0
    max_abs = float(values.abs().max()) if values.numel() else None
    return TensorHealth(name, tuple(tensor.shape), dtype, tensor.numel(), norm, max_abs, nan, inf)


@dataclasses.dataclass(frozen=True)
class CheckpointSpectra:
    """Spectra of the recurrent weights found in a checkpoint.

    Attributes:
        report: the :func:`gradguard.analysis.recurrent_report` of every analysable ``weight_hh*``
            tensor, combined into one report; ``None`` when there is none.
        skipped: ``(name, why)`` for each ``weight_hh*`` tensor that could not be analysed
            (``"non-finite"``, or a shape that is no stack of square gate blocks).
    """

    report: RecurrentReport | None
    skipped: tuple[tuple[str, str], ...]


def recurrent_spectra(
    tensors: Sequence[tuple[str, torch.Tensor]], *, seq_len: int = 100, threshold: float = 1e6
) -> CheckpointSpectra:
    """Run :func:`~gradguard.analysis.recurrent_report` on each recurrent weight of a checkpoint.

    Each ``weight_hh*`` tensor (with its LSTM projection ``weight_hr*`` when present) is analysed
    on its own, so that one NaN or oddly shaped tensor does not hide the others; the blocks are
    then combined into one report with the worst verdict.

    Args:
        tensors: ``(dotted name, tensor)`` pairs, e.g. from :func:`flatten_tensors`.
        seq_len: sequence length the verdicts refer to.
        threshold: growth factor that counts as an explosion.

    Returns:
        A :class:`CheckpointSpectra`.

    Raises:
        ConfigError: ``seq_len`` or ``threshold`` is out of range.
    """
    by_name = dict(tensors)
    blocks: list[BlockSpectrum] = []
    skipped: list[tuple[str, str]] = []
    critical = critical_radius(seq_len, threshold)
    margin = 0.05
    for name, tensor in tensors:
        if not _RECURRENT.search(name) or tensor.ndim != 2 or not tensor.is_floating_point():
            continue
        mapping = {name: tensor}
        projection = by_name.get(name.replace("weight_hh", "weight_hr"))
        if projection is not None:
            mapping[name.replace("weight_hh", "weight_hr")] = projection
        if not all(bool(torch.isfinite(t).all()) for t in mapping.values()):
            skipped.append((name, "non-finite"))
            continue
        try:
            report = recurrent_report(mapping, seq_len=seq_len, threshold=threshold, margin=margin)
        except ConfigError:
            rows, cols = tensor.shape
            skipped.append((name, f"shape {rows}x{cols}: not square gate blocks"))
            continue
        blocks.extend(report.blocks)
    if not blocks:
        return CheckpointSpectra(None, tuple(skipped))
    combined = RecurrentReport(
        blocks=tuple(blocks),
        seq_len=seq_len,
        threshold=float(threshold),
        critical_radius=critical,
        margin=margin,
        verdict=max((b.verdict for b in blocks), key=lambda v: v.rank),
    )
    return CheckpointSpectra(combined, tuple(skipped))
