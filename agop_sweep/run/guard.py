"""A Hydra callback that checks where a command will write before Hydra creates anything.

Hydra creates the output directory and opens the run log inside its own code, before the
app runs, so an unwritable location would end in a traceback from Hydra. ``on_run_start``
and ``on_multirun_start`` run before that: they check the location and stop with one line.
A multirun that sweeps a run-control key (left out of job directory names) is refused too,
since its jobs would share one directory.

Hydra turns an ``Exception`` raised in a callback into a warning and carries on, so the stop
is a :class:`GuardStop` (a ``BaseException``), which ``agop_sweep.run.app.main`` reports as one
line with exit code 1.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agop_sweep.config import is_run_control_key
from agop_sweep.errors import UserError


class OutputLocationError(UserError):
    """The output directory cannot be created or written (one-line message)."""


class GuardStop(BaseException):
    """Carries a :class:`UserError` out of a Hydra callback, past Hydra's own handler."""

    def __init__(self, error: UserError):
        super().__init__(str(error))
        self.error = error


def check_writable(path: Path, what: str) -> None:
    """Raise OutputLocationError unless ``path`` is a writable directory or can be created:
    its nearest existing ancestor must be a writable directory."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputLocationError(f"Cannot create {what} {path}: {probe} is a file, not a directory; "
                                  "choose another location")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputLocationError(f"Cannot write {what} {path}: {probe} is not writable; "
                                  "choose another location or fix its permissions")
    if probe == path:
        for sub in ("models", "plots", ".hydra"):
            inner = path / sub
            if inner.exists() and not (inner.is_dir() and os.access(inner, os.W_OK | os.X_OK)):
                raise OutputLocationError(f"Cannot write {what} {path}: {inner} is not a writable "
                                          "directory; fix its permissions or choose another location")


def swept_run_control_keys(overrides: list[str]) -> list[str]:
    """Run-control keys that a multirun's command line sweeps over more than one value."""
    keys = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group.lstrip("+~")
        if is_run_control_key(key) and o.is_sweep_override() and len(list(o.sweep_string_iterator())) > 1:
            keys.append(key)
    return keys


class OutputGuard(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _stopping():
            check_writable(Path(str(config.hydra.run.dir)), "the run directory")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _stopping():
            check_writable(Path(str(config.hydra.sweep.dir)), "the sweep directory")
            swept = swept_run_control_keys(list(config.hydra.overrides.task))
            if swept:
                raise OutputLocationError(
                    f"This sweep varies {', '.join(swept)}, which job directory names leave out "
                    "(run-control keys), so its jobs would share one directory; run one sweep per value"
                )


@contextlib.contextmanager
def _stopping() -> Iterator[None]:
    try:
        yield
    except UserError as e:
        raise GuardStop(e) from None
