"""Jobs that run side by side split the machine's cores among the jobs that really run at
once: a one-job joblib sweep gets every core, a two-job one half each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY, run_cli
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


@pytest.mark.parametrize(("seeds", "running"), [("1", 1), ("1,2", 2)])
def test_joblib_jobs_split_the_cores_among_those_running(tmp_path: Path, seeds: str, running: int) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "cluster=joblib", f"seed={seeds}", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = [json.loads(p.read_text())["run"]["threads"] for p in sweep.glob("*/results.json")]
    assert threads == [max(1, available_cores() // running)] * running


@pytest.mark.slow
def test_submitit_local_jobs_split_the_cores(tmp_path: Path) -> None:
    """cluster=local runs all of a sweep's jobs at once: two jobs on this machine share its cores."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "cluster=local", "seed=1,2", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = [json.loads(p.read_text())["run"]["threads"] for p in sweep.glob("*/results.json")]
    assert threads == [max(1, available_cores() // 2)] * 2
