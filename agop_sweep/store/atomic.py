"""Atomic file writes: a reader sees the old file or the new one, never half of either.

A full disk is reported as :class:`DiskFullError`, one line naming the file, whichever
library was writing: torch's zip writer, for one, raises a RuntimeError whose context is the
OSError(ENOSPC) of the failed write."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from agop_sweep.errors import UserError

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(UserError):
    """The disk filled up while ``path`` was written; the previous version is intact. ``fix``
    says how to carry on once space is freed, which depends on the command that wrote."""

    def __init__(self, path: Path, fix: str = "continue the run with resume=true"):
        super().__init__(f"No space left on the device while writing {path} (the previous version is "
                         f"intact); free some space, then {fix}")
        self.path = path

    def advising(self, fix: str) -> DiskFullError:
        """The same error with another way to carry on (``analyze``: run it again)."""
        return DiskFullError(self.path, fix)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The temporary file lives in the same directory so that the rename is atomic (same
    file system). On any error, including running out of disk, it is removed and the
    previous ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; others on a cluster read these
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if disk_full(e):
            raise DiskFullError(target) from None
        raise


def disk_full(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from or while handling, is a full disk."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, DiskFullError) or (isinstance(cause, OSError) and cause.errno in _NO_SPACE):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> int:
    """Delete temporary files that a killed process left behind; return how many."""
    count = 0
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


@functools.cache
def _umask() -> int:
    """The process's umask, read once: reading it means setting it, which would race with
    threads that create files (tqdm's monitor, trackers)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(file)`` on a temporary binary file, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    data = json.dumps(obj, indent=1, allow_nan=False).encode()
    write_atomic(path, lambda f: f.write(data))
