"""The one interface every sink implements: receive a StepRecord, flush, close."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gradguard.records import StepRecord

__all__ = ["Sink"]


@runtime_checkable
class Sink(Protocol):
    """Something that receives one :class:`StepRecord` per optimizer step.

    Monitor and Guard call ``write`` once per step (on rank 0 only in distributed runs) and
    ``close`` when the run ends. A sink formats strings only for what it shows.
    """

    def write(self, record: StepRecord) -> None:
        """Receive the record of one step."""

    def close(self) -> None:
        """Flush and release files or handles; called once at the end of the run."""
