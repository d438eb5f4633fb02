"""The smaller points of issue 22: each a wrong message or a silent oddity, reproduced (commands
that stop before training run in this process: conftest.app_here).

- a full disk during ``analyze`` advises running the analysis again, not ``resume=true``;
- a truncated state.pt's advice ("delete it, resume again") works, for an unfinished and a
  finished run;
- a resumed run's checkpoints equal an uninterrupted run's, config included;
- a run or sweep dir inside another run's dir is refused;
- a run dir with a 300-character name is one line, without Python's UserWarning;
- a read-only MLflow store is one warning line that says so and names it;
- a config error is one line on stderr, without Hydra's "Error executing job" line;
- the configuration reference names trainer.precision's values as the schema has them;
- a second sweep into a sweep dir is refused unless it continues that sweep.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY, app_env, copy_of, numbers, run_app, run_cli, tiny, tree_digest

from agop_sweep.config.schema import Precision
from agop_sweep.store import lock

ROOT = Path(__file__).resolve().parent.parent

# Exits the process right after state.pt for epoch 2 is saved: a run killed after epoch 1.
KILL_AFTER_EPOCH_1 = (
    "import os, agop_sweep.store.state as st\n"
    "_save = st.save_state\n"
    "def save_state(run_dir, state):\n"
    "    _save(run_dir, state)\n"
    "    if state.next_epoch == 2:\n"
    "        os._exit(9)\n"
    "st.save_state = save_state\n"
)


def only_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The refusal's stderr, which must be exactly one line (no frame around it), exit 1."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def same(a: Any, b: Any) -> bool:
    """Deep equality of loaded checkpoints: tensors by value, everything else by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The command of conftest's finished_run, killed after epoch 1's state.pt: results.json
    says running."""
    root = tmp_path_factory.mktemp("interrupted")
    proc = run_app(*tiny("trainer.plots=end"), f"hydra.run.dir={root / 'run'}", cwd=root,
                   patch=KILL_AFTER_EPOCH_1)
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert json.loads((root / "run" / "results.json").read_text())["status"] == "running"
    return root / "run"


# -- a: a full disk during analyze ----------------------------------------------------------------
@pytest.mark.parametrize("fails", ["results.json", "plots"])
def test_a_full_disk_in_analyze_says_analyse_again(fails: str, finished_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """ENOSPC at the first file analyze writes (results.json) or at the figures, after it: one
    line naming the file and the command that redoes the analysis; that command then works."""
    from agop_sweep.analyze.command import main
    from agop_sweep.store import atomic

    run = copy_of(finished_run, tmp_path)
    before = (run / "results.json").read_bytes()
    replace = os.replace

    def full(src: Any, dst: Any) -> None:
        if fails in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    # As in a fresh process: no handler that an earlier test (Hydra) left on a closed stream.
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    with pytest.raises(SystemExit) as stop:
        main([str(run)])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err, err
    lines = [ln for ln in err.splitlines() if not re.match(r"\[[\d-]+ [\d:,]+\]\[", ln)]  # not log records
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"agop-analyze: error: No space left on the device while writing {run}/{fails}"
                               ), lines[0]
    assert "resume=true" not in lines[0]
    command = lines[0].split("then analyse the run again: ")[1]
    assert command == f"python -m agop_sweep.analyze {run}"
    if fails == "results.json":
        assert (run / "results.json").read_bytes() == before  # the previous version is intact
    monkeypatch.undo()
    main(shlex.split(command)[3:])  # the advice, followed
    assert json.loads((run / "results.json").read_text())["reanalyses"][-1]["complete"] is True
    assert (run / "plots" / "training_analysis.png").is_file()


# -- b: a truncated state.pt -----------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_state_pt_of_an_unfinished_run_restarts_as_advised(interrupted: Path, finished_run: Path,
                                                                       tmp_path: Path, app_here) -> None:
    run = copy_of(interrupted, tmp_path)
    _truncate(run / "state.pt")
    before = tree_digest(run)
    line = only_line(app_here(*TINY, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path))
    assert line.startswith(f"{run}/state.pt cannot be read (")
    assert "delete it and run the same command with resume=true again" in line
    assert tree_digest(run) == before  # a refusal writes nothing
    (run / "state.pt").unlink()  # the advice, followed
    proc = app_here(*TINY, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "restarting the run from epoch 0 in place" in proc.stdout + proc.stderr
    got, want = (json.loads((d / "results.json").read_text()) for d in (run, finished_run))
    assert got["status"] == "completed" and numbers(got) == numbers(want)


def test_a_truncated_state_pt_of_a_finished_run_is_left_as_advised(finished_run: Path,
                                                                   tmp_path: Path, app_here) -> None:
    run = copy_of(finished_run, tmp_path)
    _truncate(run / "state.pt")
    line = only_line(app_here(*TINY, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path))
    assert "a finished one stays as it is" in line
    (run / "state.pt").unlink()
    before = tree_digest(run)
    proc = app_here(*TINY, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already completed; nothing to do" in proc.stdout + proc.stderr
    assert tree_digest(run) == before


# -- c: checkpoints of a resumed run ---------------------------------------------------------------
def test_a_resumed_runs_checkpoints_equal_an_uninterrupted_runs(interrupted: Path, finished_run: Path,
                                                                tmp_path: Path, app_here) -> None:
    run = copy_of(interrupted, tmp_path)
    written_before = {p.name for p in (run / "models").iterdir()}
    proc = app_here(*TINY, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (finished_run / "models").iterdir())
    assert names == sorted(p.name for p in (run / "models").iterdir())
    assert set(names) - written_before, "the resume wrote no checkpoint: this tested nothing"
    for name in names:
        a, b = (torch.load(d / "models" / name, weights_only=True) for d in (finished_run, run))
        assert a["config"]["resume"] is False and b["config"] == a["config"], name
        assert same(a, b), name
    # A checkpoint holds the config results.json records.
    assert b["config"] == json.loads((run / "results.json").read_text())["config"]


# -- d: a run dir inside another run's ---------------------------------------------------------------
@pytest.mark.parametrize("where", ["inner", "models/inner", ".hydra/x/y"])
def test_a_run_dir_inside_another_runs_is_refused(where: str, finished_run: Path, tmp_path: Path,
                                                  app_here) -> None:
    run = copy_of(finished_run, tmp_path)
    before = tree_digest(run)
    line = only_line(app_here(*TINY, f"hydra.run.dir={run / where}", cwd=tmp_path))
    assert line == (f"The run directory {run / where} lies inside the run directory {run}, whose files it "
                    "would mix with; choose a hydra.run.dir outside any run's directory")
    assert tree_digest(run) == before


def test_a_sweep_dir_in_a_run_dir_is_refused(finished_run: Path, tmp_path: Path, app_here) -> None:
    run = copy_of(finished_run, tmp_path)
    before = tree_digest(run)
    for sweep, where in ((run, "holds a run"), (run / "sweep", f"lies inside the run directory {run}")):
        line = only_line(app_here("-m", *TINY, "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path))
        assert line.startswith(f"The sweep directory {sweep} {where}, whose files it would mix with"), line
    assert tree_digest(run) == before


def test_a_foreign_results_json_above_is_no_run(tmp_path: Path) -> None:
    """Only an agop_sweep record makes a run dir: a project's own results.json does not."""
    from agop_sweep.run.guard import enclosing_run

    (tmp_path / "results.json").write_text('{"accuracy": 0.9}')
    assert enclosing_run(tmp_path / "outputs" / "run") is None


