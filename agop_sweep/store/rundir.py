"""A run directory's lifecycle: claim it (refuse, resume or start), hold it, record a failure.

The rule: an existing run's files stay byte-identical unless this command is the one
continuing it. So nothing is written into a directory before it is claimed: Hydra's own
``.hydra/`` output is switched off (``hydra.output_subdir: null``) and the app writes the
same three files itself once the directory is its own (:func:`write_hydra_files`), the run
log is opened lazily, and a refusal reads files only. A claimed directory is locked
(``flock`` on ``.lock``) for the life of the job, so two processes (two jobs of a sweep, or
two ``resume=true`` commands) never write one run at once; the lock dies with the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agop_sweep.config import upgrade_saved_config
from agop_sweep.errors import UserError
from agop_sweep.store import checkpoint as ckpt
from agop_sweep.store import lock
from agop_sweep.store.atomic import remove_stale_temporaries, write_atomic
from agop_sweep.store.record import FILENAME as RESULTS_FILE
from agop_sweep.store.record import RecordError, RunRecord, Status
from agop_sweep.store.state import STATE_FILE, ResumeState, check_same_experiment, load_state

log = logging.getLogger(__name__)

HYDRA_DIR = ".hydra"


class RunDirError(UserError):
    """The run directory cannot be used: taken, locked or not writable (one-line message)."""


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run worth keeping: a resumable state, or a results.json
    with at least one epoch. A record of a job that failed before training holds nothing."""
    if (run_dir / STATE_FILE).exists():
        return True
    path = run_dir / RESULTS_FILE
    if not path.exists():
        return False
    try:
        record = RunRecord.load(path)
    except (OSError, RecordError):
        return True  # unreadable or crafted: not ours to judge, so not ours to overwrite
    return not record.failed_before_training


@dataclass
class Claim:
    """A claimed run dir: the state to continue from (None: start at epoch 0), or the record
    of a run that already ended, with or without its state.pt (nothing to do)."""

    run_dir: Path
    state: ResumeState | None
    finished: RunRecord | None = None


def check_claimable(run_dir: Path, config: dict[str, Any], resume: bool) -> Claim:
    """Read-only: what this command may do in ``run_dir``; raises :class:`RunDirError` when the
    directory holds a run it must not touch."""
    check_no_symlinks(run_dir)  # first: the files read below may be links into another run
    if not resume:
        if holds_run(run_dir):
            raise RunDirError(f"{run_dir} already holds a run; pass resume=true to continue it, "
                              "or choose another hydra.run.dir")
        return Claim(run_dir, None)
    state = load_state(run_dir)
    if state is not None:
        check_same_experiment(upgrade_saved_config(state.config), config)
        record = RunRecord(state.results)
        if record.status in (Status.COMPLETED, Status.DIVERGED):
            return Claim(run_dir, None, finished=record)
        return Claim(run_dir, state)
    if holds_run(run_dir):
        return _without_state(run_dir, config)
    log.info("resume=true but %s holds no saved state; starting afresh", run_dir)
    return Claim(run_dir, None)


def _without_state(run_dir: Path, config: dict[str, Any]) -> Claim:
    """resume=true where a run's results.json has epochs but there is no state.pt: the disk
    filled up before the first one was written, or someone deleted it (a truncated one, or
    to save space). A finished run has nothing left to do; an unfinished run of the same
    experiment restarts in place from epoch 0, and since training is deterministic it
    rewrites its files with the same numbers. A results.json that cannot be read is not
    this tool's to overwrite."""
    try:
        record = RunRecord.in_dir(run_dir)
    except (OSError, RecordError) as e:
        raise RunDirError(f"resume=true but {run_dir} holds no {STATE_FILE}, and its {RESULTS_FILE} cannot "
                          f"be read ({e}); choose another hydra.run.dir") from None
    if record.status in (Status.COMPLETED, Status.DIVERGED):
        return Claim(run_dir, None, finished=record)
    if record.config:
        check_same_experiment(upgrade_saved_config(dict(record.config)), config)
    log.warning("%s holds no %s to continue from (the disk may have filled up before it was written); "
                "restarting the run from epoch 0 in place", run_dir, STATE_FILE)
    return Claim(run_dir, None)


