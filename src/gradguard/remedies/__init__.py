"""One-call remedies for exploding gradients: stable init, constrained recurrence, TBPTT, advice.

``init_for_stability`` and ``constrain_recurrent_`` change a model in place; ``TruncatedBPTT``
drives a hand-written recurrent loop; ``suggest`` turns what was observed into structured advice.
"""

from gradguard.remedies.advice import Advice, Remedy, Trigger, round_setting, suggest
from gradguard.remedies.constrain import ScaledOrthogonal, SpectralBound, constrain_recurrent_
from gradguard.remedies.init import InitSummary, init_for_stability
from gradguard.remedies.tbptt import TBPTTResult, TruncatedBPTT, detach_state

__all__ = [
    "Advice",
    "InitSummary",
    "Remedy",
    "ScaledOrthogonal",
    "SpectralBound",
    "TBPTTResult",
    "Trigger",
    "TruncatedBPTT",
    "constrain_recurrent_",
    "detach_state",
    "init_for_stability",
    "round_setting",
    "suggest",
]
