"""SLURM through submitit, in the job and in the submitting command.

``cluster=slurm`` and ``cluster=local`` add :class:`SubmititCallback` to Hydra's callbacks:

- In each job (``on_job_start``), SIGTERM and SIGUSR1 lead to submitit's own checkpoint and
  requeue, as SIGUSR2 (submitit's signal) does. submitit binds only USR2 to its requeue and
  only logs SIGTERM, so a job stopped by ``scancel --signal=TERM`` or ``--signal=USR1`` saved
  its state and then ended FAILED, never requeued. The run's :class:`PreemptionGuard` saves
  the state first and then hands the signal to the handler installed here (its ``chain``).
  On SLURM a TERM or USR1 requeues only while squeue lists the job RUNNING: a plain
  ``scancel`` (and the time limit) also sends SIGTERM, to a job SLURM already lists as
  COMPLETING, and ``scontrol requeue`` would bring a cancelled job back.
- In the submitting command (``on_multirun_start``), a missing ``sbatch``/``srun`` and every
  error that ``sbatch`` answers with become one line naming the fix
  (:mod:`agop_sweep.run.slurm_errors`).

A job records its SLURM id in results.json (:func:`slurm_job_info`), so that aggregate can ask
the queue about a run that stopped (:mod:`agop_sweep.run.slurm_queue`).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agop_sweep.run.preemption import SIGNALS
from agop_sweep.run.slurm_errors import (
    SlurmError,
    check_commands,
    is_slurm_launcher,
    launcher_settings,
    translate_submission_errors,
)
from agop_sweep.run.slurm_queue import squeue_state

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


# -- the job: every preemption signal requeues ------------------------------------------------------


def slurm_job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """This process's SLURM job as submitit names it (``<array job>_<task>`` in an array), when
    it runs as a submitit SLURM job; None elsewhere (an ``salloc`` shell's job is not the run's)."""
    if environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else environ.get("SLURM_JOB_ID") or None


def slurm_job_info() -> dict[str, str]:
    """``{"slurm_job": id}`` for results.json's ``run`` inside a SLURM job, else nothing, so that
    aggregate can ask SLURM whether a run that stopped waits in the queue."""
    job = slurm_job_id()
    return {"slurm_job": job} if job else {}


# The states in which a TERM/USR1 is a preemption or a user's ``scancel --signal``: the job
# runs on. A job that SLURM is ending (cancelled, at its time limit) reads COMPLETING.
REQUEUE_STATES = frozenset({"RUNNING", "SIGNALING"})


class RequeueOnSignal:
    """The handler of every preemption signal inside a submitit job: submitit's checkpoint and
    requeue (its ``SignalHandler.checkpoint_and_try_requeue``, bound to ``usr_sig``), once."""

    def __init__(self, requeue: Handler, usr_sig: int, previous: Mapping[int, Any], cluster: str,
                 state: Callable[[str], str | None] = squeue_state) -> None:
        self.requeue, self.usr_sig, self.previous, self.cluster = requeue, usr_sig, dict(previous), cluster
        self.state = state
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested:  # e.g. the SIGTERM with which SLURM ends the job it just requeued
            log.info("Received %s while the job is being requeued; ignored", name)
            return
        if signum != self.usr_sig:
            reason = self.not_requeued_because()
            if reason:
                log.warning("Received %s: the job is not requeued, because %s; continue the run with "
                            "resume=true", name, reason)
                self._previous(signum, frame)
                return
        self.requested = True
        log.warning("Requeueing the job through submitit (%s)", name)
        self.requeue(signum, frame)

    def not_requeued_because(self) -> str | None:
        """Why a TERM/USR1 must not requeue this job (None: it may)."""
        if self.cluster != "slurm":
            return None
        job = os.environ.get("SLURM_JOB_ID", "")
        state = self.state(job) if job else None
        if state is None:
            return f"squeue cannot tell the state of job {job or '?'} (a cancelled job must not come back)"
        if state not in REQUEUE_STATES:
            return f"SLURM lists job {job} as {state}: it was cancelled or reached its time limit"
        return None

    def _previous(self, signum: int, frame: FrameType | None) -> None:
        """What the signal did before: submitit's log line for TERM, the exit for USR1."""
        handler = self.previous.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler in (signal.SIG_DFL, None):
            raise SystemExit(128 + signum)


def requeue_on_preemption_signals() -> RequeueOnSignal | None:
    """Inside a submitit job: bind every preemption signal (TERM, USR1, USR2) to submitit's
    requeue. Does nothing elsewhere (no submitit handler installed). Returns the handler."""
    try:
        from submitit.core.job_environment import JobEnvironment, SignalHandler
    except ImportError:
        return None
    usr_sig = JobEnvironment._usr_sig()
    requeue = signal.getsignal(usr_sig)
    if not isinstance(getattr(requeue, "__self__", None), SignalHandler):
        return None  # not a submitit job (or not its main thread's handlers)
    assert callable(requeue)
    handler = RequeueOnSignal(requeue, usr_sig, {s: signal.getsignal(s) for s in SIGNALS},
                              requeue.__self__.env.cluster)  # type: ignore[attr-defined]
    for s in {*SIGNALS, usr_sig}:
        signal.signal(s, handler)
    log.debug("Signals %s requeue the job", ", ".join(signal.Signals(s).name for s in SIGNALS))
    return handler


# -- the submitting command ------------------------------------------------------------------------


class SubmititCallback(Callback):
    """Added by the cluster presets (conf/cluster/slurm.yaml, local.yaml)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_slurm_launcher(config):
            return
        from agop_sweep.run.guard import GuardStop

        launcher = launcher_settings(config)
        try:
            check_commands()
        except SlurmError as e:
            raise GuardStop(e) from None  # Hydra turns an Exception in a callback into a warning
        translate_submission_errors(launcher)
        log.info("SLURM: each job logs into %s/<job id>/; this command waits until every job has "
                 "ended, and the jobs run on if it is stopped", str(launcher.get("submitit_folder", ""))
                 .removesuffix("/%j"))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        requeue_on_preemption_signals()
