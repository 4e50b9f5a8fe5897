"""gradguard: catch exploding gradients in PyTorch training, rescue the run, explain why.

Importing gradguard loads torch and nothing heavier: display packages (rich, matplotlib,
tensorboard) and integrations (lightning, transformers) are imported by the modules that use them.
"""

from gradguard import errors, records
from gradguard.clip import clip_by_global_norm_
from gradguard.errors import GradguardError
from gradguard.guard import Guard
from gradguard.stats import GradStats, measure

__version__ = "0.1.0"

__all__ = [
    "GradStats",
    "GradguardError",
    "Guard",
    "__version__",
    "clip_by_global_norm_",
    "errors",
    "measure",
    "records",
]
