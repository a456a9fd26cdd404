"""The errors a user can cause: every module raises these, so they sit below every module (no imports)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad user input (config, files, data, genotypes). The CLI prints ``error: <message>``, exit 2."""


class ConfigError(UserError):
    """A config file or override that is not valid."""
