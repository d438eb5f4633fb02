"""A directory's lock: ``flock`` on ``<dir>/.lock``, held through an open file descriptor.

The kernel drops the lock when the descriptor closes, also when the process dies however it
dies (kill -9, a node lost), so a lock never outlives its holder and needs no cleanup. A run
dir is locked by the job that trains it (:mod:`agop_sweep.store.rundir`), a sweep dir by the
command that launches its jobs (:mod:`agop_sweep.run.guard`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"


def acquire(directory: Path) -> int:
    """Create ``directory`` if needed and lock it; returns the descriptor that holds the lock
    (close it to release). Raises ``BlockingIOError`` while another descriptor holds it, in
    this process or another, and ``OSError`` (ELOOP) where ``.lock`` is a symbolic link."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd
