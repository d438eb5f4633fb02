"""SLURM through submitit: every preemption signal requeues, submission errors are one line,
and a run whose job waits in the queue reads as requeued.

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
  error that ``sbatch`` answers with (an invalid partition, a request no node can satisfy,
  the controller down) become one line naming the fix, instead of submitit's traceback.

:func:`mark_queued_runs` (called by aggregate) asks squeue, else sacct (read with submitit's
parser), about runs that recorded a SLURM job (``run.slurm_job`` in results.json) and whose
record says running; it says nothing and changes nothing when neither answers.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any, Protocol

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from agop_sweep.errors import UserError
from agop_sweep.run.preemption import SIGNALS

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]

# Seconds a squeue/sacct call may take before it counts as no answer.
QUERY_TIMEOUT_S = 15.0


class SlurmError(UserError):
    """A sweep SLURM cannot take as configured (one line naming the fix)."""


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


def squeue_state(job_id: str) -> str | None:
    """SLURM's state of ``job_id`` (``RUNNING``, ``COMPLETING``, ...) per squeue; None when
    squeue is missing, fails or does not list it."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                             timeout=QUERY_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = [line.strip().upper() for line in out.splitlines() if line.strip()]
    return states[0] if states else None


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


# -- the submitting command: one line per error ---------------------------------------------------


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