@contextlib.contextmanager
def claim(run_dir: Path, config: dict[str, Any], resume: bool) -> Iterator[Claim]:
    """Claim ``run_dir`` for this process (see the module docstring) and yield what to resume."""
    check_claimable(run_dir, config, resume)
    with locked(run_dir):
        # Another job may have started here between the check and the lock.
        claimed = check_claimable(run_dir, config, resume)
        for d in (run_dir, run_dir / ckpt.MODELS_DIR, run_dir / "plots"):
            if d.is_dir() and (n := remove_stale_temporaries(d)) > 0:
                log.info("Removed %d temporary file(s) a killed run left in %s", n, d)
        yield claimed


# The directories the app writes into below a run dir (checkpoints, figures, Hydra's files,
# TensorBoard's event files).
OWN_SUBDIRS = (ckpt.MODELS_DIR, "plots", HYDRA_DIR, "tensorboard")


def planted_symlink(run_dir: Path) -> Path | None:
    """The first symbolic link among ``run_dir``'s entries or below the directories the app
    writes into, else None. The app creates none, so one was planted, and writing through it
    (a ``models/`` linked to another run's) would change files elsewhere. ``run_dir`` itself
    may be a link: that is where the user chose to put the run."""
    if not run_dir.is_dir():
        return None
    for entry in sorted(run_dir.iterdir()):
        if entry.is_symlink():
            return entry
    for sub in OWN_SUBDIRS:
        for root, dirs, files in os.walk(run_dir / sub):  # does not follow links
            for name in sorted([*dirs, *files]):
                if (Path(root) / name).is_symlink():
                    return Path(root) / name
    return None


def check_no_symlinks(run_dir: Path) -> None:
    """Raise :class:`RunDirError` naming a symbolic link the run would write through."""
    link = planted_symlink(run_dir)
    if link is not None:
        raise RunDirError(f"{link} is a symbolic link (to {os.readlink(link)}) that no run created; writing "
                          "through it would change files elsewhere: remove it or choose another directory")


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock (refused while another process holds it, or while the directory
    holds a symbolic link the run would write through)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_no_symlinks(run_dir)  # first: .lock itself may be a link
    try:
        fd = lock.acquire(run_dir)
    except BlockingIOError:
        raise RunDirError(f"{run_dir} is in use by another process (another job of this sweep, or "
                          "a run started twice); give each run its own directory") from None
    try:
        yield
    finally:
        os.close(fd)  # releases the lock; joblib's workers outlive the job


def write_hydra_files(run_dir: Path, task_config: Any, hydra_config: Any, overrides: list[str]) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` as Hydra writes them
    (``hydra_config``: the node with the ``hydra`` key), atomically, into a claimed directory."""
    from omegaconf import OmegaConf

    out = run_dir / HYDRA_DIR
    for name, node in (("config.yaml", task_config), ("hydra.yaml", hydra_config),
                       ("overrides.yaml", overrides)):
        text = OmegaConf.to_yaml(node if OmegaConf.is_config(node) else OmegaConf.create(node))
        write_atomic(out / name, lambda f, text=text: f.write(text.encode()))


def record_start_failure(run_dir: Path, config: dict[str, Any], error: str) -> bool:
    """A results.json with status failed for a job that stopped before training, so that a
    sweep accounts for it; only where no run lives. Returns whether it was written."""
    if holds_run(run_dir):
        return False
    record = RunRecord.failed_at_start(config, error, run_dir / RESULTS_FILE)
    try:
        with locked(run_dir):
            if holds_run(run_dir):
                return False
            record.save()
    except (OSError, UserError) as e:
        log.debug("Could not record the failure in %s: %s", run_dir, e)
        return False
    return True
