"""Explain why a model's gradients explode: growth tables, spectra, BPTT, depth and landscape.

Each function takes a model (or a matrix) and returns a frozen result with ``to_dict()`` for JSON
and a readable ``str()``; none of them changes the model or its ``.grad``. Display code (plots,
progress bars) lives elsewhere: long scans accept a ``progress(done, total)`` callback instead.
"""

from gradguard.analysis.bptt import BPTTProfile, StateSeries, bptt_profile
from gradguard.analysis.depth import DepthProfile, LayerGradient, depth_profile
from gradguard.analysis.dynamics import EigenDynamics, eigen_dynamics
from gradguard.analysis.growth import (
    FLOAT32_MAX,
    Crossing,
    ExplosionTable,
    GrowthRow,
    critical_radius,
    explosion_table,
)
from gradguard.analysis.landscape import (
    Cliff,
    CliffCheck,
    LandscapeScan,
    find_cliffs,
    gradient_vs_cliff,
    landscape_scan,
    restored,
)
from gradguard.analysis.spectral import (
    BlockSpectrum,
    RecurrentReport,
    Verdict,
    largest_singular_value,
    recurrent_report,
    spectral_radius,
)
from gradguard.analysis.unroll import unrolled_forward

__all__ = [
    "FLOAT32_MAX",
    "BPTTProfile",
    "BlockSpectrum",
    "Cliff",
    "CliffCheck",
    "Crossing",
    "DepthProfile",
    "EigenDynamics",
    "ExplosionTable",
    "GrowthRow",
    "LandscapeScan",
    "LayerGradient",
    "RecurrentReport",
    "StateSeries",
    "Verdict",
    "bptt_profile",
    "critical_radius",
    "depth_profile",
    "eigen_dynamics",
    "explosion_table",
    "find_cliffs",
    "gradient_vs_cliff",
    "landscape_scan",
    "largest_singular_value",
    "recurrent_report",
    "restored",
    "spectral_radius",
    "unrolled_forward",
]
