"""Clipping rules: each computes a coefficient on the device and applies it with foreach kernels."""

from gradguard.clip.apply import safe_coefficient, scale_grads_
from gradguard.clip.norm import clip_by_global_norm_

__all__ = ["clip_by_global_norm_", "safe_coefficient", "scale_grads_"]
