"""The learning-rate search presets (conf/hparams_search, agop_sweep/run/search.py) and their part
of the aggregate report (agop_sweep/aggregate/lr_search.py).

A real search stored in SQLite is run twice with the same command into the same sweep dir:
the second run adds new trials with new learning rates (no refusal, no failed trial), and
the aggregate report names the best lr. A search in which every trial diverges says so, in
optimization_results.yaml and in the report. A storage that cannot work (an optuna older than
the sweeper needs, a file that is no study database, a study stored by optuna 2.10) stops the
command with one line and leaves no database file. The sweeper itself (hydra/sweeper=agop_optuna)
is tested in tests/test_optuna_sweeper.py.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aggregate_fakes import write_fake_run
from conftest import app_env

from agop_sweep.aggregate import aggregate
from agop_sweep.config import validate
from agop_sweep.run import search
from agop_sweep.run.search import (
    ExtendingTPESampler,
    StorageError,
    TrialRow,
    check_storage,
    derive_seed,
    study_trials,
    summary,
)
from agop_sweep.store.record import RunRecord

# A search that takes seconds per trial: tiny synthetic data, three epochs, no plots.
TINY = [
    "data=synthetic", "data.n_train=256", "data.n_val=64", "data.n_features=64",
    "data.image_shape=[1,8,8]", "model.width=16", "model.depth=2", "schedule=smoke",
    "trainer.plots=off", "device=cpu", "threads=1",
]
N_TRIALS = 2


def search_cmd(sweep: Path, *extra: str, preset: str = "sgd", n_trials: int = N_TRIALS) -> list[str]:
    return [sys.executable, "-m", "agop_sweep", "-m", f"hparams_search={preset}", *TINY,
            f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={sweep}",
            f"hydra.sweeper.storage=sqlite:///{sweep}/study.db", *extra]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=app_env(), capture_output=True, text=True, timeout=600)


def job_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/results.json"))


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sgd search, stored, run twice with the same command into the same sweep dir."""
    root = tmp_path_factory.mktemp("lr_search")
    sweep = root / "sweep"
    for attempt in (1, 2):
        proc = run(search_cmd(sweep), root)
        assert proc.returncode == 0, f"run {attempt}:\n{proc.stderr[-4000:]}"
        out = proc.stdout + proc.stderr
        assert "already holds a run" not in out and "AssertionError" not in out, out[-4000:]
    return sweep


# -- real searches -----------------------------------------------------------------------------
def test_same_command_twice_extends_the_study(extended: Path) -> None:
    trials = study_trials(f"sqlite:///{extended}/study.db", "lr_sgd")
    table = "\n".join(f"{t.number} {t.lr:.6g} {t.value} {t.state}" for t in trials)
    assert [t.state for t in trials] == ["COMPLETE"] * 2 * N_TRIALS, table
    lrs = [t.lr for t in trials]
    assert len(set(lrs)) == 2 * N_TRIALS, table
    assert all(0.003 <= lr <= 3.0 for lr in lrs)
    # One run per trial, each in a directory named after its lr, all completed.
    dirs = job_dirs(extended)
    assert len(dirs) == 2 * N_TRIALS
    records = [RunRecord.in_dir(d) for d in dirs]
    assert sorted(r.run["lr"] for r in records) == sorted(lrs)
    assert {r.status for r in records} == {"completed"}
    for r, d in zip(records, dirs, strict=True):
        assert f"optimizer.lr={r.run['lr']!r}" in d.name
        # The preset skips the analysis and keeps only the last epoch's checkpoint.
        assert r.analysis == [] and r.config["analysis"]["enabled"] is False
        assert r.config["schedule"]["checkpoints"] == [3]
        assert sorted(p.name.split(":")[0] for p in (d / "models").iterdir()) == ["model_epoch_3"]
    # A trial's value is its run's final val loss, the objective the app returns.
    values = {t.lr: t.value for t in trials}
    assert all(values[r.run["lr"]] == pytest.approx(r.last_epoch()["val_loss"]) for r in records)
    # The summary covers the whole study, and its best is the best trial.
    results = yaml.safe_load((extended / "optimization_results.yaml").read_text())
    best = min(trials, key=lambda t: t.value)
    assert results["best_params"] == {"optimizer.lr": best.lr}
    assert results["best_value"] == pytest.approx(best.value)
    assert results["all_diverged"] is False
    n = 2 * N_TRIALS
    assert results["trials"] == {"total": n, "complete": n, "diverged": 0, "failed": 0, "distinct_lrs": n}


