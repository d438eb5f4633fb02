"""The lr search's sweeper, hydra/sweeper=agop_optuna (hydra_plugins/agop_optuna_sweeper), on
Optuna >= 4: the search space in Hydra's sweep syntax, batches of n_jobs trials through the
launcher, a stored study extended with new learning rates, failed and diverged jobs, and
optuna-dashboard serving a stored study.

The sweeper runs here with a fake launcher whose jobs return a function of the lr at once;
tests/test_lr_search.py runs real searches through the app.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from agop_sweep.run.app import error_report
from agop_sweep.run.search import ExtendingTPESampler, LRSearch
from hydra_plugins.agop_optuna_sweeper import SweeperError, check_optuna
from hydra_plugins.agop_optuna_sweeper._impl import OptunaSweeperImpl, search_space

PRESET_SPACE = {"optimizer.lr": "tag(log, interval(0.003, 3.0))"}


# -- the search space --------------------------------------------------------------------------
def test_search_space_in_hydras_sweep_syntax() -> None:
    space, fixed = search_space(
        {**PRESET_SPACE, "model.width": "choice(16, 32)", "trainer.batch_size": "64"},
        ["seed=range(0,10,2)", "model.act=choice(relu,tanh)", "data=synthetic", "+x=interval(0, 1)",
         "n=tag(int, log, interval(1, 100))", "f=range(0,1,0.25)", "s=shuffle(range(3))"])
    assert space == {
        "optimizer.lr": FloatDistribution(0.003, 3.0, log=True),
        "model.width": CategoricalDistribution([16, 32]),
        "seed": IntDistribution(0, 8, step=2),
        "model.act": CategoricalDistribution(["relu", "tanh"]),
        "+x": FloatDistribution(0.0, 1.0),
        "n": IntDistribution(1, 100, log=True),
        "f": CategoricalDistribution([0.0, 0.25, 0.5, 0.75]),
        "s": CategoricalDistribution([0, 1, 2]),
    }
    assert fixed == {"trainer.batch_size": "64", "data": "synthetic"}


def test_the_command_line_replaces_the_presets_space() -> None:
    space, fixed = search_space(PRESET_SPACE, ["optimizer.lr=tag(log,interval(1e5,1e6))"])
    assert space == {"optimizer.lr": FloatDistribution(1e5, 1e6, log=True)} and fixed == {}
    space, fixed = search_space(PRESET_SPACE, ["optimizer.lr=0.1"])  # a plain value fixes the lr
    assert space == {} and fixed == {"optimizer.lr": "0.1"}


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.lr=tag(log, interval(0, 1))", "a log interval needs a positive start"),
    ("optimizer.lr=interval(1, 1)", "an interval needs a start below its end"),
    ("optimizer.lr=glob(*)", "cannot search optimizer.lr=glob(*): use interval"),
])
def test_a_space_the_sweeper_cannot_search_is_one_line(override: str, message: str) -> None:
    with pytest.raises(SweeperError, match=re.escape(message)) as raised:
        search_space({}, [override])
    line = error_report(raised.value)  # what the app prints: the message, no traceback
    assert line is not None and message in line and "\n" not in line


def test_an_old_optuna_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    check_optuna()
    from hydra_plugins.agop_optuna_sweeper import _checks

    monkeypatch.setattr(_checks.metadata, "version", lambda name: "2.10.1")
    with pytest.raises(SweeperError, match=r"needs optuna>=4, this environment has optuna 2\.10\.1"):
        check_optuna()


# -- sweeps with a fake launcher ---------------------------------------------------------------
def loss_of(lr: float) -> float:
    """A job's objective: lowest at lr = 0.03."""
    return (math.log10(lr) + 1.5) ** 2


class FakeLauncher:
    """Runs each batch at once: a job's return value is ``job(lr)`` (an exception: the job
    failed). Records the batches, and the trials the study held RUNNING while each ran."""

    def __init__(self, study: Callable[[], optuna.Study], job: Callable[[float], float] = loss_of) -> None:
        self.study, self.job = study, job
        self.batches: list[list[list[str]]] = []
        self.first_idx: list[int] = []
        self.running: list[int] = []

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        self.batches.append([list(o) for o in job_overrides])
        self.first_idx.append(initial_job_idx)
        self.running.append(len(self.study().get_trials(deepcopy=False, states=(TrialState.RUNNING,))))
        returns = []
        for overrides in job_overrides:
            lr = float(next(o for o in overrides if o.startswith("optimizer.lr=")).split("=", 1)[1])
            try:
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                                         _return_value=self.job(lr)))
            except Exception as e:
                returns.append(JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=e))
        return returns


