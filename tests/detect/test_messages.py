"""Alert messages say what was seen, never "clip" or "skip": the guard may already have done it."""

from __future__ import annotations

import math
import random
import re

from gradguard.detect import REGISTRY, make
from gradguard.records import Alert
from tests.detect.trace import obs

ACTIONS = re.compile(r"\b(clip|clipping|skip|roll back)\b", re.IGNORECASE)


def _explosion() -> list[tuple[float, float]]:
    """(norm, loss): 60 noisy healthy steps, a spike, 30 steps of x1.6 growth, then NaN."""
    rng = random.Random(0)
    trace = [(math.exp(rng.gauss(0, 0.1)), 1.0 + 0.01 * rng.random()) for _ in range(60)]
    trace.append((500.0, 80.0))
    trace += [(2.0 * 1.6**k, 1.0 + k) for k in range(30)]
    trace += [(math.nan, math.inf)]
    return trace


def test_no_alert_tells_the_user_to_clip_or_skip() -> None:
    seen: list[Alert] = []
    for name in REGISTRY:
        detector = make(name)
        for step, (norm, loss) in enumerate(_explosion()):
            param = 10.0 * 1.3**step if step % 10 == 0 else None
            seen += detector.update(obs(step, norm, loss, param_norm=param))
    kinds = {a.kind.value for a in seen}
    assert {"nonfinite_grad", "nonfinite_loss", "grad_norm_spike", "growth_trend"} <= kinds
    assert {"grad_norm_threshold", "loss_spike"} <= kinds
    told = [a.message for a in seen if ACTIONS.search(a.message)]
    assert told == []
