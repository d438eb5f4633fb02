"""The submitting command's errors with the SLURM launcher, each as one line naming the fix:
a missing ``sbatch``/``srun``, every error that ``sbatch`` answers with (an invalid partition,
a request no node can satisfy, the controller down), and a job that ended without a result.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from agop_sweep.errors import UserError


class SlurmError(UserError):
    """A sweep SLURM cannot take as configured (one line naming the fix)."""


# -- at submission ----------------------------------------------------------------------------------


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


# -- after submission -------------------------------------------------------------------------------


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
