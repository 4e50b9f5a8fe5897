"""CsvSink rows, TensorBoardSink events read back, the missing-extra error, rank-0 gating."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from gradguard.errors import ConfigError, LogFormatError, MissingDependencyError
from gradguard.records import ActionKind, Alert, AlertKind, Reason, Severity, StepRecord
from gradguard.sinks import CSV_COLUMNS, CsvSink, RankZeroSink, TensorBoardSink, is_rank_zero

RECORDS = (
    StepRecord(0, ActionKind.PROCEED, Reason.HEALTHY, loss=1.5, total_norm=0.5, lr=0.1),
    StepRecord(
        1,
        ActionKind.CLIP,
        Reason.NORM_ABOVE_BOUND,
        "clipped",
        loss=1.25,
        total_norm=4.0,
        clip_coef=0.25,
        lr=0.1,
        alerts=(Alert(1, Severity.WARNING, AlertKind.GRAD_NORM_SPIKE, "spike <b>", value=8.0),),
        top=(("rnn.weight_hh_l0", 3.5),),
    ),
    StepRecord(
        2,
        ActionKind.SKIP,
        Reason.NONFINITE_GRAD,
        "NaN, skipped",
        applied=False,
        loss=math.nan,
        total_norm=math.inf,
        lr=0.05,
    ),
)


def test_csv_rows(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    sink = CsvSink(path)
    for record in RECORDS:
        sink.write(record)
    sink.close()
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert [r["action"] for r in rows] == ["proceed", "clip", "skip"]
    assert float(rows[1]["clip_coef"]) == 0.25
    assert rows[1]["alerts"] == "warning:grad_norm_spike"
    assert rows[1]["top_tensor"] == "rnn.weight_hh_l0"
    assert float(rows[1]["top_norm"]) == 3.5
    assert math.isnan(float(rows[2]["loss"]))
    assert float(rows[2]["total_norm"]) == math.inf
    assert rows[2]["applied"] == "0"
    assert rows[0]["rolled_back_to"] == ""


def _events(log_dir: Path) -> tuple[dict[str, dict[int, float]], dict[int, str]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, dict[int, float]] = {}
    texts: dict[int, str] = {}
    (event_file,) = log_dir.glob("events.out.tfevents.*")
    for event in EventFileLoader(str(event_file)).Load():
        for value in event.summary.value:
            # TensorBoard's own loader turns our simple values into its scalar plugin's form.
            if value.metadata.plugin_data.plugin_name == "scalars":
                scalars.setdefault(value.tag, {})[event.step] = value.tensor.float_val[0]
            elif value.metadata.plugin_data.plugin_name == "text":
                texts[event.step] = value.tensor.string_val[0].decode()
    return scalars, texts


def test_tensorboard_scalars_and_text(tmp_path: Path) -> None:
    sink = TensorBoardSink(tmp_path)
    for record in RECORDS:
        sink.write(record)
    sink.close()
    scalars, texts = _events(tmp_path)
    assert scalars["gradguard/grad_norm"] == {0: 0.5, 1: 4.0}  # inf is not drawn ...
    assert scalars["gradguard/nonfinite_grad"] == {0: 0.0, 1: 0.0, 2: 1.0}  # ... but flagged
    assert scalars["gradguard/loss"] == {0: 1.5, 1: 1.25}
    assert scalars["gradguard/clip_coef"] == {0: 1.0, 1: 0.25, 2: 1.0}
    assert scalars["gradguard/lr"] == pytest.approx({0: 0.1, 1: 0.1, 2: 0.05})
    assert scalars["gradguard/intervention"] == {0: 0.0, 1: 1.0, 2: 1.0}
    assert scalars["gradguard/interventions_total"] == {0: 0.0, 1: 1.0, 2: 2.0}
    assert texts[1] == (
        "- **clip** (norm_above_bound): clipped\n- warning `grad_norm_spike`: spike \\<b\\>"
    )
    assert texts[2] == "- **skip** (nonfinite_grad): NaN, skipped"
    assert 0 not in texts


def test_tensorboard_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
    with pytest.raises(MissingDependencyError, match=r"pip install gradguard\[tensorboard\]"):
        TensorBoardSink("unused")


class _ListSink:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.closed = False

    def write(self, record: StepRecord) -> None:
        self.records.append(record)

    def close(self) -> None:
        self.closed = True


def test_rank_zero_gate_without_distributed() -> None:
    assert not dist.is_initialized()
    assert is_rank_zero()
    inner = _ListSink()
    sink = RankZeroSink(inner)
    sink.write(RECORDS[0])
    sink.close()
    assert inner.records == [RECORDS[0]]
    assert inner.closed


def test_rank_zero_gate_drops_other_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    assert not is_rank_zero()
    inner = _ListSink()
    sink = RankZeroSink(inner)
    sink.write(RECORDS[0])
    sink.close()
    assert inner.records == []
    assert inner.closed  # files are released on every rank


def test_rank_zero_gate_in_a_real_process_group(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert is_rank_zero()
        inner = _ListSink()
        RankZeroSink(inner).write(RECORDS[1])
        assert inner.records == [RECORDS[1]]
    finally:
        dist.destroy_process_group()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_csv_never_replaces_an_earlier_table_by_accident(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    with_rows = CsvSink(path)
    for record in RECORDS:
        with_rows.write(record)
    with_rows.close()
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"already exists; pass if_exists='append'"):
        CsvSink(path)
    assert path.read_bytes() == before  # untouched
    again = CsvSink(path, if_exists="append")
    again.write(RECORDS[0])
    again.close()
    assert [r["step"] for r in _rows(path)] == ["0", "1", "2", "0"]  # one header, rows added
    fresh = CsvSink(path, if_exists="overwrite")
    fresh.close()
    assert _rows(path) == []
    with pytest.raises(ConfigError, match=r"if_exists must be one of .* got 'replace'"):
        CsvSink(path, if_exists="replace")  # type: ignore[arg-type]


def test_csv_appends_only_to_its_own_complete_tables(tmp_path: Path) -> None:
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(LogFormatError, match=r"not a gradguard CSV table .* \['a', 'b'\]"):
        CsvSink(foreign, if_exists="append")
    cut = tmp_path / "cut.csv"
    cut.write_text(",".join(CSV_COLUMNS) + "\n0,proceed,heal", encoding="utf-8")
    with pytest.raises(LogFormatError, match="ends inside a row"):
        CsvSink(cut, if_exists="append")
    empty = tmp_path / "empty.csv"
    empty.touch()
    CsvSink(empty).close()  # an empty file holds nothing to lose
    assert empty.read_text(encoding="utf-8").splitlines() == [",".join(CSV_COLUMNS)]
