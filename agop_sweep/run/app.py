"""The Hydra application: ``python -m agop_sweep`` and the ``agop-sweep`` console script.

One job: validate the config, claim the run directory, place the job on a device, train.
Every error a user can fix ends the job with one line and exit code 1; a job that fails
before training leaves a results.json with status ``failed`` where no run lived, so that a
sweep accounts for every job it launched.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agop_sweep.config import check_precision, register_configs, to_container, validate
from agop_sweep.errors import UserError, one_line
from agop_sweep.run.device import available_cores
from hydra_plugins.agop_optuna_sweeper import SweeperError

if TYPE_CHECKING:
    from agop_sweep.store.record import RunRecord

log = logging.getLogger(__name__)

register_configs()


def _parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine: joblib's ``n_jobs`` or all of
    submitit_local's, capped by the jobs the sweep has (callbacks.SweepSize); 1 for a single
    run, the basic launcher (one job after another) and SLURM (one allocation per job)."""
    from agop_sweep.run.callbacks import SWEEP_JOBS_ENV

    hc = HydraConfig.get()
    if hc.mode.name != "MULTIRUN":
        return 1
    launcher = str(OmegaConf.select(hc, "launcher._target_", default=""))
    sweep_jobs = int(os.environ.get(SWEEP_JOBS_ENV, "0")) or None
    if "joblib" in launcher.lower():
        n_jobs = int(OmegaConf.select(hc, "launcher.n_jobs", default=1))
        if n_jobs < 0:  # joblib: -1 = all cores, -2 = all but one, ...
            n_jobs = max(1, available_cores() + 1 + n_jobs)
    elif "LocalLauncher" in launcher:
        n_jobs = int(OmegaConf.select(hc, "launcher.array_parallelism", default=256))
    else:
        return 1
    return max(1, min(n_jobs, sweep_jobs or n_jobs))


def _config_for_record(cfg: DictConfig) -> dict[str, Any]:
    """The config of a job that failed before training, resolved where it can be: a bad
    interpolation is what may have stopped it."""
    for resolve in (True, False):
        try:
            config = OmegaConf.to_container(cfg, resolve=resolve, throw_on_missing=False)
        except Exception:
            continue
        return config if isinstance(config, dict) else {}
    return {}


def _train(cfg: DictConfig, run_dir: Path) -> float:
    """Claim ``run_dir``, place the job, train; returns the objective."""
    from agop_sweep.run.device import effective_precision, place_job, set_precision
    from agop_sweep.run.trainer import Trainer
    from agop_sweep.store import rundir
    from agop_sweep.trackers import build_trackers

    hc = HydraConfig.get()
    with rundir.claim(run_dir, to_container(cfg), cfg.resume) as claim:
        if claim.finished is not None:
            return _nothing_to_do(run_dir, claim.finished)
        rundir.write_hydra_files(run_dir, cfg, HydraConfig.instance().cfg, list(hc.overrides.task))
        log.info("Run dir %s", run_dir)
        _log_preset(cfg, hc.runtime.choices)
        job_num = hc.job.num if hc.mode.name == "MULTIRUN" else 0
        placement = place_job(cfg.device, cfg.threads, job_num, _parallel_jobs())
        check_precision(cfg.trainer.precision, placement.device)  # fp16 needs CUDA; auto may be cpu
        set_precision(effective_precision(cfg.trainer.precision, placement.device))
        # The run's clock starts here, after the imports: a job that a joblib worker runs after
        # another would otherwise look faster than the first, which paid for importing torch.
        trainer = Trainer(cfg, run_dir, placement, observers=build_trackers(cfg, run_dir))
        return trainer.run(claim.state)


def _nothing_to_do(run_dir: Path, record: RunRecord) -> float:
    """A finished run resumed: say so on the console, and change none of its files, neither
    .hydra/ (whose overrides.yaml would gain resume=true) nor the log."""
    _detach_run_log(run_dir)
    log.info("Run in %s is already %s; nothing to do", run_dir, record.status)
    return record.objective()


