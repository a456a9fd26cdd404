"""The errors a user can cause, and the way a study ends with failed runs: every module raises these, so they sit
below every module (no imports)."""

from __future__ import annotations

import sys


class UserError(ValueError):
    """Bad user input (config, files, data, genotypes). The CLI prints ``error: <message>``, exit 2."""


class ConfigError(UserError):
    """A config file or override that is not valid."""


class RunsFailed(Exception):
    """Some runs of a study failed; the others finished and the report lists what is missing (exit 1)."""


def library_module(module: str, tool: str) -> int:
    """What ``python -m nas.<module>`` does for a module behind a tool: it says which command to run (exit 2)."""
    print(f"error: {module} is a library module, not a command; run: python -m nas {tool} --help", file=sys.stderr)
    return 2
