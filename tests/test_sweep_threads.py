"""Jobs that run side by side split the machine's cores among the jobs that really run at
once: a one-job joblib sweep gets every core, a two-job one half each."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import TINY, Sweep, run_cli
from omegaconf import OmegaConf

from agop_sweep.run.callbacks import count_jobs
from agop_sweep.run.device import available_cores


def _config(overrides: list[str], sweeper: dict | None = None) -> OmegaConf:
    return OmegaConf.create({"hydra": {"overrides": {"task": overrides}, "sweeper": sweeper or {}}})


@pytest.mark.parametrize(("overrides", "expected"), [
    (["seed=1"], 1),
    (["optimizer=sgd,adam,muon", "seed=1,2"], 6),
    (["seed=range(0,4)", "model.width=8"], 4),
])
def test_count_jobs(overrides: list[str], expected: int) -> None:
    assert count_jobs(_config(overrides)) == expected
    assert count_jobs(_config(overrides, {"max_batch_size": 2})) == min(2, expected)


def test_count_jobs_of_an_optuna_search() -> None:
    sweeper = {"_target_": "hydra_plugins.agop_optuna_sweeper.optuna_sweeper.OptunaSweeper", "n_jobs": 3}
    assert count_jobs(_config(["seed=1"], sweeper)) == 3


@pytest.mark.parametrize(("launcher", "mode", "sweep_jobs", "expected"), [
    ("joblib", "RUN", None, 1),  # a single run
    ("joblib", "MULTIRUN", 1, 1),  # a one-job sweep: one of the 3 workers runs, with every core
    ("joblib", "MULTIRUN", 2, 2),
    ("joblib", "MULTIRUN", 9, 3),  # at most n_jobs at once
    ("joblib", "MULTIRUN", None, 3),  # a sweep the callback could not count: n_jobs
    ("local", "MULTIRUN", 5, 5),  # submitit_local runs every job at once
    ("slurm", "MULTIRUN", 5, 1),  # one allocation per job
])
def test_the_jobs_that_run_at_once(compose_config, monkeypatch: pytest.MonkeyPatch, launcher: str, mode: str,
                                   sweep_jobs: int | None, expected: int) -> None:
    from hydra.core.hydra_config import HydraConfig

    from agop_sweep.run.app import _parallel_jobs
    from agop_sweep.run.callbacks import SWEEP_JOBS_ENV

    cfg = compose_config(f"cluster={launcher}", return_hydra_config=True)
    cfg.hydra.mode = mode
    if sweep_jobs is None:
        monkeypatch.delenv(SWEEP_JOBS_ENV, raising=False)
    else:
        monkeypatch.setenv(SWEEP_JOBS_ENV, str(sweep_jobs))
    HydraConfig.instance().set_config(cfg)
    try:
        assert _parallel_jobs() == expected
    finally:
        HydraConfig.instance().cfg = None


def test_a_sweeps_size_reaches_its_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from agop_sweep.run.callbacks import SWEEP_JOBS_ENV, SweepSize

    monkeypatch.delenv(SWEEP_JOBS_ENV, raising=False)
    SweepSize().on_multirun_start(_config(["optimizer=sgd,adam", "seed=1,2"]))
    assert os.environ[SWEEP_JOBS_ENV] == "4"  # joblib's and submitit's workers inherit it


def test_two_joblib_jobs_split_the_cores(joblib_sweep: Sweep) -> None:
    """The real path: two jobs side by side (they met at their start) get half the cores each."""
    assert len(joblib_sweep.results) == 2 and all(len(met) == 2 for met in joblib_sweep.met)
    threads = [r["run"]["threads"] for r in joblib_sweep.results.values()]
    assert threads == [max(1, available_cores() // 2)] * 2


@pytest.mark.slow
def test_submitit_local_jobs_split_the_cores(tmp_path: Path) -> None:
    """cluster=local runs all of a sweep's jobs at once: two jobs on this machine share its cores."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "cluster=local", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = [json.loads(p.read_text())["run"]["threads"] for p in sweep.glob("*/results.json")]
    assert threads == [max(1, available_cores() // 2)] * 2