# -- e: a name too long for the file system ------------------------------------------------------------
@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_a_300_character_dir_is_one_line(mode: str, tmp_path: Path) -> None:
    long = tmp_path / ("a" * 300)
    args = [*TINY, f"hydra.run.dir={long}"] if mode == "run" else [
        "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={long}"]
    line = only_line(run_cli(*args, cwd=tmp_path))
    assert line == f"Cannot use the output location {long}: File name too long; choose a shorter path"
    assert list(tmp_path.iterdir()) == []


# -- f: a read-only MLflow store -----------------------------------------------------------------------
@pytest.mark.parametrize("store", ["existing", "new"])
def test_a_read_only_mlflow_store_is_one_warning(store: str, tmp_path: Path, read_only,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported
    monkeypatch.chdir(tmp_path)  # the client's default artifact root is ./mlruns
    pytest.importorskip("mlflow")
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    db = shelf.resolve() / "mlflow.db"
    if store == "existing":  # a store with MLflow's schema, and its lock, before it became read-only
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
        (shelf / "mlflow.db.lock").touch()
        read_only(db)
    read_only(shelf)
    run = tmp_path / "run"
    proc = run_cli(*TINY, "logger=mlflow", f"logger.tracking_uri=sqlite:///{db}",
                   f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a tracker never fails the run
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "autoflush" not in out, out[-3000:]
    others = [ln for ln in out.splitlines() if "][INFO] - " not in ln]
    assert len(others) == 1, out[-3000:]
    assert others[0].endswith(f"ReadOnlyStore: the store {db} is read-only ("
                              + ("attempt to write a readonly database" if store == "existing" else
                                 f"{os.strerror(errno.EPERM if os.geteuid() == 0 else errno.EACCES)}: "
                                 f"{db}.lock") + "); give logger.tracking_uri a writable one"), others[0]
    assert json.loads((run / "results.json").read_text())["status"] == "completed"
    if store == "existing":
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            assert con.execute("select count(*) from runs").fetchone() == (0,)


# -- g: a config error is one line (the command's stderr: tests/test_config_cli.py) ---------------------
@pytest.mark.parametrize(("extra", "expected"), [
    (["model.width=-3"], "Invalid config: model.width=-3: must be >= 1"),
    (["seed=-1"], "Invalid config: seed=-1: must be an integer in [0, 2**63 - 1]"),
])
def test_a_config_error_is_exactly_one_line(extra: list[str], expected: str, compose_config) -> None:
    from agop_sweep.config import validate
    from agop_sweep.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(compose_config(*extra))
    assert str(err.value) == expected


def test_hydra_full_error_keeps_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agop_sweep", *TINY, "model.width=-3",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          env={**app_env(), "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith("Traceback") and "During handling" not in proc.stderr, proc.stderr
    assert proc.stderr.rstrip().endswith("ConfigError: Invalid config: model.width=-3: must be >= 1")


# -- h: the configuration reference (docs/, generated by docs/hooks.py) --------------------------------------
def test_the_reference_names_the_precision_that_experiment_seed_sets() -> None:
    spec = importlib.util.spec_from_file_location("agop_sweep_docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    reference = hooks.reference_markdown()
    preset = yaml.safe_load((ROOT / "conf" / "experiment" / "seed.yaml").read_text())
    experiment = reference[reference.index("### `experiment=seed`"):].split("\n## ")[0]
    assert f"`trainer.precision={preset['trainer']['precision']}`" in experiment
    row = next(line for line in reference.splitlines() if line.startswith("| `trainer.precision` |"))
    assert all(f"`{p.value}`" in row for p in Precision), row


# -- i: two sweeps into one dir ------------------------------------------------------------------------------
def test_a_second_sweep_into_a_sweep_dir_is_refused_unless_it_continues(tmp_path: Path, app_here) -> None:
    sweep = tmp_path / "sweep"
    base = ["-m", *TINY, f"hydra.sweep.dir={sweep}"]
    first = run_cli(*base, "seed=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    multirun = (sweep / "multirun.yaml").read_bytes()
    before = tree_digest(sweep)

    line = only_line(app_here(*base, "seed=2", cwd=tmp_path))
    assert line.startswith(f"{sweep} already holds a sweep (") and "seed=1" in line
    assert line.endswith("continue it with the same overrides and resume=true, or choose another "
                         "hydra.sweep.dir"), line
    line = only_line(app_here(*base, "seed=1", cwd=tmp_path))  # the same sweep, but no resume=true
    assert "already holds a sweep" in line
    line = only_line(app_here(*base, "seed=2", "resume=true", cwd=tmp_path))
    assert line.startswith(f"resume=true but {sweep} holds another sweep (") and "differs in seed" in line
    # Another command launching into the dir now holds its lock: refused, even the same sweep.
    held = lock.acquire(sweep)
    try:
        line = only_line(app_here(*base, "seed=1", "resume=true", cwd=tmp_path))
    finally:
        os.close(held)
    assert line == (f"{sweep} is in use by another command launching a sweep into it; wait until that "
                    "one ends, or choose another hydra.sweep.dir")
    assert tree_digest(sweep) == before and (sweep / "multirun.yaml").read_bytes() == multirun

    # The same sweep continued, with a run-control key changed: it runs (nothing left to do).
    again = app_here(*base, "seed=1", "resume=true", "threads=1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    os.close(lock.acquire(sweep))  # the command let go of the sweep dir when its sweep ended
    assert "nothing to do" in again.stdout + again.stderr
    assert yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"][-3:] == [
        "seed=1", "resume=true", "threads=1"]


def test_the_sweep_check_compares_experiments_not_text() -> None:
    from agop_sweep.run.guard import experiment_overrides

    a = experiment_overrides(["optimizer=sgd,adam", "seed=1", "resume=true", "cluster=joblib"])
    assert a == experiment_overrides(["seed=1", "optimizer=adam,sgd", "threads=2"])
    assert a != experiment_overrides(["optimizer=sgd,adam,muon", "seed=1"])

