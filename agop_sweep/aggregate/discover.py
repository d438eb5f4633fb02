"""Finding runs: every directory below the given ones that holds a results.json, read through
:class:`~agop_sweep.store.record.RunRecord`, with the task overrides that tell the runs apart and
its status, ``interrupted`` derived for a running record whose process is gone."""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import shlex
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from agop_sweep.config import RUN_CONTROL_KEYS
from agop_sweep.errors import UserError
from agop_sweep.store.record import FILENAME as RESULTS_FILE
from agop_sweep.store.record import RecordError, RunRecord, Status

log = logging.getLogger(__name__)

# The columns every row of the tables carries, from the run itself (``run`` is its name).
RUN_COLUMNS = ("run", "status", "optimizer", "lr", "seed", "dataset", "width", "depth", "loss")
# A status derived here, never written: results.json says running, but the process is gone.
INTERRUPTED = "interrupted"
# Hours without progress written after which a running record counts as interrupted.
DEFAULT_STALE_HOURS = 24.0
# Directories inside a run that never hold another run.
SKIP_DIRS = {".hydra", "models", "plots", ".submitit", "__pycache__"}


class AggregateError(UserError):
    """Nothing to aggregate, or an option that does not fit the runs (one-line message)."""


@dataclass
class Run:
    """A run: its name (path below the DIR given), directory, record, task overrides (parsed
    values, their text as written, the list as in overrides.yaml) and status (as recorded, or
    :data:`INTERRUPTED`)."""

    name: str
    path: Path
    record: RunRecord
    overrides: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)
    status: str = ""

    def __post_init__(self) -> None:
        self.status = self.status or self.record.status

    def setting(self, key: str) -> Any:
        """The value of an override key in this run: the override itself, else the run's
        resolved config (a config group by its ``name``), else None."""
        if key in self.overrides:
            return self.overrides[key]
        node = self.record.setting(key)
        if isinstance(node, dict):
            node = self.record.setting(f"{key}.name")
        return node if isinstance(node, (bool, int, float, str)) else None

    def base(self) -> dict[str, Any]:
        """The columns every row of this run carries."""
        return {"run": self.name, "status": self.status,
                **{k: self.record.run.get(k) for k in RUN_COLUMNS[2:] if k != "loss"},
                "loss": self.record.loss_name()}

    def resume_command(self) -> str:
        """The command that resumes this run where it stopped, in its own directory, ready to
        paste into a POSIX shell: the run dir quoted as Hydra's override grammar needs (a sweep
        job's name holds ``=`` and ``,``), every argument quoted for the shell."""
        kept = [i for i in self.items if not i.startswith(("resume=", "hydra.run.dir="))]
        args = [*kept, f"hydra.run.dir={hydra_quote(str(self.path.resolve()))}", "resume=true"]
        return "python -m agop_sweep " + " ".join(shlex.quote(a) for a in args)


def _parses_to(value_text: str, expected: str) -> bool:
    try:
        (override,) = _parser().parse_overrides([f"key={value_text}"])
    except HydraException:
        return False
    return override.value() == expected


def hydra_quote(value: str) -> str:
    """``value`` as an override value that Hydra reads back as exactly this string: as it is
    when its parser reads it so, else in double quotes (a backslash before a quote doubled, the
    quote escaped, ``${`` escaped so that OmegaConf does not interpolate it). Raises ValueError
    when neither reads back."""
    if "${" not in value and _parses_to(value, value):
        return value
    inner = re.sub(r'(\\*)"', lambda m: m.group(1) * 2 + '\\"', value)
    inner = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, inner)
    quoted = '"' + inner.replace("${", "\\${") + '"'
    if _parses_to(quoted, value.replace("${", "\\${")):  # OmegaConf reads \${ as a literal ${
        return quoted
    raise ValueError(f"{value!r} cannot be written as a Hydra override value")



