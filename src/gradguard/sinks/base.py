"""The one interface every sink implements: receive a StepRecord, flush, close."""

from __future__ import annotations

from typing import Literal, Protocol, TypeAlias, runtime_checkable

from gradguard.errors import ConfigError
from gradguard.records import StepRecord

__all__ = ["IfExists", "Sink", "check_if_exists"]

IfExists: TypeAlias = Literal["error", "append", "overwrite"]
"""What a file sink does with a file that already holds data."""
_IF_EXISTS = ("error", "append", "overwrite")


def check_if_exists(value: object, what: str) -> None:
    """Refuse an ``if_exists`` other than the three; ``what`` names the file (a log, a table)."""
    if value not in _IF_EXISTS:
        raise ConfigError(
            f"if_exists must be one of {_IF_EXISTS!r}, got {value!r}; use 'append' to "
            f"continue {what} after a restart."
        )


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