def _detach_run_log(run_dir: Path) -> None:
    """Remove Hydra's file handler of the run log in ``run_dir`` from the root logger: it opens
    the file at the first line (``delay: true``), so a job that logs nothing more to it leaves
    it as it was. Hydra configures logging afresh for each job of a sweep."""
    root = logging.getLogger()
    here = run_dir.resolve()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().parent == here:
            root.removeHandler(handler)
            handler.close()


def _log_preset(cfg: DictConfig, choices: Any) -> None:
    """One line naming what a preset (``experiment=seed``) set, with the values this run uses;
    after the claim, because the first line logged opens the run's log file."""
    from agop_sweep.config.presets import PRESET_GROUP, preset_line

    option = choices.get(PRESET_GROUP) if choices is not None else None
    if option:
        line = preset_line(PRESET_GROUP, str(option), to_container(cfg))
        log.info("Preset %s", line or f"{PRESET_GROUP}={option} (its settings could not be read)")


class JobStop(BaseException):
    """Carries a single run's error out of Hydra's ``run_job``, which catches an ``Exception``
    from the task and writes ``Error executing job with overrides: [...]`` to stderr before it
    raises it again: a second line before the one :func:`main` prints."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _past_hydras_report(task: Callable[[DictConfig], float]) -> Callable[[DictConfig], float]:
    """A single run's error leaves the task as a :class:`JobStop`. A sweep's stays an
    ``Exception``: Hydra marks that job failed and goes on with the others, and its line says
    which job failed."""

    @functools.wraps(task)
    def job(cfg: DictConfig) -> float:
        try:
            return task(cfg)
        except Exception as e:
            if HydraConfig.get().mode.name == "MULTIRUN":
                raise
            raise JobStop(e) from None

    return job


@hydra.main(version_base="1.3", config_path="pkg://agop_sweep.conf", config_name="config")
@_past_hydras_report
def run(cfg: DictConfig) -> float:
    """One training run; returns the final val loss (the objective of a learning-rate search)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    from agop_sweep.store import rundir

    try:
        validate(cfg)  # before any heavy work: a bad value costs nothing
        from agop_sweep.trackers import check_available

        check_available(cfg)  # a missing tracker package: one line naming the extra
        objective = _train(cfg, run_dir)
    except rundir.RunDirError:
        raise  # the directory belongs to another run: write nothing there
    except Exception as e:
        if not _trainer_recorded(run_dir):
            rundir.record_start_failure(run_dir, _config_for_record(cfg), one_line(e))
        if isinstance(e, OSError) and not isinstance(e, UserError):
            where = f"{e.filename}: " if e.filename else ""
            raise UserError(f"Cannot write the run's files: {where}{e.strerror or e}") from None
        raise
    return objective if not math.isnan(objective) else math.inf


def _trainer_recorded(run_dir: Path) -> bool:
    """Whether this job's trainer wrote a record of its own (then it holds the error)."""
    import os

    from agop_sweep.store.record import RecordError, RunRecord

    try:
        return RunRecord.in_dir(run_dir).run.get("pid") == os.getpid()
    except (OSError, RecordError):
        return False


def error_report(error: BaseException) -> str | None:
    """The one line for an error a user can fix, None for anything else (a bug: traceback).

    Hydra's own report of a bad override runs to several lines (the key, a hint, the
    schema's type, the full key); its first line and its cause's first line say it all.
    """
    if isinstance(error, (UserError, SweeperError)):  # SweeperError: the lr search's sweeper
        return str(error)
    if isinstance(error, OverrideParseException):
        return f"Cannot parse the override {error.override!r}: {error.message.splitlines()[0]}"
    if isinstance(error, MissingConfigException):
        return _one_line(str(error))
    if isinstance(error, (ConfigCompositionException, OmegaConfBaseException)):
        line = str(error).strip().splitlines()[0].rstrip(".")
        cause = error.__cause__
        if cause is not None and str(cause).strip():
            line += ": " + str(cause).strip().splitlines()[0]
        return line
    if isinstance(error, OSError):  # e.g. Hydra creating the output dir or opening the log
        where = f"{error.filename}: " if error.filename else ""
        return f"Cannot write the run's files: {where}{error.strerror or error}"
    # a SLURM job that ended without a result, --cfg with -m
    from agop_sweep.run.slurm_errors import launch_problem

    return launch_problem(error)


