"""Where step records go: console, JSONL, CSV, TensorBoard."""

from gradguard.sinks.base import Sink

__all__ = ["Sink"]
