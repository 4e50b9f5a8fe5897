"""Small seeded CPU training runs that explode, or stay healthy, in known ways.

For tests, the demo and the benchmarks::

    from gradguard import scenarios

    for name in scenarios.names():
        trace = scenarios.run_unguarded(scenarios.get(name))
        print(name, trace.divergence_step)

:mod:`gradguard.scenarios.generate` samples a larger family (architectures x optimizers x
learning rates x faults) split into a tuning and a validation half, for the benchmarks.
"""

from gradguard.scenarios.base import (
    DIVERGENCE_FACTOR,
    EARLY_STEPS,
    Batch,
    Hook,
    Kind,
    Scenario,
    Trace,
    TrainingRun,
    train,
)
from gradguard.scenarios.catalog import SCENARIOS, get, names

__all__ = [
    "DIVERGENCE_FACTOR",
    "EARLY_STEPS",
    "SCENARIOS",
    "Batch",
    "Hook",
    "Kind",
    "Scenario",
    "Trace",
    "TrainingRun",
    "get",
    "names",
    "run_unguarded",
    "train",
]


def run_unguarded(scenario: Scenario, *, seed: int = 0) -> Trace:
    """Train ``scenario`` with no protection, stopping right after it diverges."""
    return train(scenario, seed=seed)
