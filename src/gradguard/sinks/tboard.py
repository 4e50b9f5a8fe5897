"""TensorBoard scalars and alert text, written with the ``tensorboard`` package's event writer.

Needs the optional extra: ``pip install gradguard[tensorboard]``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from gradguard.errors import MissingDependencyError, check_positive
from gradguard.records import ActionKind, StepRecord

__all__ = ["TensorBoardSink"]


def _load() -> Any:
    """Import the tensorboard pieces this sink needs (a namespace), or explain the extra."""
    try:
        from tensorboard.compat.proto import (
            event_pb2,
            summary_pb2,
            tensor_pb2,
            tensor_shape_pb2,
            types_pb2,
        )
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as exc:
        raise MissingDependencyError(
            "TensorBoardSink needs the tensorboard package, which is not installed "
            f"({exc}); install it with: pip install gradguard[tensorboard]"
        ) from None

    class TB:
        Event = event_pb2.Event
        Summary = summary_pb2.Summary
        SummaryMetadata = summary_pb2.SummaryMetadata
        TensorProto = tensor_pb2.TensorProto
        TensorShapeProto = tensor_shape_pb2.TensorShapeProto
        DT_STRING = types_pb2.DT_STRING
        Writer = EventFileWriter

    return TB


class TensorBoardSink:
    """Write each step to a TensorBoard event file: norm, loss, clip coefficient, LR, actions.

    Scalars (tag ``gradguard/...``): ``grad_norm`` (finite values only; a non-finite norm sets
    ``nonfinite_grad`` to 1 for that step instead), ``loss`` (finite only), ``clip_coef``,
    ``lr``, ``intervention`` (1 when the action was anything but ``proceed``) and
    ``interventions_total``. Alerts and non-clip interventions are logged as text
    (``gradguard/events``), one markdown list per step that has any.

    All scalars of a step go into one event (one protobuf, one queue put): about 5x cheaper
    than one ``SummaryWriter.add_scalar`` call per value. Events are flushed by the writer's
    background thread every ``flush_secs`` and on ``close``.

    Args:
        log_dir: the run folder TensorBoard reads (``tensorboard --logdir``); created.
        flush_secs: how often the background thread flushes the event file.

    Raises:
        MissingDependencyError: the ``tensorboard`` package is not installed.
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, flush_secs: float = 30.0) -> None:
        check_positive("flush_secs", flush_secs, fix="The default 30 seconds suits most runs.")
        self._tb = _load()
        self.log_dir = os.fspath(log_dir)
        self._writer = self._tb.Writer(self.log_dir, flush_secs=flush_secs)
        self._interventions = 0

    def write(self, record: StepRecord) -> None:
        """Add the scalars (and text, when there are events) of one step."""
        value = self._tb.Summary.Value
        values = []
        norm = record.total_norm
        if norm is not None:
            finite = math.isfinite(norm)
            if finite:
                values.append(value(tag="gradguard/grad_norm", simple_value=norm))
            values.append(
                value(tag="gradguard/nonfinite_grad", simple_value=0.0 if finite else 1.0)
            )
        if record.loss is not None and math.isfinite(record.loss):
            values.append(value(tag="gradguard/loss", simple_value=record.loss))
        values.append(value(tag="gradguard/clip_coef", simple_value=record.clip_coef))
        if record.lr is not None:
            values.append(value(tag="gradguard/lr", simple_value=record.lr))
        intervened = record.action is not ActionKind.PROCEED
        self._interventions += intervened
        values.append(value(tag="gradguard/intervention", simple_value=float(intervened)))
        values.append(
            value(tag="gradguard/interventions_total", simple_value=float(self._interventions))
        )
        if record.alerts or (intervened and record.action is not ActionKind.CLIP):
            values.append(self._text("gradguard/events", _events_markdown(record)))
        event = self._tb.Event(
            summary=self._tb.Summary(value=values), step=record.step, wall_time=time.time()
        )
        self._writer.add_event(event)

    def close(self) -> None:
        """Flush the event file and close it."""
        self._writer.close()

    def _text(self, tag: str, text: str) -> Any:
        tb = self._tb
        return tb.Summary.Value(
            tag=tag,
            metadata=tb.SummaryMetadata(
                plugin_data=tb.SummaryMetadata.PluginData(plugin_name="text")
            ),
            tensor=tb.TensorProto(
                dtype=tb.DT_STRING,
                string_val=[text.encode("utf-8")],
                tensor_shape=tb.TensorShapeProto(dim=[tb.TensorShapeProto.Dim(size=1)]),
            ),
        )


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