def sweeper(sweep_dir: Path, *, n_trials: int, n_jobs: int = 1, storage: str | None = None,
            study_name: str = "lr_sgd", seed: int = 3, job: Callable[[float], float] = loss_of,
            max_failure_rate: float = 0.0) -> tuple[OptunaSweeperImpl, FakeLauncher]:
    """The sweeper as Hydra sets it up for the sgd preset, with a fake launcher."""
    impl = OptunaSweeperImpl(sampler=ExtendingTPESampler(seed=seed), direction="minimize", storage=storage,
                             study_name=study_name, n_trials=n_trials, n_jobs=n_jobs,
                             max_failure_rate=max_failure_rate, params=PRESET_SPACE)
    impl.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "sweeper": {
        "storage": storage, "study_name": study_name}}})
    composed: list[list[str]] = []
    impl.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(  # type: ignore[assignment]
        load_sweep_config=lambda master_config, sweep_overrides: composed.append(sweep_overrides)))
    launcher = FakeLauncher(impl.study, job)
    impl.launcher = launcher  # type: ignore[assignment]
    return impl, launcher


def lrs_of(study: optuna.Study) -> list[float]:
    return [t.params["optimizer.lr"] for t in study.get_trials(deepcopy=False)]


def test_trials_are_launched_in_batches_of_n_jobs(tmp_path: Path) -> None:
    impl, launcher = sweeper(tmp_path, n_trials=5, n_jobs=2)
    impl.sweep(["data=synthetic"])
    assert [len(b) for b in launcher.batches] == [2, 2, 1]
    assert launcher.first_idx == [0, 2, 4]
    assert launcher.running == [2, 2, 1]  # a batch's trials are all asked before it runs
    for batch in launcher.batches:  # the trial's lr first, then the fixed overrides
        for overrides in batch:
            assert overrides[0].startswith("optimizer.lr=") and overrides[1:] == ["data=synthetic"]
    study = impl.study()
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert [t.value for t in trials] == [loss_of(lr) for lr in lrs_of(study)]
    assert all(t.user_attrs == {"data": "synthetic"} for t in trials)
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best = min(trials, key=lambda t: t.value)
    assert results == {"name": "optuna", "best_params": {"optimizer.lr": best.params["optimizer.lr"]},
                       "best_value": best.value}


def test_the_same_sweep_again_extends_the_stored_study_with_new_lrs(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/study.db"
    first, _ = sweeper(tmp_path, n_trials=4, n_jobs=2, storage=storage)
    first.sweep([])
    again, launcher = sweeper(tmp_path, n_trials=4, n_jobs=2, storage=storage)  # the same command
    again.sweep([])
    assert launcher.first_idx == [0, 2]
    study = optuna.load_study(study_name="lr_sgd", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(8))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    lrs = lrs_of(study)
    assert len(set(lrs)) == 8 and all(0.003 <= lr <= 3.0 for lr in lrs)
    # A new storage, the same seed: the first command's lrs again.
    fresh, _ = sweeper(tmp_path / "b", n_trials=4, n_jobs=2, storage=f"sqlite:///{tmp_path}/b.db")
    fresh.sweep([])
    assert lrs_of(fresh.study()) == lrs[:4]


def test_every_trial_diverged(tmp_path: Path) -> None:
    """Diverged runs return +inf: complete trials, no best lr in the summary."""
    storage = f"sqlite:///{tmp_path}/study.db"
    impl, _ = sweeper(tmp_path, n_trials=3, n_jobs=3, storage=storage, job=lambda lr: math.inf)
    impl.sweep([])
    trials = impl.study().get_trials(deepcopy=False)
    assert [(t.state, t.value) for t in trials] == [(TrialState.COMPLETE, math.inf)] * 3
    assert yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())["best_value"] == math.inf
    LRSearch().on_multirun_end(impl.config)  # the preset's callback, after the sweep
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["all_diverged"] is True and results["best_params"] is None
    assert results["message"].startswith("Every trial diverged (3 of 3)")
    assert results["trials"] == {"total": 3, "complete": 3, "diverged": 3, "failed": 0, "distinct_lrs": 3}


def test_failed_jobs_are_failed_trials(tmp_path: Path) -> None:
    def job(lr: float) -> float:
        if lr > 0.1:
            raise RuntimeError("boom")
        return math.nan if lr < 0.01 else loss_of(lr)

    tolerant, _ = sweeper(tmp_path, n_trials=8, n_jobs=4, job=job, max_failure_rate=1.0)
    tolerant.sweep([])
    trials = tolerant.study().get_trials(deepcopy=False)
    lrs = lrs_of(tolerant.study())
    assert [t.state for t in trials] == [TrialState.COMPLETE if 0.01 <= lr <= 0.1 else TrialState.FAIL
                                         for lr in lrs]
    assert any(t.state == TrialState.FAIL for t in trials)
    strict, _ = sweeper(tmp_path / "strict", n_trials=8, n_jobs=4, job=job)  # max_failure_rate 0
    with pytest.raises(RuntimeError, match="boom"):
        strict.sweep([])
    nan, _ = sweeper(tmp_path / "nan", n_trials=2, job=lambda lr: math.nan)
    with pytest.raises(SweeperError, match=r"1 of 1 jobs of a batch returned no number"):
        nan.sweep([])


