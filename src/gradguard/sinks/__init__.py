"""Where step records go: console, JSONL, CSV, TensorBoard; and the JSONL reader."""

from gradguard.sinks.base import Sink
from gradguard.sinks.console import ConsoleSink
from gradguard.sinks.csvfile import CSV_COLUMNS, CsvSink
from gradguard.sinks.jsonl import LOG_FORMAT, JsonlSink
from gradguard.sinks.logger import LOGGER_NAME, LoggingSink, with_default_logging
from gradguard.sinks.rank import RankZeroSink, is_launch_rank_zero, is_rank_zero
from gradguard.sinks.read import LogHeader, LogStream, RunLog, SkippedLine, read_jsonl
from gradguard.sinks.tally import (
    StepTally,
    done_phrase,
    is_clipped,
    is_shown_intervention,
    shown_severity,
)
from gradguard.sinks.tboard import TensorBoardSink

__all__ = [
    "CSV_COLUMNS",
    "LOGGER_NAME",
    "LOG_FORMAT",
    "ConsoleSink",
    "CsvSink",
    "JsonlSink",
    "LogHeader",
    "LogStream",
    "LoggingSink",
    "RankZeroSink",
    "RunLog",
    "Sink",
    "SkippedLine",
    "StepTally",
    "TensorBoardSink",
    "done_phrase",
    "is_clipped",
    "is_launch_rank_zero",
    "is_rank_zero",
    "is_shown_intervention",
    "read_jsonl",
    "shown_severity",
    "with_default_logging",
]
