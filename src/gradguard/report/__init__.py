"""The run report: read a JSONL log back and explain it with plots, events and advice."""

from gradguard.report.advisor import Advice, ModelFacts, advise, model_facts
from gradguard.report.build import REPORT_NAME, build_report, default_report_dir
from gradguard.report.summary import RunSummary, summarize

__all__ = [
    "REPORT_NAME",
    "Advice",
    "ModelFacts",
    "RunSummary",
    "advise",
    "build_report",
    "default_report_dir",
    "model_facts",
    "summarize",
]
