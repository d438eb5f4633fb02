"""SLURM's queue, asked with squeue, else sacct: the state of a job (:func:`squeue_state`, for
a job deciding whether a signal may requeue it), and :func:`mark_queued_runs` (called by
aggregate) for runs that recorded a SLURM job (``run.slurm_job`` in results.json) and whose
record says running. Neither says anything or changes anything when SLURM does not answer.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

# Seconds a squeue/sacct call may take before it counts as no answer.
QUERY_TIMEOUT_S = 15.0

# A run whose job SLURM lists in one of these waits to run again (requeued, or held).
QUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
# ... and in one of these runs (perhaps on another node, before it has written anything).
LIVE_STATES = frozenset({"RUNNING", "CONFIGURING", "SUSPENDED", "SIGNALING", "RESIZING", "STAGE_OUT"})
REQUEUED = "requeued"


class _Record(Protocol):
    @property
    def run(self) -> Mapping[str, Any]: ...


class _Run(Protocol):
    status: str

    @property
    def record(self) -> _Record: ...


def mark_queued_runs(runs: Sequence[_Run], statuses: Iterable[str] = ("running", "interrupted")) -> None:
    """Set the status of each run in ``statuses`` whose SLURM job waits in the queue to
    :data:`REQUEUED`, and to ``running`` when the job runs; the others keep theirs (also when
    SLURM cannot be asked)."""
    wanted = set(statuses)
    jobs = {id(r): r.record.run.get("slurm_job") for r in runs if r.status in wanted}
    jobs = {k: j for k, j in jobs.items() if isinstance(j, str) and re.fullmatch(r"\d+(_\d+)?", j)}
    if not jobs:
        return
    states = queue_states(set(jobs.values()))
    for r in runs:
        state = states.get(jobs.get(id(r), ""))
        if state in QUEUED_STATES:
            r.status = REQUEUED
        elif state in LIVE_STATES:
            r.status = "running"


def queue_states(job_ids: set[str]) -> dict[str, str]:
    """SLURM's state of each job (``123`` or ``123_4``) that squeue lists, else that sacct
    knows; the jobs neither answers for (or both missing) are left out, silently."""
    states = _squeue(job_ids)
    missing = job_ids - set(states)
    if missing:
        states.update(_sacct(missing))
    return states


def squeue_state(job_id: str) -> str | None:
    """SLURM's state of ``job_id`` (``RUNNING``, ``COMPLETING``, ...) per squeue; None when
    squeue is missing, fails or does not list it."""
    out = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
    states = [line.strip().upper() for line in (out or "").splitlines() if line.strip()]
    return states[0] if states else None


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("%s: %s", command[0], e)
        return None


def _expand(job_field: str) -> Iterator[str]:
    """``12``, ``12_3`` or a pending array's ``12_[3-5,7]``: every job id it stands for."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(%\d+)?\]", job_field)
    if m is None:
        yield job_field
        return
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        for i in range(int(lo), int(hi or lo) + 1):
            yield f"{m.group(1)}_{i}"


def _squeue(job_ids: set[str]) -> dict[str, str]:
    """squeue per array job (an unknown id fails the whole call): ``-r`` one line per task."""
    states: dict[str, str] = {}
    for base in sorted({j.split("_")[0] for j in job_ids}):
        out = _run(["squeue", "-h", "-r", "-j", base, "-o", "%i|%T"])
        if out is None:
            if shutil.which("squeue") is None:
                break
            continue
        for line in out.splitlines():
            field, _, state = line.strip().partition("|")
            for job in _expand(field.strip()):
                if job in job_ids and state.strip():
                    states[job] = state.strip().upper()
    return states


def _sacct(job_ids: set[str]) -> dict[str, str]:
    """sacct as submitit's SlurmInfoWatcher calls it, read with its parser; ``CANCELLED by 12``
    becomes ``CANCELLED``."""
    try:
        from submitit.slurm.slurm import SlurmInfoWatcher
    except ImportError:
        return {}
    command = ["sacct", "-o", "JobID,State,NodeList", "--parsable2"]
    for base in sorted({j.split("_")[0] for j in job_ids}):
        command += ["-j", base]
    out = _run(command)
    if out is None:
        return {}
    try:
        info = SlurmInfoWatcher().read_info(out)
    except Exception as e:  # a format this submitit cannot read: no answer
        log.debug("sacct output not understood: %s", e)
        return {}
    return {j: str(info[j].get("State", "")).split()[0].upper()
            for j in job_ids if j in info and str(info[j].get("State", "")).strip()}
