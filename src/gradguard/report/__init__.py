"""The run report: read a JSONL log back and explain it with plots, events and advice."""

from gradguard.report.advisor import Advice, ModelFacts, RateEvidence, advise, model_facts, rates
from gradguard.report.build import REPORT_NAME, build_report, default_report_dir
from gradguard.report.summary import Progress, RunSummary, progress, summarize

__all__ = [
    "REPORT_NAME",
    "Advice",
    "ModelFacts",
    "Progress",
    "RateEvidence",
    "RunSummary",
    "advise",
    "build_report",
    "default_report_dir",
    "model_facts",
    "progress",
    "rates",
    "summarize",
]
