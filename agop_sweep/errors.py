"""Errors that a user can fix, reported as one line without a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

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


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (results.json's ``error``, docs/results.md: results.json)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


@contextlib.contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """For a command's ``main``: a :class:`UserError` (a results.json that cannot be read
    included) or an ``OSError`` ends the command with ``<prog>: error: <one line>`` on stderr
    and exit code 1, without a traceback."""
    try:
        yield
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
