"""SLURM through submitit (issue 22, points 6 and 7): every preemption signal requeues the job,
submission errors are one line naming the fix, ``--cfg hydra`` lists the launcher keys, the
thread count follows SLURM_CPUS_PER_TASK, and aggregate reads a run whose job waits in the
queue as requeued.

No SLURM here: submitit's LocalExecutor runs the same signal, checkpoint and requeue code as
on SLURM (its requeue is an exit code its controller restarts the job on), and fake ``sbatch``,
``srun``, ``squeue`` and ``sacct`` scripts on PATH answer as SLURM does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from aggregate_fakes import write_fake_run
from conftest import TINY, app_env, one_line_error, strip_timing

from agop_sweep.aggregate.command import aggregate
from agop_sweep.aggregate.discover import INTERRUPTED, find_runs
from agop_sweep.run import slurm, slurm_errors, slurm_queue
from agop_sweep.run.device import available_cores, place_job
from agop_sweep.run.slurm import RequeueOnSignal
from agop_sweep.run.slurm_queue import REQUEUED

pytest.importorskip("submitit")


# -- fake SLURM commands ------------------------------------------------------------------------


def fake_commands(bin_dir: Path, **scripts: tuple[str, int]) -> Path:
    """``name=(stdout or stderr text, exit code)``: a script per command that prints the text
    (to stderr when it exits non-zero, as SLURM's commands do) and exits with the code."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, (text, code) in scripts.items():
        stream = 2 if code else 1
        (bin_dir / name).write_text(f"#!/bin/sh\ncat <<'EOF' >&{stream}\n{text}\nEOF\nexit {code}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def path_with(bin_dir: Path) -> str:
    """PATH with ``bin_dir`` first and no real SLURM command (there is none on this machine)."""
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


def no_real_slurm() -> None:
    if any(shutil.which(c) for c in ("sbatch", "srun", "squeue", "sacct")):
        pytest.skip("a real SLURM is on PATH: these tests fake its commands")


def submit(tmp_path: Path, bin_dir: Path, app_here, monkeypatch: pytest.MonkeyPatch, *extra: str
           ) -> subprocess.CompletedProcess[str]:
    """The sweep submitted with ``bin_dir``'s fake commands first on PATH (the app in this process:
    each of these stops at the submission)."""
    monkeypatch.setenv("PATH", path_with(bin_dir))
    return app_here("-m", "cluster=slurm", *TINY, *extra, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                    cwd=tmp_path)


# SLURM 22.05's own messages (slurm_strerror, and sbatch's line before it).
FAILED = "sbatch: error: Batch job submission failed: "
SUBMISSION_ERRORS = {
    "invalid partition": (FAILED + "Invalid partition name specified", ["hydra.launcher.partition=nope"],
                          "set hydra.launcher.partition to a partition that `sinfo -s` lists (now: nope)"),
    "no default partition": (FAILED + "Invalid partition name specified", [],
                             "no default partition: set hydra.launcher.partition"),
    "no GPU (gres)": ("sbatch: error: Invalid generic resource (gres) specification", [],
                      "has no GPUs (gres): set hydra.launcher.gpus_per_node=0"),
    "GPU": (FAILED + "Requested node configuration is not available", ["hydra.launcher.partition=cpu"],
            "no node of partition cpu has gpus_per_node=1, cpus_per_task=8 and mem_gb=32: set "
            "hydra.launcher.gpus_per_node, cpus_per_task and mem_gb"),
    "memory": ("sbatch: error: Memory specification can not be satisfied\n"
               + FAILED + "Requested node configuration is not available", [],
               "lower hydra.launcher.mem_gb (now 32)"),
    "CPUs": ("sbatch: error: CPU count per node can not be satisfied\n"
             + FAILED + "Requested node configuration is not available", [],
             "lower hydra.launcher.cpus_per_task (now 8)"),
    "time limit": (FAILED + "Requested time limit is invalid (missing or exceeds some limit)", [],
                   "lower hydra.launcher.timeout_min (now 240)"),
    "controller down": (FAILED + "Unable to contact slurm controller (connect failure)", [],
                        "the SLURM controller does not answer"),
}


@pytest.mark.parametrize("case", list(SUBMISSION_ERRORS))
def test_sbatch_errors_are_one_line_naming_the_fix(tmp_path: Path, case: str, app_here,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    no_real_slurm()
    stderr, extra, fix = SUBMISSION_ERRORS[case]
    bin_dir = fake_commands(tmp_path / "bin", srun=("", 0), sbatch=(stderr, 1))
    line = one_line_error(submit(tmp_path, bin_dir, app_here, monkeypatch, *extra))
    reason = stderr.splitlines()[-1].split("error: ")[-1].removeprefix("Batch job submission failed: ")
    assert line.startswith(f"sbatch refused the sweep: {reason}: "), line
    assert fix in line, line


@pytest.mark.parametrize("present", ["srun", "sbatch"])
def test_missing_slurm_commands_are_one_line(tmp_path: Path, present: str, app_here,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    no_real_slurm()
    bin_dir = fake_commands(tmp_path / "bin", **{present: ("Submitted batch job 1", 0)})
    line = one_line_error(submit(tmp_path, bin_dir, app_here, monkeypatch))
    missing = {"srun": "sbatch", "sbatch": "srun"}[present]
    assert line.startswith(f"cluster=slurm submits with SLURM's sbatch and srun, and {missing} is not on "
                           "PATH"), line
    assert "cluster=local" in line
    assert not (tmp_path / "sweep" / ".submitit").exists()  # refused before submitit ran


def test_sbatch_vanishing_after_the_check_is_one_line(tmp_path: Path) -> None:
    """sbatch found by the check but gone when submitit calls it: submitit's FileNotFoundError."""
    line = slurm_errors.submission_problem(FileNotFoundError(2, "No such file or directory", "sbatch"), {})
    assert line is not None and "sbatch is not on PATH" in line


def test_launcher_keys_are_listed_without_m(tmp_path: Path) -> None:
    """``--cfg hydra -p hydra.launcher`` lists the keys a site sets; Hydra refuses it with -m,
    which is now one line saying to drop -m."""
    base = [sys.executable, "-m", "agop_sweep", "cluster=slurm", "hydra.launcher.partition=cpu",
            "--cfg", "hydra", "-p", "hydra.launcher"]
    shown = subprocess.run(base, cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    for key in ("partition: cpu", "gpus_per_node: 1", "cpus_per_task: 8", "mem_gb: 32", "timeout_min: 240",
                "account:", "qos:", "signal_delay_s: 120", "max_num_timeout: 5"):
        assert key in shown.stdout, shown.stdout
    with_m = subprocess.run([*base[:3], "-m", *base[3:]], cwd=tmp_path, env=app_env(), capture_output=True,
                            text=True, timeout=120)
    line = one_line_error(with_m)
    assert line.startswith("--cfg and --info print the config and run nothing, so they do not combine "
                           "with -m: drop -m"), line


def test_job_errors_after_submission_are_one_line() -> None:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    uncompleted = UncompletedJobError(
        "Job 17_2 (task: 0) with path /s/sweep/.submitit/17_2/17_2_0_result.pkl\n"
        "has not produced any output (state: FAILED)\nError stream produced:\n" + "-" * 40
        + "\nlots\nof\nlog")
    assert slurm_errors.launch_problem(uncompleted) == (
        "Job 17_2 of the sweep ended without a result (state FAILED); its log: "
        "/s/sweep/.submitit/17_2/17_2_0_log.err; submit the same command again with "
        "hydra.sweep.dir=/s/sweep (the cluster presets resume every run)")
    failed = FailedJobError(
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback ...\n"
        "submitit.core.utils.UncompletedJobError: Job not requeued because: timed-out too many times.\n"
        "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'"
        "or at paths:\n"
        "  - /s/sweep/.submitit/17_2/17_2_0_log.err\n  - /s/sweep/.submitit/17_2/17_2_0_log.out")
    line = slurm_errors.launch_problem(failed)
    assert line is not None and "\n" not in line
    assert line.startswith("A job of the sweep failed: submitit.core.utils.UncompletedJobError: "
                           "Job not requeued because: timed-out too many times.; raise "
                           "hydra.launcher.timeout_min")
    assert line.endswith("its log: /s/sweep/.submitit/17_2/17_2_0_log.err")
    assert slurm_errors.launch_problem(RuntimeError("a bug")) is None


# -- every preemption signal requeues (submitit's LocalExecutor) ------------------------------------


# Loaded by every Python process of the test's sweep (PYTHONPATH): in a job (its process has
# SUBMITIT_LOCAL_JOB_ID), the AT_STEP-th SGD step of each process raises the first of the signals
# not yet raised (a marker file each), so that each requeued process is stopped by the next one
# and the last runs through.
SITECUSTOMIZE = """
import os
if os.environ.get("SUBMITIT_LOCAL_JOB_ID") and os.environ.get("AGOP_TEST_SIGNALS"):
    import signal
    from pathlib import Path
    import torch
    _step, _calls = torch.optim.SGD.step, [0]
    def _signalling_step(self, *args, **kwargs):
        _calls[0] += 1
        if _calls[0] == AT_STEP:
            for i, name in enumerate(os.environ["AGOP_TEST_SIGNALS"].split(",")):
                marker = Path(os.environ["AGOP_TEST_MARKERS"]) / f"signal{i}"
                if not marker.exists():
                    marker.write_text(str(os.getpid()))
                    signal.raise_signal(getattr(signal, name))
                    break
        return _step(self, *args, **kwargs)
    torch.optim.SGD.step = _signalling_step
"""
BATCHES = ["trainer.batch_size=32"]  # 8 steps an epoch, 24 in all
AT_STEP = 5
PREEMPTION = ("SIGTERM", "SIGUSR1", "SIGUSR2")


def local_sweep(root: Path, signals: tuple[str, ...] = (), cluster: str | None = "local"
                ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """A one-job sweep (seed=1, one thread) through submitit's LocalExecutor (or ``cluster=None``:
    in the sweep's own process), the ``signals`` raised in turn in its processes."""
    site = root / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.replace("AT_STEP", str(AT_STEP)))
    (root / "markers").mkdir()
    env = {**app_env(), "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "AGOP_TEST_MARKERS": str(root / "markers")}
    if signals:
        env["AGOP_TEST_SIGNALS"] = ",".join(signals)
    sweep = root / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "agop_sweep", "-m", *([f"cluster={cluster}"] if cluster else []), *TINY,
         *BATCHES, "threads=1", "seed=1", f"hydra.sweep.dir={sweep}"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return proc, sweep


def comparable(run_dir: Path) -> dict[str, Any]:
    data = json.loads((run_dir / "results.json").read_text())
    data["config"].pop("resume", None)
    return strip_timing(data)


def test_every_preemption_signal_requeues_and_resumes_identically(tmp_path: Path) -> None:
    """TERM, USR1 and USR2 in turn stop a job mid-epoch; each time submitit requeues it and the
    requeued process resumes from where the signal stopped the last; the job ends with the
    results and checkpoints of an uninterrupted run."""
    reference, ref_sweep = local_sweep(tmp_path / "reference", cluster=None)
    assert reference.returncode == 0, reference.stderr[-3000:]
    proc, sweep = local_sweep(tmp_path / "signalled", PREEMPTION)
    assert proc.returncode == 0, proc.stderr[-3000:]
    markers = tmp_path / "signalled" / "markers"
    assert sorted(p.name for p in markers.iterdir()) == ["signal0", "signal1", "signal2"]
    assert len({p.read_text() for p in markers.iterdir()}) == 3  # each from another process
    (run_dir,) = sweep.glob("*seed=1*")
    log_text = (run_dir / "agop_sweep.log").read_text()
    # Each process's 5th step: global steps 5, 10 and 15 (8 an epoch; epoch 0 is the initial
    # weights), after which the process saves its state and is requeued.
    for name, where in zip(PREEMPTION, ("epoch 1 step 5", "epoch 2 step 2", "epoch 2 step 7"), strict=True):
        assert f"Received {name}: saving state at the next step" in log_text, log_text
        assert f"Requeueing the job through submitit ({name})" in log_text, log_text
        assert f"at {where}" in log_text, log_text
    assert log_text.count("Resuming") == 3, log_text
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    (ref_dir,) = ref_sweep.glob("*seed=1*")
    assert comparable(run_dir) == comparable(ref_dir)
    for ckpt in sorted((ref_dir / "models").iterdir()):
        a = torch.load(ckpt, weights_only=True)["state_dict"]
        b = torch.load(run_dir / "models" / ckpt.name, weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a), ckpt.name
    # submitit's own log lines (its logger also reaches the root handler: each line twice); a
    # preemption does not count against the job's timeouts.
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.out"))
    requeued = [ln for ln in logs.splitlines() if ln.startswith("submitit INFO") and "Requeued job" in ln]
    assert len(requeued) == 3 and all(ln.endswith("(3 remaining timeouts)") for ln in requeued), logs[-3000:]


@pytest.mark.slow
def test_a_job_killed_outright_is_one_line(tmp_path: Path) -> None:
    """SIGKILL (an out-of-memory kill, a node failure) leaves no result: submitit's
    UncompletedJobError, after its 15 s wait for one, is one line naming the log."""
    proc, sweep = local_sweep(tmp_path, ("SIGKILL",))
    line = one_line_error(proc)
    assert line.startswith("Job ") and " of the sweep ended without a result (state " in line, line
    assert f"its log: {sweep}/.submitit/" in line and line.endswith(
        f"submit the same command again with hydra.sweep.dir={sweep} (the cluster presets resume every run)")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, signum: int, frame: object) -> None:
        self.calls.append(signum)


@pytest.mark.parametrize(("state", "requeued"),
                         [("RUNNING", True), ("COMPLETING", False), ("CANCELLED", False), (None, False)])
def test_slurm_requeues_term_only_while_the_job_runs(monkeypatch: pytest.MonkeyPatch, state: str | None,
                                                     requeued: bool) -> None:
    """A plain ``scancel`` (and the time limit) sends SIGTERM to a job SLURM lists as COMPLETING:
    it must not come back. ``scancel --signal=TERM`` and a preemption's grace time: RUNNING."""
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    requeue, bypass = Recorder(), Recorder()
    previous = {signal.SIGTERM: bypass, signal.SIGUSR1: signal.SIG_DFL}
    handler = RequeueOnSignal(requeue, signal.SIGUSR2, previous, "slurm", state=lambda job: state)
    handler(signal.SIGTERM, None)
    assert requeue.calls == ([signal.SIGTERM] if requeued else [])
    assert bypass.calls == ([] if requeued else [signal.SIGTERM])  # submitit's own TERM handler: a log line
    if not requeued:
        with pytest.raises(SystemExit) as stop:  # USR1's default: the process ends
            handler(signal.SIGUSR1, None)
        assert stop.value.code == 128 + signal.SIGUSR1
        handler(signal.SIGUSR2, None)  # submitit's signal requeues whatever the state
        assert requeue.calls == [signal.SIGUSR2]


def test_a_signal_after_the_requeue_is_ignored() -> None:
    requeue = Recorder()
    handler = RequeueOnSignal(requeue, signal.SIGUSR2, {}, "slurm", state=lambda job: "RUNNING")
    handler(signal.SIGUSR2, None)
    handler(signal.SIGTERM, None)  # SLURM ends the requeued job's processes with SIGTERM
    assert requeue.calls == [signal.SIGUSR2]


def test_squeue_state_reads_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", path_with(fake_commands(tmp_path / "a", squeue=("COMPLETING", 0))))
    assert slurm_queue.squeue_state("77") == "COMPLETING"
    down = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    monkeypatch.setenv("PATH", path_with(fake_commands(tmp_path / "b", squeue=(down, 1))))
    assert slurm_queue.squeue_state("77") is None


def test_no_submitit_handler_no_change() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    assert slurm.requeue_on_preemption_signals() is None
    assert {s: signal.getsignal(s) for s in before} == before


def test_slurm_job_recorded_only_in_a_submitit_slurm_job() -> None:
    env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "130", "SLURM_ARRAY_JOB_ID": "120",
           "SLURM_ARRAY_TASK_ID": "4"}
    assert slurm.slurm_job_id(env) == "120_4"
    assert slurm.slurm_job_id({**env, "SLURM_ARRAY_JOB_ID": ""}) == "130"
    assert slurm.slurm_job_id({"SLURM_JOB_ID": "130"}) is None  # an salloc shell: its job is not the run


# -- threads ---------------------------------------------------------------------------------------


def test_threads_follow_slurm_cpus_per_task(monkeypatch: pytest.MonkeyPatch) -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_cores({}) == cores
    assert available_cores({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert available_cores({"SLURM_CPUS_PER_TASK": str(cores + 8)}) == cores  # never more than it may use
    assert available_cores({"SLURM_CPUS_PER_TASK": "0"}) == cores
    assert available_cores({"SLURM_CPUS_PER_TASK": "lots"}) == cores
    before = torch.get_num_threads()
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        assert place_job("cpu", 0, 0, 1).threads == 1
        assert torch.get_num_threads() == 1
        assert place_job("cpu", 2, 0, 1).threads == 2  # threads=N still forces N
    finally:
        torch.set_num_threads(before)


# -- aggregate: a run whose job waits in the queue ---------------------------------------------------


def stopped_slurm_run(root: Path, job: str = "4242_3") -> Path:
    """A run that recorded SLURM job ``job``, says running, and whose process is gone."""
    run_dir = root / "sweep" / "optimizer=sgd,seed=1"
    write_fake_run(run_dir, "sgd", 1, ["optimizer=sgd", "seed=1"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    data = json.loads((run_dir / "results.json").read_text())
    data["status"] = "running"
    data["run"].update(pid=gone.pid, host=socket.gethostname(), slurm_job=job)
    (run_dir / "results.json").write_text(json.dumps(data))
    return root / "sweep"


SQUEUE_PENDING = ("4242_3|PENDING", 0)
SACCT_HEADER = "JobID|State|NodeList"


@pytest.mark.parametrize(("commands", "status"), [
    ({}, INTERRUPTED),
    ({"squeue": SQUEUE_PENDING}, REQUEUED),
    ({"squeue": ("4242_[3-5]|PENDING", 0)}, REQUEUED),  # a pending array range
    ({"squeue": ("4242_3|RUNNING", 0)}, "running"),  # requeued and started, nothing written yet
    ({"squeue": ("slurm_load_jobs error: Invalid job id specified", 1),
      "sacct": (f"{SACCT_HEADER}\n4242_3|PENDING|None assigned", 0)}, REQUEUED),
    ({"squeue": ("", 0), "sacct": (f"{SACCT_HEADER}\n4242_3|CANCELLED by 1000|node1", 0)}, INTERRUPTED),
    ({"squeue": ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)", 1),
      "sacct": ("sacct: error: Problem talking to the database: Connection refused", 1)}, INTERRUPTED),
])
def test_aggregate_asks_slurm_about_a_stopped_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capfd: pytest.CaptureFixture[str],
                                                  commands: dict[str, tuple[str, int]], status: str) -> None:
    sweep = stopped_slurm_run(tmp_path)
    monkeypatch.setenv("PATH", path_with(fake_commands(tmp_path / "bin", **commands)) if commands
                       else os.environ["PATH"])
    if not commands:
        no_real_slurm()
    (run,), _ = find_runs([sweep])
    assert run.status == status
    assert capfd.readouterr().err == ""  # silent whatever SLURM answers


def test_report_lists_a_requeued_run_without_a_resume_command(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = stopped_slurm_run(tmp_path)
    monkeypatch.setenv("PATH", path_with(fake_commands(tmp_path / "bin", squeue=SQUEUE_PENDING)))
    aggregate([sweep], out=tmp_path / "out", figures=False)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "1 runs launched: 1 requeued." in report
    assert "Interrupted runs" not in report and "resume=true" not in report