def is_slurm_launcher(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith("SlurmLauncher")


def launcher_settings(config: DictConfig) -> dict[str, Any]:
    """``hydra.launcher`` resolved where it can be (the keys the messages name)."""
    node = OmegaConf.select(config, "hydra.launcher")
    out: dict[str, Any] = {}
    for key in node or {}:
        with contextlib.suppress(Exception):
            out[str(key)] = OmegaConf.select(node, str(key))
    return out


def check_commands(which: Callable[[str], str | None] = shutil.which) -> None:
    """Raise SlurmError unless ``sbatch`` and ``srun`` (which submitit looks for) are on PATH."""
    missing = [c for c in ("sbatch", "srun") if which(c) is None]
    if missing:
        raise SlurmError(
            f"cluster=slurm submits with SLURM's sbatch and srun, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH: run the sweep on a SLURM login node "
            "(or load the site's slurm module), or use cluster=local or cluster=joblib on this machine")


def translate_submission_errors(launcher: Mapping[str, Any]) -> None:
    """Make submitit's ``sbatch`` call raise a one-line SlurmError. It prints sbatch's stderr
    itself before raising, so its stderr is held back during the call (and passed on when
    the call succeeds)."""
    from submitit.slurm.slurm import SlurmExecutor

    original = getattr(SlurmExecutor._submit_command, "__wrapped__", SlurmExecutor._submit_command)

    @functools.wraps(original)
    def submit(self: Any, command: str) -> Any:
        held = io.StringIO()
        try:
            with contextlib.redirect_stderr(held):
                job = original(self, command)
        except Exception as e:
            line = submission_problem(e, launcher)
            if line is None:
                sys.stderr.write(held.getvalue())
                raise
            raise SlurmError(line) from None
        sys.stderr.write(held.getvalue())
        return job

    SlurmExecutor._submit_command = submit  # type: ignore[method-assign]


def sbatch_fixes(s: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """sbatch's messages (slurm_strerror's and sbatch's own) and the fix for each, given the
    launcher settings ``s``. The first that occurs in sbatch's stderr wins, so the specific
    lines come before "Requested node configuration", which follows them."""
    part = f"partition {s['partition']}" if s.get("partition") else "the default partition"
    sinfo = f"sinfo -p {s['partition']}" if s.get("partition") else "sinfo"
    mine = "sacctmgr show assoc user=$USER format"
    return (
        ("Unable to contact slurm controller",
         "the SLURM controller does not answer (`scontrol ping` tells): submit again once it does, "
         "or ask the site's admins"),
        ("Invalid partition name",
         f"set hydra.launcher.partition to a partition that `sinfo -s` lists (now: {s['partition']})"
         if s.get("partition") else
         "this cluster has no default partition: set hydra.launcher.partition to one that `sinfo -s` lists"),
        ("Memory specification can not be satisfied",
         f"lower hydra.launcher.mem_gb (now {s.get('mem_gb')}) to what the nodes of {part} have "
         f"(`{sinfo} -o '%P %m'`, in MB)"),
        ("CPU count per node can not be satisfied",
         f"lower hydra.launcher.cpus_per_task (now {s.get('cpus_per_task')}) to what the nodes of {part} "
         f"have (`{sinfo} -o '%P %c'`)"),
        ("Invalid generic resource",
         f"{part} has no GPUs (gres): set hydra.launcher.gpus_per_node=0, or choose a GPU partition "
         "(`sinfo -o '%P %G'`)"),
        ("Requested node configuration is not available",
         f"no node of {part} has gpus_per_node={s.get('gpus_per_node')}, cpus_per_task="
         f"{s.get('cpus_per_task')} and mem_gb={s.get('mem_gb')}: set hydra.launcher.gpus_per_node, "
         f"cpus_per_task and mem_gb within what `{sinfo} -o '%P %c %m %G'` shows (gpus_per_node=0 on "
         "a CPU partition)"),
        ("time limit",
         f"lower hydra.launcher.timeout_min (now {s.get('timeout_min')}) below the limit of {part} "
         f"(`{sinfo} -o '%P %l'`)"),
        ("Invalid account",
         f"set hydra.launcher.account to one of yours (`{mine}=account,partition`)"),
        ("Invalid qos",
         f"set hydra.launcher.qos to one of yours (`{mine}=qos`), or leave it null"),
        ("Invalid feature specification",
         f"hydra.launcher.constraint={s.get('constraint')!r} names a feature no node has "
         "(`sinfo -o '%P %f'`)"),
        ("accounting/QOS policy",
         "the request exceeds your account's limits: ask for fewer resources, a shorter "
         "hydra.launcher.timeout_min or a lower array_parallelism"),
        ("not permitted to use this partition",
         f"you may not use {part}: set hydra.launcher.partition to one you may use"),
    )


def _sbatch_message(stderr: str) -> str:
    """sbatch's own reason: its last ``error:`` line without the prefixes."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln] or lines or ["(no message)"]
    text = errors[-1].split("error:", 1)[-1].strip()
    return re.sub(r"^Batch job submission failed:\s*", "", text)


def submission_problem(error: BaseException, launcher: Mapping[str, Any]) -> str | None:
    """The one line for an error of submitit's ``sbatch`` call, None for anything else."""
    if isinstance(error, FileNotFoundError) and error.filename == "sbatch":
        try:
            check_commands(lambda c: None if c == "sbatch" else c)
        except SlurmError as e:
            return str(e)
    if isinstance(error, OSError) and error.filename == "sbatch":
        return f"Cannot run SLURM's sbatch: {error.strerror or error}; check the site's slurm installation"
    if isinstance(error, OSError):
        where = f"{error.filename}: " if error.filename else ""
        return f"Cannot write the sweep's submitit folder: {where}{error.strerror or error}"
    stderr = _sbatch_stderr(error)
    if stderr is None:
        return None
    reason = _sbatch_message(stderr)
    fix = next((f for text, f in sbatch_fixes(launcher) if text.lower() in stderr.lower()),
               "check the hydra.launcher settings (list them with `python -m agop_sweep cluster=slurm "
               "--cfg hydra -p hydra.launcher`, without -m)")
    return f"sbatch refused the sweep: {reason}: {fix}"


def _sbatch_stderr(error: BaseException) -> str | None:
    """sbatch's stderr when ``error`` is submitit's report of a failed sbatch call."""
    cause = error.__cause__
    if isinstance(cause, subprocess.CalledProcessError) and "sbatch" in str(cause.cmd):
        return str(cause.stderr or error)
    if isinstance(error, subprocess.CalledProcessError) and "sbatch" in str(error.cmd):
        return str(error.stderr or "")
    text = str(error)
    return text if "sbatch: error" in text else None


# -- the submitting command: errors after submission -----------------------------------------------


def launch_problem(error: BaseException) -> str | None:
    """The one line for an error of the SLURM launcher (or of Hydra's command line) that
    ``agop_sweep.run.app`` reports without a traceback; None for anything else."""
    text = str(error)
    if isinstance(error, ValueError) and text.startswith("Only one of --run, --multirun, --cfg"):
        return ("--cfg and --info print the config and run nothing, so they do not combine with -m: "
                "drop -m (and give each key one value), e.g. python -m agop_sweep cluster=slurm --cfg hydra "
                "-p hydra.launcher")
    try:
        from submitit.core.utils import FailedJobError, UncompletedJobError
    except ImportError:
        return None
    if not isinstance(error, UncompletedJobError):
        return None
    sbatch = submission_problem(error, {})
    if sbatch is not None:
        return sbatch
    if isinstance(error, FailedJobError):
        return _failed_job(text)
    return _uncompleted_job(text)


def _uncompleted_job(text: str) -> str | None:
    """``Job 12_0 (task: 0) with path <sweep>/.submitit/12_0/12_0_0_result.pkl / has not produced
    any output (state: FAILED)`` on one line, with its log and how to continue."""
    m = re.search(r"Job (\S+) \(task: (\d+)\) with path (\S+)_result\.pkl\s+has not produced any output "
                  r"\(state: ([^)]*)\)", text)
    if m is None:
        return None
    job, _, stem, state = m.groups()
    sweep = stem.split("/.submitit/")[0] if "/.submitit/" in stem else None
    again = (f"submit the same command again with hydra.sweep.dir={sweep} (the cluster presets resume "
             "every run)"
             if sweep else "submit the same command again into the same hydra.sweep.dir")
    return f"Job {job} of the sweep ended without a result (state {state}); its log: {stem}_log.err; {again}"


def _failed_job(text: str) -> str | None:
    """submitit's ``Job (task=0) failed during processing with trace: ...`` on one line: the
    trace's last line and the job's log."""
    if "failed during processing" not in text:
        return None
    trace = text.split("----------------------")
    lines = [ln.strip() for ln in trace[1].splitlines() if ln.strip()] if len(trace) > 1 else []
    last = lines[-1] if lines else "see its log"
    paths = re.findall(r"^\s+- (\S+)$", text, flags=re.M)
    timed_out = "timed-out too many times" in last
    hint = "; raise hydra.launcher.timeout_min or max_num_timeout" if timed_out else ""
    return f"A job of the sweep failed: {last}{hint}; its log: {paths[0] if paths else '?'}"


# -- aggregate: runs that wait in the queue --------------------------------------------------------

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
