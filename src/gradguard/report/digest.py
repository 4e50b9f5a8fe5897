"""One pass over a run's records for the report: curves downsampled for plotting, events kept whole.

A million-step log cannot be held as a million records (about 1 KB each in Python), and a plot
cannot show a million points (the figure is 1000 pixels wide). :class:`RunDigest` takes the
records one at a time and keeps:

- per plotted series (gradient norm, norm after clipping, loss, clip coefficient, learning
  rate), an :class:`Envelope`: at most :data:`BUCKETS` buckets of consecutive steps, each with
  its smallest and largest value *at their own steps*, so a one-step spike still reaches the
  plot (a mean or every-n-th sample would hide it);
- NaN/Inf steps as :class:`Marks`, the culprit heat map as :class:`CulpritCells`, both bounded;
- every event record whole: any step that was not a routine one (an action other than proceed
  or clip, a reason other than healthy or norm-above-bound, an alert, a NaN/Inf, a rollback),
  plus the context the advisor reads (the first record naming each tensor, the last finite step
  before the first NaN/Inf, the last record). Routine clipping is counted by the summary
  (``RunSummary.clipped_steps``), not kept, so a run clipped at every step stays small too.

Steps may go back (a log appended after resuming from an older snapshot): buckets are keyed by
step value, so both passes over the same steps land in the same buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from gradguard.records import ActionKind, Reason, StepRecord

__all__ = ["BUCKETS", "CulpritCells", "Envelope", "Marks", "RunDigest"]

BUCKETS = 2048
"""Most buckets an envelope keeps: about two per pixel of a 10-inch figure at 100 dpi."""


class Envelope:
    """A numeric series downsampled to min/max per bucket of ``2**shift`` steps.

    While the series has at most ``limit`` distinct buckets nothing is lost; past that, bucket
    width doubles and neighbours merge (keeping the smaller minimum and the larger maximum), so
    memory stays bounded whatever the length of the run.
    """

    __slots__ = ("buckets", "count", "limit", "shift")

    def __init__(self, limit: int = BUCKETS) -> None:
        self.limit = limit
        self.shift = 0
        self.count = 0
        self.buckets: dict[int, list[float]] = {}

    def add(self, step: int, value: float) -> None:
        """Take the finite ``value`` at ``step``."""
        self.count += 1
        key = step >> self.shift
        bucket = self.buckets.get(key)
        if bucket is None:
            self.buckets[key] = [value, step, value, step]
            if len(self.buckets) > self.limit:
                self._coarsen()
        elif value < bucket[0]:
            bucket[0] = value
            bucket[1] = step
        elif value > bucket[2]:
            bucket[2] = value
            bucket[3] = step

    def _coarsen(self) -> None:
        while len(self.buckets) > self.limit:
            self.shift += 1
            merged: dict[int, list[float]] = {}
            for key, bucket in self.buckets.items():
                into = merged.get(key >> 1)
                if into is None:
                    merged[key >> 1] = bucket
                    continue
                if bucket[0] < into[0]:
                    into[0], into[1] = bucket[0], bucket[1]
                if bucket[2] > into[2]:
                    into[2], into[3] = bucket[2], bucket[3]
            self.buckets = merged

    def points(self) -> tuple[list[float], list[float]]:
        """The curve to draw: ``(steps, values)`` sorted by step, each bucket's min and max.

        A NaN value separates buckets that are not neighbours, so a line drawn through the
        points breaks where the series has no values (steps that were not clipped, say).
        """
        xs: list[float] = []
        ys: list[float] = []
        previous: int | None = None
        for key in sorted(self.buckets):
            low, low_step, high, high_step = self.buckets[key]
            if previous is not None and key != previous + 1:
                xs.append(min(low_step, high_step))
                ys.append(math.nan)
            previous = key
            pairs = [(low_step, low), (high_step, high)]
            if high_step < low_step:
                pairs.reverse()
            elif high_step == low_step and high == low:
                pairs = pairs[:1]
            for x, y in pairs:
                xs.append(x)
                ys.append(y)
        return xs, ys

    def bounds(self) -> tuple[float, float] | None:
        """Smallest and largest value seen, or ``None`` for an empty series."""
        if not self.buckets:
            return None
        return (
            min(b[0] for b in self.buckets.values()),
            max(b[2] for b in self.buckets.values()),
        )


class Marks:
    """Steps where something happened (a NaN/Inf), one mark per bucket of ``2**shift`` steps."""

    __slots__ = ("count", "first", "limit", "shift")

    def __init__(self, limit: int = BUCKETS) -> None:
        self.limit = limit
        self.shift = 0
        self.count = 0
        self.first: dict[int, int] = {}

    def add(self, step: int) -> None:
        """Mark ``step``."""
        self.count += 1
        key = step >> self.shift
        if key not in self.first:
            self.first[key] = step
            while len(self.first) > self.limit:
                self.shift += 1
                merged: dict[int, int] = {}
                for old, first in self.first.items():
                    merged[old >> 1] = min(first, merged.get(old >> 1, first))
                self.first = merged
        elif step < self.first[key]:
            self.first[key] = step

    def steps(self) -> list[int]:
        """One step per marked bucket, in order."""
        return sorted(self.first.values())


class CulpritCells:
    """The heat map's data: per tensor name, its largest logged norm per bucket of steps.

    A non-finite norm is stored as ``inf`` (drawn red). Buckets widen (doubling) whenever the
    logged steps span more than ``limit`` of them, so a tensor costs at most ``limit`` cells.
    """

    def __init__(self, limit: int = 800) -> None:
        self.limit = limit
        self.shift = 0
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.cells: dict[str, dict[int, float]] = {}
        self.peaks: dict[str, float] = {}

    def add(self, step: int, top: Iterable[tuple[str, float]]) -> None:
        """Take one record's top-k ``(name, norm)`` pairs."""
        if self.first_step is None or self.last_step is None:
            self.first_step = self.last_step = step
        elif step < self.first_step:
            self.first_step = step
            self._fit()
        elif step > self.last_step:
            self.last_step = step
            self._fit()
        key = step >> self.shift
        cells, peaks = self.cells, self.peaks
        for name, norm in top:
            value = norm if math.isfinite(norm) else math.inf
            row = cells.get(name)
            if row is None:
                cells[name] = {key: value}
                peaks[name] = value
                continue
            if not value <= row.get(key, -math.inf):
                row[key] = value
            if value > peaks[name]:
                peaks[name] = value

    def _fit(self) -> None:
        assert self.first_step is not None and self.last_step is not None  # set by add
        while (self.last_step >> self.shift) - (self.first_step >> self.shift) >= self.limit:
            self.shift += 1
            for name, row in self.cells.items():
                merged: dict[int, float] = {}
                for key, value in row.items():
                    if not value <= merged.get(key >> 1, -math.inf):
                        merged[key >> 1] = value
                self.cells[name] = merged

    def names(self, limit: int) -> list[str]:
        """The ``limit`` names with the largest peak norm, largest first."""
        return sorted(self.peaks, key=lambda n: -self.peaks[n])[:limit]


