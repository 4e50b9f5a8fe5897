"""Shared test set-up: one torch thread per xdist worker, fixed seeds, a hypothesis profile."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

settings.register_profile(
    "gradguard",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("gradguard")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
