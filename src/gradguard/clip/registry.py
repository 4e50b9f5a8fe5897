"""Every clipping rule by name, each with default settings, for configs and contract tests."""

from __future__ import annotations

import functools
from collections.abc import Callable

from gradguard.clip.base import Clipper
from gradguard.clip.fixed import GlobalNormClipper, PerTensorNormClipper, ValueClipper
from gradguard.clip.percentile import PercentileClipper
from gradguard.clip.unitwise import AdaptiveUnitClipper
from gradguard.clip.zscore import ZScoreClipper

__all__ = ["REGISTRY"]

REGISTRY: dict[str, Callable[[], Clipper]] = {
    "global_norm": functools.partial(GlobalNormClipper, 1.0),
    "per_tensor_norm": functools.partial(PerTensorNormClipper, 1.0),
    "value": functools.partial(ValueClipper, 1.0),
    "percentile": PercentileClipper,
    "zscore": ZScoreClipper,
    "agc": AdaptiveUnitClipper,
}
"""Name -> factory of a clipper with default settings (``max_norm=1`` for the fixed rules)."""
