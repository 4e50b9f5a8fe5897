"""The snapshot registry: parts saved and restored in order, a rollback restoring only its own."""

from __future__ import annotations

from typing import Any

import pytest

from gradguard.recover.registry import StateRegistry


class _Part:
    def __init__(self, value: int, log: list[str], name: str) -> None:
        self.value, self.log, self.name = value, log, name

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log.append(self.name)
        self.value = state["value"]


def test_parts_are_saved_and_restored_in_order_and_a_rollback_keeps_the_live_ones() -> None:
    log: list[str] = []
    model, budgets, absent = _Part(1, log, "model"), _Part(10, log, "budgets"), None
    parts = StateRegistry()
    parts.add("model", model.state_dict, model.load_state_dict)
    parts.add("budgets", budgets.state_dict, budgets.load_state_dict, on_rollback=False)
    parts.add("scaler", dict, lambda s: None, saved=lambda: absent is not None)
    saved = parts.save()
    assert saved == {"model": {"value": 1}, "budgets": {"value": 10}, "scaler": None}
    model.value, budgets.value = 2, 20
    assert parts.load(saved, rollback=True) == ["model"]
    assert (model.value, budgets.value) == (1, 20)  # the budgets spent stay spent
    assert parts.load(saved, rollback=False) == ["model", "budgets"]
    assert (model.value, budgets.value, log) == (1, 10, ["model", "model", "budgets"])


def test_a_part_registered_twice_is_refused() -> None:
    parts = StateRegistry()
    parts.add("model", dict, lambda s: None)
    with pytest.raises(ValueError, match="'model' is registered twice"):
        parts.add("model", dict, lambda s: None)
