"""Scale-out: device/thread placement, joblib and submitit launchers, sweep dirs, Optuna."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agop_sweep.errors import ConfigError
from agop_sweep.run.device import choose_device, choose_threads

TINY = [
    "data=synthetic", "data.n_train=1024", "data.n_val=64", "data.n_features=64",
    "data.image_shape=[1,8,8]", "model.width=32", "model.depth=2", "schedule=smoke",
    "trainer.plots=off",
]


def run_app(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agop_sweep", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


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


def _results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}


def test_joblib_jobs_run_in_parallel(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_app(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2,3,4", *TINY,
                    "data.n_train=4096",
                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = _results(sweep)
    # Each job has its own dir, named after its overrides, with its own files.
    assert sorted(n for n in runs if "seed=" in n) == sorted(runs)
    assert sorted(r["run"]["seed"] for r in runs.values()) == [1, 2, 3, 4]
    for name, r in runs.items():
        assert r["status"] == "completed"
        assert r["run"]["threads"] == 1  # 2 cores split over 2 parallel jobs
        assert len(list((sweep / name / "models").iterdir())) == 4
        assert f"seed={r['run']['seed']}" in name
    spans = sorted((r["timing"]["started_at"], r["timing"]["finished_at"], r["run"]["pid"])
                   for r in runs.values())
    overlapping = [
        (a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1] and a[2] != b[2]
    ]
    assert overlapping, f"no two jobs overlapped in different processes: {spans}"
    assert len({s[2] for s in spans}) >= 2


def test_submitit_local_completes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_app(["-m", "cluster=local", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = _results(sweep)
    assert len(runs) == 2
    assert all(r["status"] == "completed" for r in runs.values())
    assert (sweep / ".submitit").is_dir()


def test_two_sweeps_started_together_get_their_own_dirs(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "agop_sweep", "-m", "seed=1", *TINY, "schedule.epochs=1",
           "schedule.checkpoints=[1]"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    for s in sweeps:
        assert len(list(s.glob("*/results.json"))) == 1


def test_optuna_lr_search(tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    proc = run_app(["-m", "hparams_search=adam", "hydra.sweeper.n_trials=4", *TINY,
                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    lr = best["best_params"]["optimizer.lr"]
    assert 3e-5 <= lr <= 3e-2
    runs = _results(sweep)
    assert len(runs) == 4
    finals = {r["config"]["optimizer"]["lr"]: r["epochs"][-1]["val_loss"] for r in runs.values()}
    assert best["best_value"] == pytest.approx(min(finals.values()))
    assert finals[lr] == pytest.approx(best["best_value"])


def test_optuna_survives_a_diverging_trial(tmp_path: Path) -> None:
    """A diverged trial returns +inf to the study instead of crashing it."""
    sweep = tmp_path / "search"
    proc = run_app(["-m", "hparams_search=sgd", "hydra.sweeper.n_trials=1", "model.act=tanh",
                    "optimizer.lr=choice(1000000.0)", *TINY,
                    f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run,) = _results(sweep).values()
    assert run["status"] == "diverged"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["all_diverged"] is True and best["best_value"] is None  # no misleading "best" lr