_ROUTINE_ACTIONS = frozenset({ActionKind.PROCEED, ActionKind.CLIP})
_ROUTINE_REASONS = frozenset({Reason.HEALTHY, Reason.NORM_ABOVE_BOUND})


class RunDigest:
    """What the report keeps of a run, filled one record at a time (see the module docstring).

    Attributes:
        norm: finite global gradient norms.
        clipped: the norm after clipping, on clipped steps.
        loss: finite losses.
        clip_coef: clip coefficients of every step.
        lr: learning rates, where logged.
        norm_nonfinite: steps whose gradient norm was NaN/Inf.
        loss_nonfinite: steps whose loss was NaN/Inf.
        culprits: the heat map's cells.
        events: every event record and the advisor's context records, in log order.
        steps: how many records were taken.
    """

    def __init__(self) -> None:
        self.norm = Envelope()
        self.clipped = Envelope()
        self.loss = Envelope()
        self.clip_coef = Envelope()
        self.lr = Envelope()
        self.norm_nonfinite = Marks()
        self.loss_nonfinite = Marks()
        self.culprits = CulpritCells()
        self.events: list[StepRecord] = []
        self.steps = 0
        self._last: StepRecord | None = None
        self._last_kept = False
        self._seen_nonfinite = False
        self._last_finite: tuple[StepRecord, int] | None = None

    @classmethod
    def of(cls, records: Iterable[StepRecord]) -> RunDigest:
        """The digest of ``records``."""
        digest = cls()
        for record in records:
            digest.add(record)
        return digest

    def feed(self, records: Iterable[StepRecord]) -> Iterator[StepRecord]:
        """Take each of ``records`` and pass it on: lets one pass also build the summary."""
        for record in records:
            self.add(record)
            yield record

    def add(self, record: StepRecord) -> None:
        """Take the next record of the log."""
        self.steps += 1
        step = record.step
        whole = (
            record.action not in _ROUTINE_ACTIONS
            or record.reason not in _ROUTINE_REASONS
            or bool(record.alerts)
            or record.rolled_back_to is not None
            or record.steps_lost > 0
        )
        norm = record.total_norm
        coef = record.clip_coef
        nonfinite = False
        if norm is not None:
            if math.isfinite(norm):
                self.norm.add(step, norm)
                if coef < 1.0:
                    self.clipped.add(step, norm * coef)
            else:
                nonfinite = True
                self.norm_nonfinite.add(step)
        loss = record.loss
        if loss is not None:
            if math.isfinite(loss):
                self.loss.add(step, loss)
            else:
                nonfinite = True
                self.loss_nonfinite.add(step)
        if nonfinite:
            whole = True
            self._first_nonfinite()
        if math.isfinite(coef):
            self.clip_coef.add(step, coef)
        if record.lr is not None and math.isfinite(record.lr):
            self.lr.add(step, record.lr)
        if record.top:
            known = self.culprits.peaks
            if not whole and any(name not in known for name, _ in record.top):
                whole = True  # the advisor learns the model's tensor names from the records
            self.culprits.add(step, record.top)
        if whole:
            self.events.append(record)
        if not nonfinite and norm is not None and not self._seen_nonfinite:
            self._last_finite = (record, len(self.events) - whole)
        self._last, self._last_kept = record, whole

    def _first_nonfinite(self) -> None:
        """Keep the last finite step before the first NaN/Inf: the advisor quotes it."""
        if self._seen_nonfinite:
            return
        self._seen_nonfinite = True
        if self._last_finite is not None:
            record, position = self._last_finite
            if not (position < len(self.events) and self.events[position] is record):
                self.events.insert(position, record)

    def records(self) -> tuple[StepRecord, ...]:
        """The kept records in log order, ending with the log's last record (whole)."""
        if self._last is None or self._last_kept:
            return tuple(self.events)
        return (*self.events, self._last)
