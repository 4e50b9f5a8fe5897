"""Measure gradients on the device: the only hot path of gradguard."""

from gradguard.stats.measure import GradGroup, GradStats, check_norm_type, measure
from gradguard.stats.observe import observe, param_norm
from gradguard.stats.params import NamedTensors, Parameters, named_grads, named_tensors
from gradguard.stats.reduce import reduce_across_ranks

__all__ = [
    "GradGroup",
    "GradStats",
    "NamedTensors",
    "Parameters",
    "check_norm_type",
    "measure",
    "named_grads",
    "named_tensors",
    "observe",
    "param_norm",
    "reduce_across_ranks",
]
