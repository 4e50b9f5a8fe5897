"""One registry of everything a snapshot holds, each part saving and loading itself.

A snapshot is the model, optimizer, scheduler, scaler, random generators, detectors and policy
baselines of one moment. Each is registered once with how to save it, how to load it and whether
a rollback restores it (a rollback keeps the budgets live; only a resume after a crash restores
the guard's whole state), so a snapshot is taken, rolled back to and resumed from by one loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["StateRegistry"]


@dataclasses.dataclass(frozen=True)
class _Part:
    save: Callable[[], Any]
    load: Callable[[Any], None]
    on_rollback: bool | Callable[[], bool]
    on_resume: bool
    saved: Callable[[], bool]

    def restored(self, rollback: bool) -> bool:
        if not rollback:
            return self.on_resume
        return self.on_rollback() if callable(self.on_rollback) else self.on_rollback


class StateRegistry:
    """The named parts of a snapshot, saved and loaded in the order they were added."""

    def __init__(self) -> None:
        self._parts: dict[str, _Part] = {}

    def add(
        self,
        name: str,
        save: Callable[[], Any],
        load: Callable[[Any], None],
        *,
        on_rollback: bool | Callable[[], bool] = True,
        on_resume: bool = True,
        saved: Callable[[], bool] = lambda: True,
    ) -> None:
        """Register a part.

        Args:
            name: its key in the snapshot.
            save: returns its state (a ``state_dict()``).
            load: restores a state ``save`` returned (a ``load_state_dict``).
            on_rollback: whether a rollback restores it (or a function that says so when asked).
            on_resume: whether a resume restores it.
            saved: whether to save it now (``None`` is stored otherwise, and never loaded).
        """
        if name in self._parts:
            raise ValueError(f"the snapshot part {name!r} is registered twice")
        self._parts[name] = _Part(save, load, on_rollback, on_resume, saved)

    def save(self, *, only: Collection[str] | None = None) -> dict[str, Any]:
        """The state of every part (or of the parts named in ``only``), by name."""
        parts = self._parts.items()
        return {n: p.save() if p.saved() else None for n, p in parts if only is None or n in only}

    def load(
        self, state: Mapping[str, Any], *, rollback: bool, only: Collection[str] | None = None
    ) -> list[str]:
        """Restore the parts ``state`` holds that a rollback (or a resume) restores.

        Args:
            state: what :meth:`save` returned.
            rollback: a rollback, else a resume.
            only: restore at most these parts.

        Returns:
            The names of the parts restored, in order.
        """
        done = []
        for name, part in self._parts.items():
            wanted = only is None or name in only
            if wanted and part.restored(rollback) and state.get(name) is not None:
                part.load(state[name])
                done.append(name)
        return done
