"""Every detector by name, and the presets the Monitor offers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

from gradguard.detect.base import Detector
from gradguard.detect.culprit import CulpritDetector
from gradguard.detect.early import EarlyExplosionDetector
from gradguard.detect.level import LossLevelDetector
from gradguard.detect.loss import LossSpikeDetector
from gradguard.detect.nonfinite import NonFiniteDetector
from gradguard.detect.oscillation import OscillationDetector
from gradguard.detect.params import ParamNormGrowthDetector
from gradguard.detect.spike import SpikeDetector
from gradguard.detect.textbook import TextbookDetector, ThresholdGrowthDetector
from gradguard.detect.threshold import ThresholdDetector
from gradguard.detect.trend import GrowthTrendDetector
from gradguard.errors import ConfigError

__all__ = ["PRESETS", "REGISTRY", "Preset", "make", "preset"]

Preset: TypeAlias = Literal["default", "textbook", "strict"]

REGISTRY: dict[str, Callable[[], Detector]] = {
    NonFiniteDetector.name: NonFiniteDetector,
    ThresholdDetector.name: ThresholdDetector,
    SpikeDetector.name: SpikeDetector,
    GrowthTrendDetector.name: GrowthTrendDetector,
    LossSpikeDetector.name: LossSpikeDetector,
    ParamNormGrowthDetector.name: ParamNormGrowthDetector,
    CulpritDetector.name: CulpritDetector,
    EarlyExplosionDetector.name: EarlyExplosionDetector,
    LossLevelDetector.name: LossLevelDetector,
    OscillationDetector.name: OscillationDetector,
    TextbookDetector.name: TextbookDetector,
    ThresholdGrowthDetector.name: ThresholdGrowthDetector,
}
"""Detector name -> factory building it with its default settings."""


def _default() -> list[Detector]:
    return [
        NonFiniteDetector(),
        EarlyExplosionDetector(),
        SpikeDetector(),
        GrowthTrendDetector(),
        LossSpikeDetector(),
        LossLevelDetector(),
        OscillationDetector(),
        ParamNormGrowthDetector(),
        CulpritDetector(),
    ]


def _strict() -> list[Detector]:
    return [
        NonFiniteDetector(),
        EarlyExplosionDetector(),
        SpikeDetector(warmup=10, z_threshold=4.0, min_ratio=5.0),
        GrowthTrendDetector(warmup=10, window=16, horizon=4000.0, min_r2=0.5, persistence=2),
        LossSpikeDetector(warmup=10, z_threshold=4.0, min_ratio=4.0),
        LossLevelDetector(),
        OscillationDetector(),
        ParamNormGrowthDetector(every=5, max_growth=1.5, warmup=10),
        CulpritDetector(every=5, min_ratio=5.0, warmup=10),
    ]


def _textbook() -> list[Detector]:
    return [TextbookDetector()]


PRESETS: dict[str, Callable[[], list[Detector]]] = {
    "default": _default,
    "textbook": _textbook,
    "strict": _strict,
}
"""Preset name -> factory of a fresh detector list.

* ``default``: non-finite, explosion from the first steps, robust spike, growth trend with
  forecast, loss spike, loss level (warm-up jumps, far above, stuck), oscillation,
  parameter-norm growth (every 10 steps) and culprit attribution; tuned to stay silent on noisy
  healthy runs.
* ``strict``: the same families, more sensitive: shorter warm-up, lower ratios. Expect an
  occasional false alarm on noisy runs.
* ``textbook``: the five-strategy monitor of the textbooks, exactly.
"""


def preset(name: str) -> list[Detector]:
    """Build a fresh list of the detectors of preset ``name``.

    Raises:
        ConfigError: ``name`` is not a known preset.
    """
    factory = PRESETS.get(name)
    if factory is None:
        raise ConfigError(
            f"preset must be one of {sorted(PRESETS)}, got {name!r}. Use 'default' unless you "
            "want the textbook rules ('textbook') or more sensitivity ('strict')."
        )
    return factory()


def make(name: str) -> Detector:
    """Build the registered detector ``name`` with its default settings.

    Raises:
        ConfigError: ``name`` is not registered.
    """
    factory = REGISTRY.get(name)
    if factory is None:
        raise ConfigError(f"detector must be one of {sorted(REGISTRY)}, got {name!r}.")
    return factory()
