"""gradguard: catch exploding gradients in PyTorch training, rescue the run, explain why.

Importing gradguard loads torch and nothing heavier: display packages (rich, matplotlib,
tensorboard) and integrations (lightning, transformers) are imported by the modules that use them.
"""

from gradguard import analysis, errors, records, remedies
from gradguard.clip import clip_by_global_norm_
from gradguard.errors import GradguardError
from gradguard.stats import GradStats, measure

__version__ = "0.1.0"

__all__ = [
    "GradStats",
    "GradguardError",
    "__version__",
    "analysis",
    "clip_by_global_norm_",
    "errors",
    "measure",
    "records",
    "remedies",
]