def test_report_lists_the_best_lr(extended: Path, tmp_path: Path) -> None:
    out = tmp_path / "agg"
    summary_ = aggregate([extended], out)
    assert summary_.runs == 2 * N_TRIALS
    for ext in ("png", "pdf"):
        assert (out / f"lr_search.{ext}").stat().st_size > 1000
    report = (out / "report.md").read_text()
    trials = study_trials(f"sqlite:///{extended}/study.db", "lr_sgd")
    best = min(trials, key=lambda t: t.value)
    assert "## Learning-rate search" in report
    if best.value < 0.09:  # a trial beats chance (MSE of a constant prediction over 10 classes)
        n = 2 * N_TRIALS
        assert f"| sgd | {n} | {n} | 0 | 0 | **{best.lr:.4g}** | {best.value:.4g} | 0.09 |" in report
    else:  # a smoke search may not: no best lr is bolded, the lowest is named
        assert (f"none: no trial beats chance (lowest at {best.lr:.4g}) | {best.value:.4g} | 0.09 |"
                in report)
    assert "![final val loss against lr" in report and "(lr_search.png)" in report
    assert "Every trial diverged" not in report


def test_storage_mismatch_stops_with_one_line(tmp_path: Path) -> None:
    """An optuna older than the sweeper needs (2.10, left by hydra-optuna-sweeper, stopped with a
    bare AssertionError on SQLAlchemy 2 and left a broken database file): the command refuses
    before the storage is touched."""
    patch = ("import sys, agop_sweep.run.search as s\n"
             "s._version = lambda p: {'optuna': '2.10.1', 'sqlalchemy': '2.0.30'}.get(p)\n"
             "from agop_sweep.run.app import main\nsys.argv = ['agop_sweep'] + sys.argv[1:]\nmain()\n")
    sweep = tmp_path / "sweep"
    proc = run([sys.executable, "-c", patch, *search_cmd(sweep)[3:]], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "AssertionError" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "optuna 2.10.1 is too old" in lines[0] and "optuna>=4" in lines[0], proc.stderr
    assert not (sweep / "study.db").exists()
    assert job_dirs(sweep) == []


@pytest.mark.slow
def test_every_trial_diverged_is_said_plainly(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run(search_cmd(sweep, "optimizer.lr=tag(log,interval(1e5,1e6))", "model.act=tanh", n_trials=2),
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Every trial diverged (2 of 2)" in proc.stdout + proc.stderr
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["all_diverged"] is True
    assert results["best_params"] is None and results["best_value"] is None
    assert "no best learning rate" in results["message"]
    assert results["trials"]["diverged"] == 2
    assert {RunRecord.in_dir(d).status for d in job_dirs(sweep)} == {"diverged"}
    aggregate([sweep])
    report = (sweep / "report.md").read_text()
    assert "**Every trial diverged**: no val loss was finite, so there is no best learning rate" in report
    assert "none: all diverged" in report and (sweep / "lr_search.png").exists()


@pytest.mark.slow
def test_best_lr_per_optimizer(extended: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "adam"
    proc = run(search_cmd(sweep, preset="adam", n_trials=2), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    aggregate([extended, sweep], tmp_path / "agg")
    report = (tmp_path / "agg" / "report.md").read_text()
    section = report.split("## Learning-rate search")[1].split("Trials by lr")[0]
    for name, n in (("adam", 2), ("sgd", 2 * N_TRIALS)):  # a best lr, or none where no trial beats chance
        prefix = f"| {name} | {n} | {n} | 0 | 0 |"
        row = next(line for line in section.splitlines() if line.startswith(prefix))
        assert "**" in row or "no trial beats chance" in row


# -- the presets -------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["sgd", "adam", "muon"])
def test_presets_skip_the_analysis_and_early_checkpoints(compose_config, preset: str) -> None:
    for schedule, epochs in (("smoke", 3), ("short", 20), ("paper", 100)):
        cfg = compose_config(f"hparams_search={preset}", f"schedule={schedule}", return_hydra_config=True)
        assert cfg.optimizer.name == preset
        low, high = (float(v) for v in re.findall(r"\d[\d.e-]*", cfg.hydra.sweeper.params["optimizer.lr"]))
        assert low < cfg.optimizer.lr < high  # the space lies around the optimizer's default lr
        assert cfg.analysis.enabled is False
        assert list(cfg.schedule.checkpoints) == [epochs]
        assert cfg.hydra.sweeper.sampler._target_ == "agop_sweep.run.search.ExtendingTPESampler"
        assert cfg.hydra.callbacks.lr_search._target_ == "agop_sweep.run.search.LRSearch"
        validate(cfg)
    cfg = compose_config(f"hparams_search={preset}", "schedule.epochs=7")
    assert list(cfg.schedule.checkpoints) == [7]


# -- the sampler -------------------------------------------------------------------------------
def _ask(storage: str, seed: int, n: int) -> list[float]:
    import optuna  # after agop_sweep.run.search, which keeps its import warning quiet

    study = optuna.create_study(study_name="s", storage=storage, load_if_exists=True,
                                sampler=ExtendingTPESampler(seed=seed))
    lrs = []
    for _ in range(n):
        trial = study.ask()
        lr = trial.suggest_float("optimizer.lr", 1e-3, 1.0, log=True)
        study.tell(trial, abs(lr - 0.05))
        lrs.append(lr)
    return lrs


def test_sampler_proposes_new_lrs_when_the_study_grows(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/a.db"
    first, second, third = _ask(storage, 1, 3), _ask(storage, 1, 3), _ask(storage, 1, 12)
    assert len(set(first + second + third)) == 18
    assert _ask(f"sqlite:///{tmp_path}/b.db", 1, 3) == first  # a new study: the same lrs again
    assert derive_seed(5, 0) == 5 and derive_seed(None, 4) is None
    assert len({derive_seed(5, n) for n in range(50)}) == 50


# -- the storage -------------------------------------------------------------------------------
def test_check_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna

    nested = tmp_path / "a" / "b" / "study.db"
    check_storage(f"sqlite:///{nested}")  # creates the directory and a valid study database
    optuna.create_study(study_name="x", storage=f"sqlite:///{nested}")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(StorageError, match=r"not a usable optuna .* delete it or give another file"):
        check_storage(f"sqlite:///{garbage}")
    assert garbage.read_bytes() == b"not a database" * 100  # someone else's file: left alone
    monkeypatch.setattr(search, "_version", {"optuna": "2.10.1", "sqlalchemy": "2.0.1"}.get)
    fresh = tmp_path / "fresh.db"
    with pytest.raises(StorageError, match=r"optuna 2\.10\.1 is too old .* \(pip install '\.\[cluster\]'\)"):
        check_storage(f"sqlite:///{fresh}")
    assert not fresh.exists()


def test_a_database_from_a_failed_start_opens(tmp_path: Path) -> None:
    """A file that optuna set up without its alembic revision (as the SQLAlchemy 2 failure
    left it) is usable again."""
    import optuna

    db = tmp_path / "study.db"
    check_storage(f"sqlite:///{db}")
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM alembic_version")
    check_storage(f"sqlite:///{db}")
    study = optuna.create_study(study_name="x", storage=f"sqlite:///{db}")
    study.tell(study.ask(), 1.0)


def test_a_study_stored_by_optuna_2_is_upgraded_with_one_command(tmp_path: Path) -> None:
    """A study database of the earlier presets (optuna 2.10's schema) is refused with the
    command that upgrades it; after it, the study opens."""
    import optuna

    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(study_name="lr_sgd", storage=url)
    study.tell(study.ask(), 1.0)
    with sqlite3.connect(db) as con:  # what optuna 2.10.1 left: its schema revision and version
        con.execute("UPDATE alembic_version SET version_num = 'v2.6.0.a'")
        con.execute("UPDATE version_info SET library_version = '2.10.1'")
    with pytest.raises(StorageError, match=re.escape(
            f"set up by optuna 2.10.1; upgrade it once to optuna {optuna.__version__}'s schema with: "
            f"optuna storage upgrade --storage {url}")):
        check_storage(url)
    optuna.storages.RDBStorage(url, skip_compatibility_check=True).upgrade()
    check_storage(url)
    assert len(study_trials(url, "lr_sgd")) == 1


# -- the summary -------------------------------------------------------------------------------
INF = float("inf")


def test_summary_when_every_trial_diverged() -> None:
    plugin = {"name": "optuna", "best_params": {"optimizer.lr": 3e5}, "best_value": INF}
    stored = summary(plugin, [TrialRow(0, 3e5, INF, "COMPLETE"), TrialRow(1, 5e5, INF, "COMPLETE")])
    assert stored["all_diverged"] is True and stored["best_params"] is None and stored["best_value"] is None
    assert stored["message"].startswith("Every trial diverged (2 of 2)")
    assert summary(plugin, None)["all_diverged"] is True  # in memory: best value +inf says it
    mixed = summary({**plugin, "best_value": 0.5}, [TrialRow(0, 3e5, INF, "COMPLETE"),
                                                    TrialRow(1, 0.1, 0.5, "COMPLETE"),
                                                    TrialRow(2, 0.2, None, "FAIL")])
    assert mixed["all_diverged"] is False and mixed["best_value"] == 0.5 and "message" not in mixed
    assert mixed["trials"] == {"total": 3, "complete": 2, "diverged": 1, "failed": 1, "distinct_lrs": 3}


def _fake_search(root: Path, optimizer: str, trials: dict[float, float | None]) -> None:
    """Runs as a search writes them; ``trials``: lr -> final val loss (None: diverged)."""
    for lr, val_loss in trials.items():
        overrides = [f"optimizer.lr={lr}", f"hparams_search={optimizer}", "data=synthetic"]
        run_dir = root / ",".join(sorted(overrides))
        write_fake_run(run_dir, optimizer, 1, overrides, lr=lr)
        data = json.loads((run_dir / "results.json").read_text())
        data["epochs"][-1].update(val_loss=val_loss)
        if val_loss is None:
            data["epochs"][-1].update(train_loss=None)
            data.update(status="diverged", diverged_epoch=data["epochs"][-1]["epoch"])
        (run_dir / "results.json").write_text(json.dumps(data))


def test_report_of_mixed_searches(tmp_path: Path, saved_figures: list[str]) -> None:
    _fake_search(tmp_path, "sgd", {1e5: None, 3e5: None})
    _fake_search(tmp_path, "adam", {0.001: 0.09, 0.003: 0.07, 0.01: 0.08, 10.0: None})
    aggregate([tmp_path], figures=True)
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Learning-rate search")[1].split("## ")[0]
    assert "**Every trial diverged** in sgd (2 of 2): it has no best learning rate" in section
    assert "| sgd | 2 | 0 | 2 | 0 | none: all diverged |  |" in section
    assert "| adam | 4 | 3 | 1 | 0 | **0.003** | 0.07 |" in section
    assert "| adam | 10 | diverged | inf |" in section and "| adam | 0.01 | completed | 0.08 |" in section
    assert "lr_search" in saved_figures and "(lr_search.png)" in section
    # Runs that no search launched get no such section, nor its figure.
    other = tmp_path / "plain"
    write_fake_run(other / "optimizer=sgd", "sgd", 1, ["optimizer=sgd"])
    saved_figures.clear()
    aggregate([other])
    assert "Learning-rate search" not in (other / "report.md").read_text()
    assert saved_figures and "lr_search" not in saved_figures
