"""RunDigest: bounded curves that keep every spike, and the events the page and advisor need.

The digest stands in for the full record list in the report, so the key property is that the
page's text (outcome, events table, advice) is the same whether it is built from every record
or from the digest's kept records.

Turns shared/repro/reliability/repro_report_slow_large_log.py into tests (its timing lives in
benchmarks/report.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gradguard.records import ActionKind, Alert, AlertKind, Reason, Severity, StepRecord
from gradguard.report import advise, summarize
from gradguard.report.digest import BUCKETS, CulpritCells, Envelope, Marks, RunDigest
from gradguard.report.page import Page, render_page
from gradguard.sinks import LogHeader, RunLog
from tests.report.synthetic import METADATA, synthetic_records

pairs = st.lists(
    st.tuples(st.integers(0, 10_000), st.floats(-1e6, 1e6, allow_nan=False)), max_size=300
)


@given(pairs, st.integers(1, 16))
def test_an_envelope_keeps_the_extremes_at_their_steps_in_bounded_space(
    data: list[tuple[int, float]], limit: int
) -> None:
    envelope = Envelope(limit=limit)
    for step, value in data:
        envelope.add(step, value)
    assert len(envelope.buckets) <= limit
    xs, ys = envelope.points()
    assert xs == sorted(xs)
    drawn = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
    assert set(drawn) <= set(data)  # only real points are drawn; NaN marks a gap
    keys = sorted(envelope.buckets)
    gaps = sum(1 for a, b in itertools.pairwise(keys) if b > a + 1)
    assert len(xs) - len(drawn) == gaps
    if not data:
        assert envelope.bounds() is None
        return
    low, high = min(v for _, v in data), max(v for _, v in data)
    assert envelope.bounds() == (low, high)
    assert high in ys and low in ys  # a one-step spike or dip always reaches the plot


@given(st.lists(st.integers(0, 100_000), max_size=200), st.integers(1, 8))
def test_marks_keep_the_first_step_of_each_bucket(steps: list[int], limit: int) -> None:
    marks = Marks(limit=limit)
    for step in steps:
        marks.add(step)
    assert marks.count == len(steps)
    assert len(marks.steps()) <= limit
    assert set(marks.steps()) <= set(steps)
    if steps:
        assert marks.steps()[0] == min(steps)


def _healthy(step: int, norm: float = 1.0) -> StepRecord:
    return StepRecord(
        step,
        ActionKind.PROCEED,
        Reason.HEALTHY,
        loss=1.0,
        total_norm=norm,
        lr=1e-3,
        top=(("w", norm), ("b", norm / 2)),
    )


def test_a_long_healthy_run_keeps_its_spike_and_almost_no_records() -> None:
    spike = 31_337
    digest = RunDigest()
    for step in range(60_000):
        norm = 1.0 + (step % 10) / 10 if step != spike else 5000.0
        digest.add(_healthy(step, norm))
    assert digest.steps == 60_000
    assert len(digest.norm.buckets) <= BUCKETS
    xs, ys = digest.norm.points()
    assert (spike, 5000.0) in set(zip(xs, ys, strict=True))
    assert len(xs) <= 2 * BUCKETS
    assert not any(math.isnan(y) for y in ys)  # a series logged at every step has no gap
    kept = digest.records()
    assert [r.step for r in kept] == [0, 59_999]  # the names' first record and the last one
    cells = digest.culprits
    assert max(len(row) for row in cells.cells.values()) <= cells.limit
    assert cells.names(16) == ["w", "b"]
    assert max(cells.cells["w"].values()) == 5000.0


def _page_text(records: tuple[StepRecord, ...] | list[StepRecord]) -> str:
    """The page without figures, built from ``records`` as the report builds it."""
    full = synthetic_records()
    summary = summarize(full)
    log = RunLog(Path("run.jsonl"), LogHeader(1, "t", "", METADATA), tuple(records))
    advice = advise(records, METADATA, summary)
    return render_page(Page("t", log, summary, advice, figures=(), analysis=()))


def test_the_page_from_kept_records_equals_the_page_from_every_record() -> None:
    records = synthetic_records()
    digest = RunDigest()
    assert summarize(digest.feed(records)) == summarize(records)  # one pass, same summary
    kept = digest.records()
    assert len(kept) < len(records)
    assert _page_text(kept) == _page_text(records)


def test_the_last_finite_step_before_the_first_nan_is_kept() -> None:
    records = [_healthy(i) for i in range(10)]
    records[7] = dataclasses.replace(records[7], top=(("new", 1.0),))  # kept for its new name
    records.append(dataclasses.replace(_healthy(10), total_norm=math.nan))
    kept = RunDigest.of(records).records()
    assert [r.step for r in kept] == [0, 7, 9, 10]
    assert advise(kept, {}) == advise(records, {})


def test_every_kind_of_event_is_kept_whole() -> None:
    alert = Alert(3, Severity.INFO, AlertKind.CULPRIT, "w grows", culprits=("w",))
    events = {
        3: _healthy(3).__class__(**{**dataclasses.asdict(_healthy(3)), "alerts": (alert,)}),
        5: dataclasses.replace(_healthy(5), action=ActionKind.CLIP, clip_coef=0.5),
        7: dataclasses.replace(_healthy(7), reason=Reason.REGIME_CHANGE),
        9: dataclasses.replace(_healthy(9), loss=math.inf),
        11: dataclasses.replace(_healthy(11), action=ActionKind.SKIP, applied=False),
    }
    records = [events.get(i, _healthy(i)) for i in range(14)]
    kept = RunDigest.of(records).records()
    assert [r.step for r in kept] == [0, 3, 7, 8, 9, 11, 13]  # 8: last finite before the inf
    assert all(r is records[r.step] for r in kept)  # whole; routine clipping (5) is only counted
    assert summarize(records).clipped_steps == 1


def test_a_run_clipped_at_every_step_keeps_no_record_per_step() -> None:
    records = [
        dataclasses.replace(
            _healthy(i), action=ActionKind.CLIP, reason=Reason.NORM_ABOVE_BOUND, clip_coef=0.5
        )
        for i in range(50)
    ]
    records[20] = dataclasses.replace(records[20], clip_coef=0.01)
    kept = RunDigest.of(records).records()
    assert kept == (records[0], records[-1])  # the first names the tensors
    summary = summarize(records)
    assert (summary.clipped_steps, summary.smallest_clip) == (50, (20, 0.01))
    meta = {"model": {"recurrent": True}}
    advice = advise(kept, meta, summary)
    assert advice == advise(records, meta)
    assert any(
        "Clipping acted on 50 of 50 steps; smallest coefficient 0.01 at step 20" in e
        for a in advice
        for e in a.evidence
    )


def test_heat_cells_accept_steps_that_go_back() -> None:
    cells = CulpritCells(limit=8)
    for step in [*range(100, 120), *range(40, 60)]:
        cells.add(step, (("w", float(step)),))
    assert (cells.first_step, cells.last_step) == (40, 119)
    assert (cells.last_step >> cells.shift) - (cells.first_step >> cells.shift) < 8
    assert max(cells.cells["w"].values()) == 119.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 500), min_size=1, max_size=80))
def test_the_summary_and_events_do_not_depend_on_step_order(steps: list[int]) -> None:
    records = [
        dataclasses.replace(_healthy(s), action=ActionKind.SKIP) if s % 7 == 0 else _healthy(s)
        for s in steps
    ]
    digest = RunDigest()
    summary = summarize(digest.feed(records))
    assert summary == summarize(records)
    skips = [r for r in digest.records() if r.action is ActionKind.SKIP]
    assert skips == [r for r in records if r.action is ActionKind.SKIP]
