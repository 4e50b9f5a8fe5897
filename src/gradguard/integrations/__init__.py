"""Protection without changing the training loop: global optimizer hooks, Lightning, HF Trainer.

``GlobalGuard`` (what ``gradguard run`` uses) and ``HookedGuard`` live in
:mod:`gradguard.integrations.hooks`; the framework callbacks are in
:mod:`gradguard.integrations.lightning` and :mod:`gradguard.integrations.transformers`, which
import their framework only when used.
"""

from gradguard.integrations.hooks import (
    GlobalGuard,
    HookedGuard,
    LossTap,
    find_model,
    unwrap_optimizer,
)

__all__ = ["GlobalGuard", "HookedGuard", "LossTap", "find_model", "unwrap_optimizer"]