def test_an_interrupted_batch_leaves_no_running_trial(tmp_path: Path) -> None:
    impl, launcher = sweeper(tmp_path, n_trials=4, n_jobs=2)

    def interrupted(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        raise KeyboardInterrupt

    launcher.launch = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        impl.sweep([])
    assert [t.state for t in impl.study().get_trials(deepcopy=False)] == [TrialState.FAIL] * 2


@pytest.mark.parametrize(("setting", "message"), [
    ({"n_jobs": 0}, "n_jobs must be 1 or more"),
    ({"direction": "down"}, "direction must be minimize or maximize"),
    ({"max_failure_rate": 2.0}, "max_failure_rate must lie in [0, 1]"),
    ({"sampler": "tpe"}, "sampler must be an Optuna sampler"),
])
def test_settings_that_cannot_work(setting: dict[str, Any], message: str) -> None:
    settings = {"sampler": None, "direction": "minimize", "storage": None, "study_name": None,
                "n_trials": 1, "n_jobs": 1, "max_failure_rate": 0.0, "params": None, **setting}
    with pytest.raises(SweeperError, match=re.escape(message)):
        OptunaSweeperImpl(**settings)


# -- Hydra finds the plugin --------------------------------------------------------------------
def test_hydra_finds_the_plugin_without_importing_optuna(tmp_path: Path) -> None:
    code = ("import sys\n"
            "from hydra.core.config_store import ConfigStore\n"
            "from hydra.core.plugins import Plugins\n"
            "from hydra.plugins.sweeper import Sweeper\n"
            "names = [f'{p.__module__}.{p.__name__}' for p in Plugins.instance().discover(Sweeper)]\n"
            "assert 'hydra_plugins.agop_optuna_sweeper.optuna_sweeper.OptunaSweeper' in names, names\n"
            "assert 'agop_optuna.yaml' in ConfigStore.instance().list('hydra/sweeper')\n"
            "assert 'optuna' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


# -- optuna-dashboard --------------------------------------------------------------------------
@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """optuna-dashboard on 127.0.0.1 (a free port) over a stored study: (its URL, the storage)."""
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (the dashboard extra)")
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    storage = f"sqlite:///{tmp_path}/study.db"
    impl, _ = sweeper(tmp_path, n_trials=3, storage=storage)
    impl.sweep([])

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, wsgi(storage), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", storage
    finally:
        server.shutdown()
        server.server_close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_optuna_dashboard_serves_a_stored_study(dashboard: tuple[str, str]) -> None:
    url, storage = dashboard
    (summary,) = get_json(f"{url}/api/studies")["study_summaries"]
    assert summary["study_name"] == "lr_sgd" and summary["directions"] == ["minimize"]
    detail = get_json(f"{url}/api/studies/{summary['study_id']}?after=0")
    served = [t["params"][0]["param_internal_value"] for t in detail["trials"]]
    stored = optuna.load_study(study_name="lr_sgd", storage=storage)
    assert served == lrs_of(stored) and len(served) == 3


# -- through the app and a launcher ------------------------------------------------------------
@pytest.mark.slow
def test_a_batch_runs_side_by_side_under_joblib(tmp_path: Path) -> None:
    """cluster=joblib with n_jobs=2: each batch of two trials is one joblib launch, run by two
    worker processes at once."""
    from conftest import app_env

    from agop_sweep.run.device import available_cores
    from agop_sweep.store.record import RunRecord

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "agop_sweep", "-m", "hparams_search=sgd", "cluster=joblib",
           "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4",
           f"hydra.sweep.dir={sweep}", f"hydra.sweeper.storage=sqlite:///{sweep}/study.db",
           "data=synthetic", "data.n_train=256", "data.n_val=64", "data.n_features=64",
           "data.image_shape=[1,8,8]", "model.width=16", "model.depth=2", "schedule=smoke",
           "trainer.plots=off", "device=cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert out.count("Joblib.Parallel(n_jobs=2,") == 2 and out.count("is launching 2 jobs") == 2, out[-4000:]
    study = optuna.load_study(study_name="lr_sgd", storage=f"sqlite:///{sweep}/study.db")
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * 4
    records = [RunRecord.in_dir(p.parent) for p in sweep.glob("*/results.json")]
    assert sorted(r.run["lr"] for r in records) == sorted(lrs_of(study))
    assert len({r.run["pid"] for r in records}) == 2  # two workers
    assert {r.run["threads"] for r in records} == {max(1, available_cores() // 2)}  # the cores split
