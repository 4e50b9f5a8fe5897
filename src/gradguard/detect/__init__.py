"""Detectors: pure Python rules that turn Observations into Alerts (no torch).

One family per module; :data:`REGISTRY` lists every detector by name and :data:`PRESETS` the
detector sets the Monitor offers.
"""

from gradguard.detect.base import Detector
from gradguard.detect.culprit import CulpritDetector
from gradguard.detect.early import EarlyExplosionDetector
from gradguard.detect.level import LossLevelDetector
from gradguard.detect.loss import LossSpikeDetector
from gradguard.detect.nonfinite import NonFiniteDetector
from gradguard.detect.oscillation import OscillationDetector
from gradguard.detect.params import ParamNormGrowthDetector
from gradguard.detect.registry import PRESETS, REGISTRY, Preset, make, preset
from gradguard.detect.robust import RobustWindow
from gradguard.detect.spike import SpikeDetector
from gradguard.detect.textbook import TextbookDetector, ThresholdGrowthDetector
from gradguard.detect.threshold import ThresholdDetector
from gradguard.detect.trend import FLOAT32_MAX, GrowthTrendDetector, fit_log_linear

__all__ = [
    "FLOAT32_MAX",
    "PRESETS",
    "REGISTRY",
    "CulpritDetector",
    "Detector",
    "EarlyExplosionDetector",
    "GrowthTrendDetector",
    "LossLevelDetector",
    "LossSpikeDetector",
    "NonFiniteDetector",
    "OscillationDetector",
    "ParamNormGrowthDetector",
    "Preset",
    "RobustWindow",
    "SpikeDetector",
    "TextbookDetector",
    "ThresholdDetector",
    "ThresholdGrowthDetector",
    "fit_log_linear",
    "make",
    "preset",
]
