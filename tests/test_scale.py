"""Scale-out: device/thread placement, the joblib launcher, sweep dirs, a diverging Optuna trial
(submitit: tests/test_slurm.py; the lr search: tests/test_lr_search.py)."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, Sweep, run_cli, tiny

from agop_sweep.errors import ConfigError
from agop_sweep.run.device import choose_device, choose_threads


@pytest.mark.parametrize(
    ("requested", "n_gpus", "job", "parallel", "expected"),
    [
        ("auto", 0, 0, False, "cpu"),
        ("auto", 0, 5, True, "cpu"),
        ("cpu", 8, 3, True, "cpu"),
        ("auto", 1, 0, False, "cuda:0"),
        ("auto", 1, 7, True, "cuda:0"),
        ("cuda", 2, 0, True, "cuda:0"),
        ("cuda", 2, 1, True, "cuda:1"),
        ("auto", 2, 5, True, "cuda:1"),
        ("auto", 8, 13, True, "cuda:5"),
        ("auto", 8, 13, False, "cuda:0"),  # one job at a time: the first GPU
        ("cuda:1", 2, 0, True, "cuda:1"),  # forced
        ("cuda:3", 8, 6, True, "cuda:3"),
    ],
)
def test_choose_device(requested: str, n_gpus: int, job: int, parallel: bool, expected: str) -> None:
    assert choose_device(requested, n_gpus, job, parallel) == expected


def test_parallel_jobs_on_8_gpus_never_collide() -> None:
    devices = [choose_device("auto", 8, job, parallel=True) for job in range(8)]
    assert len(set(devices)) == 8


@pytest.mark.parametrize(("requested", "n_gpus"), [("cuda", 0), ("cuda:2", 2)])
def test_choose_device_errors(requested: str, n_gpus: int) -> None:
    with pytest.raises(ConfigError, match="visible"):
        choose_device(requested, n_gpus)


@pytest.mark.parametrize(
    ("requested", "cores", "jobs", "expected"),
    [(0, 2, 1, 2), (0, 2, 2, 1), (0, 2, 4, 1), (0, 16, 3, 5), (0, 16, 4, 4), (3, 16, 4, 3)],
)
def test_choose_threads(requested: int, cores: int, jobs: int, expected: int) -> None:
    assert choose_threads(requested, cores, jobs) == expected


def test_joblib_jobs_run_side_by_side_in_their_own_dirs(joblib_sweep: Sweep) -> None:
    runs = joblib_sweep.results
    # Each job has its own dir, named after its overrides, with its own files.
    assert sorted(r["run"]["seed"] for r in runs.values()) == [3, 4]
    for name, r in runs.items():
        assert r["status"] == "completed" and f"seed={r['run']['seed']}" in name
        assert len(list((joblib_sweep.dir / name / "models").iterdir())) == 4
    # Two worker processes, each of which waited at its start until the other had started.
    assert len({r["run"]["pid"] for r in runs.values()}) == 2
    assert sorted(joblib_sweep.met) == [sorted(r["run"]["pid"] for r in runs.values())] * 2


def test_two_sweeps_started_together_get_their_own_dirs(tmp_path: Path) -> None:
    """Where each sweep writes is the point, not what its job does: the jobs stop at their start
    (model.width=0), each leaving its failed record in its own sweep's dir."""
    cmd = [sys.executable, "-m", "agop_sweep", "-m", "seed=1", *tiny("model.width=0")]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 1 and "model.width=0: must be >= 1" in err, err
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    # Apart by construction, not by the clock: each name ends with its command's process id.
    assert sorted(s.name.rsplit("-", 1)[1] for s in sweeps) == sorted(str(p.pid) for p in procs)
    for s in sweeps:
        (record,) = [json.loads(r.read_text()) for r in s.glob("*/results.json")]
        assert record["status"] == "failed"


def test_a_single_runs_default_dir_ends_with_its_process_id(tmp_path: Path, app_here) -> None:
    """outputs/<date>/<time>-<pid>, the pid of the process that ran the command (this one)."""
    proc = app_here(*tiny("model.width=0"), cwd=tmp_path)
    assert proc.returncode == 1 and "model.width=0: must be >= 1" in proc.stderr, proc.stderr
    (run_dir,) = [r.parent for r in (tmp_path / "outputs").glob("*/*/results.json")]
    day, stamp, pid = run_dir.parent.name, *run_dir.name.rsplit("-", 1)
    assert pid == str(os.getpid())
    assert datetime.datetime.strptime(f"{day} {stamp}", "%Y-%m-%d %H-%M-%S-%f")  # date, time to the µs


def test_optuna_survives_a_diverging_trial(tmp_path: Path) -> None:
    """A diverged trial returns +inf to the study instead of crashing it."""
    sweep = tmp_path / "search"
    proc = run_cli("-m", "hparams_search=sgd", "hydra.sweeper.n_trials=1", "model.act=tanh",
                   "optimizer.lr=choice(1000000.0)", *TINY, f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert run["status"] == "diverged"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["all_diverged"] is True and best["best_value"] is None  # no misleading "best" lr
