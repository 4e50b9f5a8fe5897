"""A synthetic run log: an RNN whose gradient norm grows until it overflows, under a guard.

Built from StepRecords directly (no Guard needed) so the report and sink tests do not depend on
the rescue layer. The story, step by step (60 steps):

- steps 0-19 healthy, norm 0.5 -> ~1.3, loss falls from 2.0;
- steps 20-39 norm grows x1.3 per step; from step 25 clipping at max_norm 1.0 (clip action);
  growth-trend warnings at steps 28-33 naming ``rnn.weight_hh_l2``;
- step 34: loss spike alert (loss 40.0);
- step 36: NaN gradient (non-finite) -> skip; step 37: loss inf -> rollback to step 30 (7 lost);
- step 38: backoff, the LR halves from 0.01 to 0.005;
- steps 39-59 healthy again with clipping now and then;
- a tensor is named ``<script>alert(1)</script>`` (it is in the top-k from step 30 on).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from gradguard.records import (
    ActionKind,
    Alert,
    AlertKind,
    Reason,
    Severity,
    StepRecord,
)
from gradguard.sinks import JsonlSink

EVIL = "<script>alert(1)</script>"
NAMES = ("rnn.weight_hh_l0", "rnn.weight_hh_l1", "rnn.weight_hh_l2", "fc.weight", EVIL)
METADATA: dict[str, Any] = {
    "model": {"cell": "RNN", "num_layers": 3, "seq_len": 150},
    "note": EVIL,
    "analysis": {
        "bptt_profile": {
            "grad_norms": [1.2**k for k in range(20)] + ["inf"],
            "growth_factor": 1.2,
        },
        "explosion_table": [
            {"radius": 1.5, "t_1e6": 35, "t_1e10": 57},
            {"radius": 1.01, "t_1e6": None, "t_1e10": None},
        ],
    },
}


def _top(step: int, norm: float) -> tuple[tuple[str, float], ...]:
    shares = (0.2, 0.3, 0.8, 0.05)
    top = [(name, norm * share) for name, share in zip(NAMES, shares, strict=False)]
    if step >= 30:
        top.append((EVIL, norm * 0.4))
    return tuple(sorted(top, key=lambda t: -t[1] if math.isfinite(t[1]) else -math.inf))


def synthetic_records() -> list[StepRecord]:
    """The 60 records of the story in the module docstring."""
    records = []
    lr = 0.01
    for step in range(60):
        alerts: list[Alert] = []
        loss: float = 2.0 * 0.97**step
        if step < 20:
            norm = 0.5 * 1.05**step
        elif step < 36:
            norm = 0.5 * 1.05**20 * 1.3 ** (step - 19)
        elif step in (36, 37):
            norm = math.nan if step == 36 else math.inf
        else:
            norm = 0.8 + 0.1 * math.sin(step)
        action, reason, message = ActionKind.PROCEED, Reason.HEALTHY, ""
        clip_coef, applied, rolled, lost = 1.0, True, None, 0
        if math.isfinite(norm) and norm > 1.0 and step >= 25:
            action, reason = ActionKind.CLIP, Reason.NORM_ABOVE_BOUND
            clip_coef = 1.0 / norm
            message = f"clipped gradient norm {norm:.3g} to 1.0"
        if 28 <= step <= 33:
            alerts.append(
                Alert(
                    step,
                    Severity.WARNING,
                    AlertKind.GROWTH_TREND,
                    f"norm grows x1.30/step; overflow in ~{60 - step} steps",
                    detector="trend",
                    culprits=("rnn.weight_hh_l2",),
                    value=1.3,
                    threshold=1.1,
                    steps_to_overflow=float(60 - step),
                )
            )
        if step == 34:
            loss = 40.0
            alerts.append(
                Alert(
                    step, Severity.WARNING, AlertKind.LOSS_SPIKE, f"loss jumped; {EVIL}", value=40.0
                )
            )
        if step == 36:
            action, reason, applied = ActionKind.SKIP, Reason.NONFINITE_GRAD, False
            message = f"gradient of {EVIL} is NaN; step skipped"
            alerts.append(
                Alert(
                    step,
                    Severity.CRITICAL,
                    AlertKind.NONFINITE_GRAD,
                    "NaN gradient",
                    culprits=(EVIL,),
                    value=math.nan,
                )
            )
        if step == 37:
            loss = math.inf
            action, reason, applied = ActionKind.ROLLBACK, Reason.DIVERGENCE, False
            rolled, lost, message = 30, 7, "loss is inf; restored the snapshot of step 30"
            alerts.append(Alert(step, Severity.CRITICAL, AlertKind.NONFINITE_LOSS, "loss is inf"))
        if step == 38:
            lr = 0.005
            action, reason, message = ActionKind.BACKOFF, Reason.REPEATED_FAULTS, "LR halved"
        records.append(
            StepRecord(
                step=step,
                action=action,
                reason=reason,
                message=message,
                applied=applied,
                loss=loss,
                total_norm=norm,
                clip_coef=clip_coef,
                lr=lr,
                alerts=tuple(alerts),
                top=_top(step, norm),
                rolled_back_to=rolled,
                steps_lost=lost,
            )
        )
    return records


def write_synthetic_log(path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the synthetic run to ``path`` with :class:`JsonlSink` and return ``path``."""
    with JsonlSink(path, metadata=METADATA if metadata is None else metadata) as sink:
        for record in synthetic_records():
            sink.write(record)
    return path


def ruined_mlp_records() -> list[StepRecord]:
    """300 steps of an MLP at lr 0.1: rollbacks undo 213 steps, a back-off to 0.00125 holds."""
    records = []
    lr = 0.1
    for step in range(300):
        loss = 2.3 + 0.05 * math.sin(step)
        record = StepRecord(
            step,
            ActionKind.PROCEED,
            Reason.HEALTHY,
            loss=loss,
            total_norm=1.0,
            lr=lr,
            top=(("net.2.weight", 0.9),),
        )
        if step % 20 == 10 and step < 240:  # 12 rollbacks
            lost = 18 if step < 230 else 15  # 11 x 18 + 15 = 213
            record = dataclasses.replace(
                record,
                action=ActionKind.ROLLBACK,
                reason=Reason.NONFINITE_LOSS,
                loss=math.inf,
                applied=False,
                rolled_back_to=max(0, step - lost),
                steps_lost=lost,
                alerts=(Alert(step, Severity.CRITICAL, AlertKind.NONFINITE_LOSS, "loss inf"),),
            )
        if step in (150, 245):
            lr = 0.01 if step == 150 else 0.00125
            record = dataclasses.replace(
                record, action=ActionKind.BACKOFF, reason=Reason.REPEATED_FAULTS, lr=lr
            )
        records.append(record)
    return records