def is_missing(value: Any) -> bool:
    """None, NA or NaN: a setting a run does not have."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def value_key(value: Any) -> tuple[int, float, str]:
    """Sort key of a setting: numbers numerically, then text, then missing values."""
    if is_missing(value):
        return (2, 0.0, "")
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


# -- overrides -------------------------------------------------------------------------------------
@cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


def parse_overrides(items: Sequence[Any]) -> dict[str, Any]:
    """``key=value`` task overrides (as in .hydra/overrides.yaml) as a dict, parsed by Hydra's
    own override parser: ``1e-05`` and ``0.00001`` are the float 1e-05, ``true`` a bool.

    ``+key``/``++key`` count as ``key`` and ``group@package`` as ``group``; deletions
    (``~key``) and Hydra's own keys are left out. A value that is not a scalar (a list, a
    dict, null, a sweep) stays the text it was written as.
    """
    return {key: value for key, value, _ in _parsed(items)}


def override_texts(items: Sequence[Any]) -> dict[str, str]:
    """The same keys as :func:`parse_overrides`, each with its value as written (``off``, ``1e-5``)."""
    return {key: text for key, _, text in _parsed(items)}


def _parsed(items: Sequence[Any]) -> Iterator[tuple[str, Any, str]]:
    for item in items or []:
        if not isinstance(item, str):
            continue
        try:
            (override,) = _parser().parse_overrides([item])
        except HydraException as e:
            log.warning("ignoring the override %r: %s", item, e)
            continue
        key = override.key_or_group
        if override.is_delete() or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        text = item.split("=", 1)[1] if "=" in item else ""
        value = None if override.is_sweep_override() else override.value()
        yield key, value if isinstance(value, (bool, int, float, str)) else text, text


def is_run_control(key: str) -> bool:
    """Whether ``key`` (or a dotted prefix of it) only steers how a run executes
    (``agop_sweep.config.RUN_CONTROL_KEYS``: paths, device, plots, ...), not what it computes."""
    return any(key == k or key.startswith(k + ".") for k in RUN_CONTROL_KEYS)


def _read_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    try:
        items = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as e:
        log.warning("ignoring %s: %s", path, e)
        return []
    return [i for i in items if isinstance(i, str)] if isinstance(items, list) else []


# -- interrupted runs --------------------------------------------------------------------------------
def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (another user's counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists and belongs to someone else
        return True
    return True


def last_written(record: RunRecord) -> float | None:
    """When the record was last written (results.json's mtime), else when the run started."""
    if record.path is not None:
        try:
            return record.path.stat().st_mtime
        except OSError:
            pass
    return record.started_at


def derived_status(record: RunRecord, stale_after_hours: float = DEFAULT_STALE_HOURS,
                   now: float | None = None, host: str | None = None) -> str:
    """The record's status, or :data:`INTERRUPTED` for a running record whose process is gone:
    it ran on this host (``host``: default this machine's name) and its pid is not alive, or
    nothing was written for more than ``stale_after_hours`` (before ``now``)."""
    if record.status != Status.RUNNING:
        return record.status
    pid = record.run.get("pid")
    here = socket.gethostname() if host is None else host
    if record.run.get("host") == here and type(pid) is int and not process_alive(pid):
        return INTERRUPTED
    last = last_written(record)
    now = time.time() if now is None else now
    if last is not None and now - last > stale_after_hours * 3600.0:
        return INTERRUPTED
    return record.status


def _add_hydra_config(record: RunRecord, run_dir: Path) -> None:
    """A record without a resolved config gets the one in .hydra/config.yaml, when readable."""
    if record.config:
        return
    path = run_dir / ".hydra" / "config.yaml"
    try:
        loaded = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        loaded = None
    if isinstance(loaded, dict):
        record.set_config(loaded)


# -- walking the directories -----------------------------------------------------------------------
def _run_dirs(top: Path) -> Iterator[Path]:
    """Every directory below ``top`` (itself included) that holds a results.json, in name order."""
    for root, subdirs, files in os.walk(top):
        subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS)
        if RESULTS_FILE in files:
            yield Path(root)


def _unique_name(top: Path, run_dir: Path, names: set[str]) -> str:
    """The run's path below ``top`` (``top``'s own name for ``top`` itself), made unique."""
    rel = run_dir.relative_to(top).as_posix()
    name = top.resolve().name if rel == "." else rel
    if name in names:
        name = f"{top.resolve().name}/{name}"
    while name in names:
        name += "'"
    return name


def find_runs(dirs: Sequence[Path], stale_after_hours: float = DEFAULT_STALE_HOURS,
              now: float | None = None) -> tuple[list[Run], list[str]]:
    """Every run below ``dirs``, once each however the dirs overlap (a run is its resolved
    path), and a warning per results.json skipped. Runs are sorted by their override values
    (numbers numerically), then by name; see :func:`derived_status` for their status.

    Raises AggregateError when a DIR is not a directory.
    """
    runs: list[Run] = []
    skipped: list[str] = []
    names: set[str] = set()
    seen: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            raise AggregateError(f"{d} is not a directory")
        for run_dir in _run_dirs(d):
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            path = run_dir / RESULTS_FILE
            try:
                record = RunRecord.load(path)
            except (OSError, RecordError) as e:
                msg = str(e) if isinstance(e, RecordError) else f"{path} cannot be read: {e.strerror or e}"
                log.warning("%s; skipped", msg)
                skipped.append(msg)
                continue
            if record.nonfinite:  # this tool writes null: another program wrote or edited the file
                shown = ", ".join(list(dict.fromkeys(record.nonfinite))[:3])
                log.warning("%s spells %d non-finite number(s) (%s), which this tool never writes; "
                            "read as missing", path, len(record.nonfinite), shown)
            _add_hydra_config(record, run_dir)
            name = _unique_name(d, run_dir, names)
            names.add(name)
            items = _read_overrides(run_dir)
            runs.append(Run(name, run_dir, record, parse_overrides(items), override_texts(items), items,
                            derived_status(record, stale_after_hours, now)))
    from agop_sweep.run.slurm_queue import mark_queued_runs

    mark_queued_runs(runs)  # a stopped run whose SLURM job waits in the queue is requeued, not interrupted
    columns = override_columns(runs)
    runs.sort(key=lambda r: (tuple(value_key(r.setting(k)) for k in columns), r.name))
    return runs, skipped


def override_columns(runs: Sequence[Run]) -> list[str]:
    """Override keys of any run that do not repeat a standard column, in first-seen order."""
    keys: dict[str, None] = {}
    for r in runs:
        for k in r.overrides:
            if k not in RUN_COLUMNS:
                keys.setdefault(k)
    return list(keys)


def experiment_columns(runs: Sequence[Run]) -> list[str]:
    """The override columns that change the experiment: all but the run-control keys."""
    return [k for k in override_columns(runs) if not is_run_control(k)]
