"""gradguard: catch exploding gradients in PyTorch training, rescue the run, explain why.

Importing gradguard loads torch and nothing heavier: display packages (rich, matplotlib,
tensorboard) and integrations (lightning, transformers) are imported by the modules that use them.
"""

from gradguard import analysis, errors, records, remedies
from gradguard.clip import (
    Clipper,
    clip_by_global_norm_,
    clip_by_value_,
    clip_grad_norm_,
    clip_grad_value_,
    clip_per_tensor_norm_,
)
from gradguard.errors import GradguardError
from gradguard.guard import Guard
from gradguard.integrations import GlobalGuard
from gradguard.monitor import Monitor
from gradguard.policy import PolicyConfig
from gradguard.report import build_report
from gradguard.sinks import ConsoleSink, JsonlSink, read_jsonl
from gradguard.stats import GradStats, measure

__version__ = "0.1.0"

__all__ = [
    "Clipper",
    "ConsoleSink",
    "GlobalGuard",
    "GradStats",
    "GradguardError",
    "Guard",
    "JsonlSink",
    "Monitor",
    "PolicyConfig",
    "__version__",
    "analysis",
    "build_report",
    "clip_by_global_norm_",
    "clip_by_value_",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_per_tensor_norm_",
    "errors",
    "measure",
    "read_jsonl",
    "records",
    "remedies",
]
