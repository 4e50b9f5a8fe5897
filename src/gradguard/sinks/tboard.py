"""TensorBoard scalars and alert text through the ``tensorboard`` package's SummaryWriter.

Needs the optional extra: ``pip install gradguard[tensorboard]``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from gradguard.errors import MissingDependencyError
from gradguard.records import ActionKind, StepRecord

__all__ = ["TensorBoardSink", "load_summary_writer"]


def load_summary_writer() -> Any:
    """Import and return ``torch.utils.tensorboard.SummaryWriter``.

    Raises:
        MissingDependencyError: the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError(
            "TensorBoardSink needs the tensorboard package, which is not installed "
            f"({exc}); install it with: pip install gradguard[tensorboard]"
        ) from None
    return SummaryWriter


class TensorBoardSink:
    """Write each step to TensorBoard: norms, loss, clip coefficient, LR, interventions, alerts.

    Scalars (tag ``gradguard/...``): ``grad_norm`` (finite values only; a non-finite norm sets
    ``nonfinite_grad`` to 1 for that step instead), ``loss``, ``clip_coef``, ``lr``,
    ``intervention`` (1 when the action was anything but ``proceed``) and
    ``interventions_total``. Alerts and interventions are also logged as text
    (``gradguard/events``), one markdown list per step that has any.

    Args:
        log_dir: the run folder TensorBoard reads (``tensorboard --logdir``).
        writer: an existing ``SummaryWriter`` to write to instead (it is closed by ``close``).

    Raises:
        MissingDependencyError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | os.PathLike[str] | None = None, *, writer: Any = None):
        if writer is None:
            writer = load_summary_writer()(log_dir=None if log_dir is None else str(log_dir))
        self.writer = writer
        self._interventions = 0

    def write(self, record: StepRecord) -> None:
        """Add the scalars (and text, when there are events) of one step."""
        step = record.step
        add = self.writer.add_scalar
        norm = record.total_norm
        if norm is not None:
            if math.isfinite(norm):
                add("gradguard/grad_norm", norm, step)
            add("gradguard/nonfinite_grad", 0.0 if math.isfinite(norm) else 1.0, step)
        if record.loss is not None and math.isfinite(record.loss):
            add("gradguard/loss", record.loss, step)
        add("gradguard/clip_coef", record.clip_coef, step)
        if record.lr is not None:
            add("gradguard/lr", record.lr, step)
        intervened = record.action is not ActionKind.PROCEED
        self._interventions += intervened
        add("gradguard/intervention", float(intervened), step)
        add("gradguard/interventions_total", float(self._interventions), step)
        if record.alerts or (intervened and record.action is not ActionKind.CLIP):
            self.writer.add_text("gradguard/events", _events_markdown(record), step)

    def close(self) -> None:
        """Flush the event file and close the writer."""
        self.writer.flush()
        self.writer.close()


def _events_markdown(record: StepRecord) -> str:
    lines = []
    if record.action is not ActionKind.PROCEED:
        lines.append(
            f"- **{record.action.value}** ({record.reason.value}): {_plain(record.message)}"
        )
    lines.extend(
        f"- {a.severity.value} `{a.kind.value}`: {_plain(a.message)}" for a in record.alerts
    )
    return "\n".join(lines)


def _plain(text: str) -> str:
    """Keep a user string from being read as markdown or HTML by TensorBoard's text plugin."""
    for char in "\\`*_[]<>#|":
        text = text.replace(char, "\\" + char)
    return text
