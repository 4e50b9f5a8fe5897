"""The ``gradguard`` command line: ``inspect`` and ``report`` (see ``gradguard --help``)."""

from gradguard.cli.app import EXIT_NONFINITE, EXIT_OK, EXIT_USAGE, app, main

__all__ = ["EXIT_NONFINITE", "EXIT_OK", "EXIT_USAGE", "app", "main"]
