"""Errors that a user can fix, reported as one line without a traceback."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """A problem with the input (config, data, files) that the user can fix.

    Hydra prints a ``CompactHydraException`` as its message alone (no traceback) and
    exits with code 1, so every subclass must carry a complete one-line message that
    names the problem and the fix.
    """


class ConfigError(UserError):
    """A config value of the right type but outside its legal range."""


class DataError(UserError):
    """Missing, corrupt or unusable input data."""
