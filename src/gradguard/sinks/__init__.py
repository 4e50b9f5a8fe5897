"""Where step records go: console, JSONL, CSV, TensorBoard; and the JSONL reader."""

from gradguard.sinks.base import Sink
from gradguard.sinks.console import ConsoleSink
from gradguard.sinks.csvfile import CSV_COLUMNS, CsvSink
from gradguard.sinks.jsonl import LOG_FORMAT, JsonlSink
from gradguard.sinks.rank import RankZeroSink, is_rank_zero
from gradguard.sinks.read import LogHeader, LogStream, RunLog, SkippedLine, read_jsonl
from gradguard.sinks.tboard import TensorBoardSink

__all__ = [
    "CSV_COLUMNS",
    "LOG_FORMAT",
    "ConsoleSink",
    "CsvSink",
    "JsonlSink",
    "LogHeader",
    "LogStream",
    "RankZeroSink",
    "RunLog",
    "Sink",
    "SkippedLine",
    "TensorBoardSink",
    "is_rank_zero",
    "read_jsonl",
]