def _one_line(text: str) -> str:
    """Hydra's multi-line report on one line: "Available options in 'optimizer':" followed by
    one option a line becomes "Available options in 'optimizer': adam, muon, sgd"; OmegaConf's
    full_key / type lines and Hydra's config search path are dropped."""
    text = text.split("Config search path")[0]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "reference_type", "object_type"))]
    out: list[str] = []
    for ln in lines:
        if out and out[-1].endswith(":"):
            out[-1] += " " + ln
        elif out and out[-1].startswith("Available options") and "," not in ln and " " not in ln:
            out[-1] += ", " + ln
        else:
            out.append(ln)
    return "; ".join(out)


COMPLETION_FLAGS = ("--shell-completion", "-sc")
COMPLETION_COMMANDS = ("install", "uninstall", "query")
CONSOLE_SCRIPT = "agop-sweep"


def completion_problem(argv: list[str]) -> str | None:
    """The one line for a shell-completion request Hydra cannot serve, None for any other
    command line: the flag without install=/uninstall=/query= (Hydra raises a bare
    ValueError), and install= under ``python -m agop_sweep``, whose script Hydra's completion
    cannot recognise (it completes ``python <file>.py`` and console scripts)."""
    args = argv[1:]
    if not any(a in COMPLETION_FLAGS for a in args):
        return None
    commands = [a.split("=", 1)[0] for a in args if a.split("=", 1)[0] in COMPLETION_COMMANDS]
    if not commands:
        return (f"--shell-completion needs one of install=SHELL, uninstall=SHELL or query=SHELL "
                f"(SHELL: bash, zsh or fish), e.g. {install_command('bash')}")
    if commands[0] == "install" and argv[0].endswith(".py"):
        shell = next((a.split("=", 1)[1] for a in args if a.startswith("install=")), "bash")
        return (f"shell completion works for the console script {CONSOLE_SCRIPT}, not for python -m "
                f"agop_sweep: {install_command(shell)}")
    return None


def install_command(shell: str) -> str:
    """How to turn completion on in ``shell`` (zsh reads bash's completion through bashcompinit)."""
    if shell == "fish":
        return f"{CONSOLE_SCRIPT} --shell-completion install=fish | source"
    return f'eval "$({CONSOLE_SCRIPT} --shell-completion install=bash)"'


def main() -> None:
    """``python -m agop_sweep``: Hydra's app, with every error a user can fix reported as one
    line on stderr and exit code 1, also those that arise inside Hydra before the app runs.
    HYDRA_FULL_ERROR=1 keeps Hydra's full reports and tracebacks for debugging."""
    from agop_sweep.run.guard import GuardStop

    problem = completion_problem(sys.argv)
    if problem is not None:
        print(problem, file=sys.stderr)
        raise SystemExit(1)
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own report
    error: Exception | None = None
    try:
        run()
    except GuardStop as stop:
        print(stop.error, file=sys.stderr)
        raise SystemExit(1) from None
    except JobStop as stop:
        error = stop.error
    except Exception as e:
        line = None if full else error_report(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        raise SystemExit(1) from None
    if error is not None:
        _report(error, full)  # outside the handler: a traceback shows the error's own chain


def _report(error: Exception, full: bool) -> NoReturn:
    """The one line for ``error`` and exit code 1; a traceback for a bug or HYDRA_FULL_ERROR=1."""
    line = None if full else error_report(error)
    if line is None:
        raise error
    print(line, file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
    main()
