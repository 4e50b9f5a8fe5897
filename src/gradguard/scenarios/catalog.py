"""Every scenario by name."""

from __future__ import annotations

from gradguard.errors import ConfigError
from gradguard.scenarios.base import Scenario
from gradguard.scenarios.exploding import EXPLODING
from gradguard.scenarios.healthy import HEALTHY

__all__ = ["SCENARIOS", "get", "names"]

SCENARIOS: dict[str, Scenario] = {s.name: s for s in [*EXPLODING, *HEALTHY]}
"""Scenario name -> scenario, exploding ones first."""


def names() -> list[str]:
    """Names of every scenario, exploding ones first."""
    return list(SCENARIOS)


def get(name: str) -> Scenario:
    """The scenario called ``name``.

    Raises:
        ConfigError: no scenario has that name.
    """
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise ConfigError(f"scenario must be one of {names()}, got {name!r}.")
    return scenario
