"""Clipping rules: each computes a coefficient on the device and applies it with foreach kernels.

Functions clip in one call (``clip_by_global_norm_``, ``clip_per_tensor_norm_``,
``clip_by_value_``, and the drop-ins for PyTorch's ``clip_grad_norm_`` and ``clip_grad_value_``
with the same names and arguments); objects implement the :class:`Clipper` interface
(``clip_(stats)``, ``state_dict()``, ``load_state_dict()``) so a Guard can take any of them, the
adaptive ones (:class:`PercentileClipper`, :class:`ZScoreClipper`,
:class:`AdaptiveUnitClipper`) included.
"""

from gradguard.clip.apply import (
    apply_global_bound_,
    apply_per_tensor_bound_,
    safe_coefficient,
    scale_each_grad_,
    scale_grads_,
)
from gradguard.clip.base import Clipper, step_coefficient
from gradguard.clip.fixed import GlobalNormClipper, PerTensorNormClipper, ValueClipper
from gradguard.clip.fused import fused_clipped_step
from gradguard.clip.norm import clip_by_global_norm_, clip_grad_norm_, clip_per_tensor_norm_
from gradguard.clip.percentile import PercentileClipper
from gradguard.clip.registry import REGISTRY
from gradguard.clip.unitwise import AdaptiveUnitClipper
from gradguard.clip.value import clip_by_value_, clip_grad_value_
from gradguard.clip.zscore import ZScoreClipper

__all__ = [
    "REGISTRY",
    "AdaptiveUnitClipper",
    "Clipper",
    "GlobalNormClipper",
    "PerTensorNormClipper",
    "PercentileClipper",
    "ValueClipper",
    "ZScoreClipper",
    "apply_global_bound_",
    "apply_per_tensor_bound_",
    "clip_by_global_norm_",
    "clip_by_value_",
    "clip_grad_norm_",
    "clip_grad_value_",
    "clip_per_tensor_norm_",
    "fused_clipped_step",
    "safe_coefficient",
    "scale_each_grad_",
    "scale_grads_",
    "step_coefficient",
]
