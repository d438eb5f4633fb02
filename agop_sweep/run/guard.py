"""A Hydra callback that checks where a command will write before Hydra creates anything.

Hydra creates the output directory and opens the run log inside its own code, before the
app runs, so an unwritable location would end in a traceback from Hydra. ``on_run_start``
and ``on_multirun_start`` run before that: they check the location and stop with one line.
A multirun that sweeps a run-control key (left out of job directory names) is refused too,
since its jobs would share one directory; so are a run or sweep dir inside another run's dir
(the runs' files would mix), and a second sweep into a sweep dir, whose multirun.yaml Hydra
would overwrite, unless it continues that sweep (``resume=true``, the same overrides). The
command holds its sweep dir's lock until the sweep ends, so a second command launching into
the same dir at the same time is refused rather than mixed in.

Hydra turns an ``Exception`` raised in a callback into a warning and carries on, so the stop
is a :class:`GuardStop` (a ``BaseException``), which ``agop_sweep.run.app.main`` reports as one
line with exit code 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from agop_sweep.config import is_run_control_key
from agop_sweep.errors import UserError
from agop_sweep.store import lock
from agop_sweep.store.record import FILENAME as RESULTS_FILE
from agop_sweep.store.record import RecordError, RunRecord

MULTIRUN_FILE = "multirun.yaml"  # what Hydra's basic sweeper writes into the sweep dir


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


def enclosing_run(path: Path, include_self: bool = False) -> Path | None:
    """The nearest directory above ``path`` (or ``path`` itself) that holds a run: an
    agop_sweep results.json. A results.json of another program's is no run of ours."""
    path = Path(os.path.abspath(path))  # lexically: "run/../x" is not inside "run"
    for parent in [path, *path.parents] if include_self else path.parents:
        if (parent / RESULTS_FILE).is_file():
            try:
                RunRecord.in_dir(parent)
            except (OSError, RecordError):
                continue
            return parent
    return None


def check_not_in_a_run(path: Path, what: str, key: str, include_self: bool = False) -> None:
    """Refuse ``path`` inside another run's dir: its files would mix with that run's, and
    commands that walk runs would read the two as one."""
    run = enclosing_run(path, include_self)
    if run is not None:
        inside = run != Path(os.path.abspath(path))
        where = f"lies inside the run directory {run}" if inside else "holds a run"
        raise OutputLocationError(f"{what[0].upper()}{what[1:]} {path} {where}, whose files it would mix "
                                  f"with; choose a {key} outside any run's directory")


def experiment_overrides(overrides: list[str]) -> dict[str, str]:
    """A command line's overrides by key, run-control keys left out, a sweep's values sorted:
    what makes two sweeps the same experiment."""
    out = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group.lstrip("+~")
        if not is_run_control_key(key):
            if o.is_sweep_override():
                out[key] = ",".join(sorted(o.sweep_string_iterator()))
            else:
                out[key] = o.get_value_element_as_str()
    return out


def check_same_sweep(sweep_dir: Path, overrides: list[str], resume: bool) -> None:
    """Hydra's basic sweeper writes multirun.yaml over an earlier one: only the sweep that
    wrote it, continued (``resume=true``, the same overrides but run-control keys), may."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        return
    try:
        earlier = experiment_overrides(list(OmegaConf.load(path).hydra.overrides.task))
    except Exception as e:
        raise OutputLocationError(f"{path} cannot be read ({type(e).__name__}); choose another "
                                  "hydra.sweep.dir") from None
    now = experiment_overrides(overrides)
    shown = " ".join(f"{k}={v}" for k, v in sorted(earlier.items())) or "no overrides"
    if not resume:
        raise OutputLocationError(f"{sweep_dir} already holds a sweep ({shown}); continue it with the same "
                                  "overrides and resume=true, or choose another hydra.sweep.dir")
    if now != earlier:
        differ = sorted(k for k in set(earlier) | set(now) if earlier.get(k) != now.get(k))
        raise OutputLocationError(f"resume=true but {sweep_dir} holds another sweep ({shown}; this one "
                                  f"differs in {', '.join(differ)}); use its overrides or another "
                                  "hydra.sweep.dir")


class OutputGuard(Callback):
    def __init__(self) -> None:
        self._sweep_lock: int | None = None  # the descriptor holding the sweep dir's lock

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _stopping():
            run_dir = Path(str(config.hydra.run.dir))
            check_writable(run_dir, "the run directory")
            check_not_in_a_run(run_dir, "the run directory", "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _stopping():
            sweep_dir = Path(str(config.hydra.sweep.dir))
            check_writable(sweep_dir, "the sweep directory")
            check_not_in_a_run(sweep_dir, "the sweep directory", "hydra.sweep.dir", include_self=True)
            basic = "BasicSweeper" in str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
            task = list(config.hydra.overrides.task)
            resume = bool(OmegaConf.select(config, "resume", default=False))
            if basic:
                check_same_sweep(sweep_dir, task, resume)
            swept = swept_run_control_keys(task)
            if swept:
                raise OutputLocationError(
                    f"This sweep varies {', '.join(swept)}, which job directory names leave out "
                    "(run-control keys), so its jobs would share one directory; run one sweep per value"
                )
            self._lock_sweep(sweep_dir)
            try:
                if basic:  # a command that ended between the check and the lock left its multirun.yaml
                    check_same_sweep(sweep_dir, task, resume)
            except BaseException:
                self._unlock_sweep()
                raise

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._unlock_sweep()

    def _unlock_sweep(self) -> None:
        if self._sweep_lock is not None:
            os.close(self._sweep_lock)
            self._sweep_lock = None

    def _lock_sweep(self, sweep_dir: Path) -> None:
        """Hold the sweep dir's lock until the sweep ends (or this process does): a second
        command launching into the same dir meanwhile would overwrite multirun.yaml and run
        jobs beside this one's."""
        try:
            self._sweep_lock = lock.acquire(sweep_dir)
        except BlockingIOError:
            raise OutputLocationError(f"{sweep_dir} is in use by another command launching a sweep "
                                      "into it; wait until that one ends, or choose another "
                                      "hydra.sweep.dir") from None


@contextlib.contextmanager
def _stopping() -> Iterator[None]:
    try:
        yield
    except UserError as e:
        raise GuardStop(e) from None
    except OSError as e:  # a path the file system refuses to look up (a name over 255 bytes)
        hint = "choose a shorter path" if e.errno == errno.ENAMETOOLONG else "choose another location"
        error = OutputLocationError(f"Cannot use the output location {e.filename}: {e.strerror or e}; {hint}")
        raise GuardStop(error) from None
