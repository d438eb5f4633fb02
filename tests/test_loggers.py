"""The ``logger`` group: TensorBoard, MLflow and W&B hold every number of results.json, read
back through the trackers' own readers (EventAccumulator, MlflowClient, the MLflow server's REST
API, W&B's .wandb files), once per epoch, also across a kill -9 and a resume; a parallel sweep
(conftest's tracker_sweep) shares one SQLite store and names its runs after the key that varies;
a missing package stops a run with one line; a failing tracker never fails a run. More of W&B:
tests/test_wandb.py; names: test_tracker_names.py."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TrackerSweep, app_env, one_line_error, run_cli

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before mlflow is imported

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")
pytest.importorskip("wandb")

from tracker_readers import (
    ARGS,
    assert_once_each,
    expected,
    free_port,
    get_json,
    kill_after_epoch_2,
    mlflow_metrics,
    mlflow_runs,
    run_app,
    stop_group,
    tensorboard_scalars,
    tensorboard_text,
    wandb_offline,
    wandb_scalars,
    warnings_in,
)

from agop_sweep.trackers.wandb import run_id_for
from agop_sweep.trackers.wandb_files import read_run, run_files


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module's runs (creating one costs seconds)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


# -- the config group ------------------------------------------------------------------------------


def test_logger_options_compose(compose_config) -> None:
    def flags(*overrides: str) -> tuple[bool, bool, bool]:
        cfg = compose_config(*overrides)
        return cfg.logger.tensorboard, cfg.logger.mlflow, cfg.logger.wandb

    assert flags() == flags("logger=none") == (False, False, False)
    assert flags("logger=tensorboard") == (True, False, False)
    assert flags("logger=mlflow") == (False, True, False)
    assert flags("logger=wandb") == (False, False, True)
    assert flags("logger=both") == flags("logger=[tensorboard,mlflow]") == (True, True, False)
    assert flags("logger=[tensorboard,wandb]") == (True, False, True)
    assert flags("logger=[wandb,mlflow,tensorboard]") == (True, True, True)
    cfg = compose_config("logger=wandb", "logger.wandb_project=nfa", "logger.wandb_entity=lab")
    assert (cfg.logger.wandb_project, cfg.logger.wandb_entity) == ("nfa", "lab")
    cfg = compose_config("logger=[mlflow,tensorboard]", "logger.tracking_uri=sqlite:///x.db")
    assert cfg.logger.tracking_uri == "sqlite:///x.db" and cfg.logger.tensorboard
    hydra = compose_config("logger=both", "seed=3", return_hydra_config=True).hydra
    assert hydra.job.override_dirname == "seed=3"  # a run-control key: not in dir names


@pytest.mark.parametrize("extra", ["tensorboard", "mlflow", "wandb"])
def test_a_missing_package_stops_the_run_with_one_line(tmp_path: Path, extra: str) -> None:
    block = f"import sys\nsys.modules[{extra!r}] = None  # import {extra} fails\n"
    proc = run_app(tmp_path, f"logger={extra}", f"hydra.run.dir={tmp_path / 'run'}", code=block)
    line = one_line_error(proc)
    assert f"pip install 'agop_sweep[{extra}]'" in line and f"logger={extra}" in line
    assert not (tmp_path / "run" / "models").exists()  # nothing trained


def test_outputs_store_and_experiment_names(tmp_path: Path, monkeypatch) -> None:
    from agop_sweep.trackers.base import group_label, run_context
    from agop_sweep.trackers.mlflow import default_tracking_uri

    job = tmp_path / "outputs" / "multirun" / "2026-01-01" / "12-00-00" / "seed=1"
    db = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    assert default_tracking_uri(job) == db
    assert group_label(job.parent) == "outputs/multirun/2026-01-01/12-00-00"
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(tmp_path / "elsewhere" / "run") == db  # ./outputs
    ctx = run_context(job)  # outside a Hydra job: named after its dir
    assert (ctx.name, ctx.group) == ("seed=1", job.parent)
    # A run dir in the current directory: its group is that directory, not ".".
    assert group_label(tmp_path) == tmp_path.resolve().as_posix()
    assert run_context(tmp_path / "run").group == tmp_path.resolve()


# -- what the trackers hold --------------------------------------------------------------------------


def test_a_joblib_sweep_logs_its_runs_into_one_store(tracker_sweep: TrackerSweep, tmp_path: Path) -> None:
    """Two jobs at once into the default store, outputs/mlflow.db, and into W&B (offline):
    every number of each results.json once in each tracker; runs named after the key that varies
    (``optimizer=adam``), in MLflow, W&B and TensorBoard (``--logdir <sweep dir>``), each with
    all of its overrides as a tag; each MLflow run holds its config, figures and results.json."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    sweep, proc = tracker_sweep.dir, tracker_sweep.proc
    assert not warnings_in(proc), proc.stderr[-3000:]
    store = f"sqlite:///{sweep.parents[1] / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    runs = mlflow_runs(store, "outputs/multirun/sweep")
    names = ["optimizer=sgd", "optimizer=adam"]
    assert sorted(r.info.run_name for r in runs) == sorted(names)
    for run in runs:
        run_dir = Path(run.data.tags["run_dir"])
        assert run_dir.parent == sweep and run.data.tags["status"] == "completed"
        assert run.info.status == "FINISHED"
        overrides = run.data.tags["overrides"].split()
        assert run.info.run_name in overrides and "seed=5" in overrides and "model.width=16" in overrides
        assert "seed=5" in run_dir.name  # the job's dir: all of its overrides
        want = expected(run_dir)
        assert_once_each(mlflow_metrics(store, run.info.run_id), want, rel=1e-12)
        assert_once_each(tensorboard_scalars(sweep / "tensorboard" / run.info.run_name), want, rel=1e-6)
        assert tensorboard_text(sweep / "tensorboard" / run.info.run_name, "status") == ["completed"]
        (text,) = tensorboard_text(sweep / "tensorboard" / run.info.run_name, "run")
        assert text.endswith(f"overrides: {run.data.tags['overrides']}")
        started = json.loads((run_dir / "results.json").read_text())["timing"]["started_at"]
        log = read_run(run_files(tracker_sweep.wandb_dir / "wandb", run_id_for(f"{run_dir}@{started}")))
        (wandb_run,) = log.runs  # one W&B run per job, named and grouped as in MLflow
        assert (wandb_run.display_name, wandb_run.run_group) == (run.info.run_name, "outputs/multirun/sweep")
        assert_once_each(wandb_scalars(log.history), want, rel=1e-12)
        assert not (run_dir / "tensorboard").exists()
        # The config as params, the figures and results.json as artifacts.
        config = json.loads((run_dir / "results.json").read_text())["config"]
        params = run.data.params
        assert params["optimizer.name"] == config["optimizer"]["name"] == run.info.run_name.split("=")[1]
        assert params["model.width"] == "16" and params["seed"] == str(config["seed"]) == "5"
        files = {f.path for f in client.list_artifacts(run.info.run_id)}
        files |= {f.path for f in client.list_artifacts(run.info.run_id, "plots")}
        assert {"results.json", "plots/training_analysis.png", "plots/training_analysis.pdf",
                "plots/features.png", "plots/features.pdf"} <= files
        local = Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path)))
        assert json.loads(local.read_text()) == json.loads((run_dir / "results.json").read_text())
    mux = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    assert sorted(mux.Runs()) == sorted(f"tensorboard/{name}" for name in names)


# -- resume, failures --------------------------------------------------------------------------------


def test_kill9_then_resume_logs_every_epoch_once(tmp_path: Path, store: str, monkeypatch) -> None:
    """Every tracker on; kill -9 once all three have logged epoch 2, which state.pt, saved before
    they ran, counts as not logged; resume=true: the same runs continued, each number once. W&B
    writes its file 32 KiB at a time, so of epochs 0 to 2 it holds whatever it had written."""
    wandb_dir = wandb_offline(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    args = ["logger=[tensorboard,mlflow,wandb]", f"logger.tracking_uri={store}", "logger.experiment=resumed",
            f"hydra.run.dir={run_dir}"]
    killed = run_app(tmp_path, *args, code=kill_after_epoch_2(flush=False))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "running", "the kill did not interrupt the run"
    assert [e["epoch"] for e in results["epochs"]] == [0, 1, 2]
    assert max(step for step, _ in tensorboard_scalars(run_dir / "tensorboard")["loss/train"]) == 2
    (run,) = mlflow_runs(store, "resumed")
    assert max(step for step, _ in mlflow_metrics(store, run.info.run_id)["loss/train"]) == 2
    run_id = run_id_for(f"{run_dir}@{results['timing']['started_at']}")
    first = run_files(wandb_dir / "wandb", run_id)
    assert {step for step, _ in read_run(first).history} <= {0, 1, 2}
    resumed = run_cli(*ARGS, *args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not warnings_in(resumed), (resumed.stdout + resumed.stderr)[-3000:]
    want = expected(run_dir)
    assert max(want["loss/train"]) == 3
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert_once_each(tensorboard_scalars(run_dir / "tensorboard"), want, rel=1e-6)
    (run,) = mlflow_runs(store, "resumed")  # the same run continued
    assert_once_each(mlflow_metrics(store, run.info.run_id), want, rel=1e-12)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert "(continued)" in resumed.stdout
    files = run_files(wandb_dir / "wandb", run_id)
    assert len(files) == 2 and files[0] == first[0]  # a second process, the same W&B run
    log = read_run(files)
    assert_once_each(wandb_scalars(log.history), want, rel=1e-12)
    assert log.summary["status"] == "completed"


@pytest.mark.slow
def test_kill9_at_a_random_moment_then_resume_logs_every_epoch_once(tmp_path: Path, store: str) -> None:
    """kill -9 from outside, once the run has logged some epochs, then resume=true."""
    run_dir = tmp_path / "run"
    args = [*ARGS, "data.n_train=2048", "trainer.batch_size=16", "schedule.epochs=6",
            "schedule.checkpoints=[0,2,4,6]", "logger=both", f"logger.tracking_uri={store}",
            "logger.experiment=killed", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "agop_sweep", *args], cwd=tmp_path, env=app_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            if len(json.loads((run_dir / "results.json").read_text())["epochs"]) >= 3:
                break
        except (OSError, ValueError, KeyError):
            continue
    time.sleep(random.uniform(0.0, 1.0))
    assert proc.poll() is None, "the run ended before the kill: this test tested nothing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "running"
    resumed = run_cli(*args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = expected(run_dir)
    assert max(want["loss/train"]) == 6
    assert_once_each(tensorboard_scalars(run_dir / "tensorboard"), want, rel=1e-6)
    (run,) = mlflow_runs(store, "killed")
    assert_once_each(mlflow_metrics(store, run.info.run_id), want, rel=1e-12)


def test_a_tracker_that_is_gone_warns_once_and_the_run_completes(tmp_path: Path) -> None:
    port = free_port()  # no server listens there
    run_dir = tmp_path / "run"
    proc = run_cli(*ARGS, "logger=both", f"logger.tracking_uri=http://127.0.0.1:{port}",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (warning,) = warnings_in(proc)
    assert "MLflow" in warning and "off for the rest of this run" in warning
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    assert_once_each(tensorboard_scalars(run_dir / "tensorboard"), expected(run_dir), rel=1e-6)


def test_failing_log_calls_turn_each_tracker_off_with_one_warning(
        compose_config, tmp_path: Path, store: str, monkeypatch, caplog) -> None:
    """A full disk under TensorBoard and a store that fails from epoch 2 on, in-process."""
    import torch
    from mlflow import MlflowClient
    from torch.utils.tensorboard import SummaryWriter

    from agop_sweep.config import to_container
    from agop_sweep.run.device import Placement
    from agop_sweep.run.trainer import Trainer
    from agop_sweep.store.rundir import claim
    from agop_sweep.trackers import build_trackers

    def fail_from_epoch_2(original, step_of):
        def call(self, *args, **kwargs):
            if step_of(*args, **kwargs) >= 2:
                raise OSError(28, "No space left on device")
            return original(self, *args, **kwargs)
        return call

    monkeypatch.setattr(SummaryWriter, "add_scalar", fail_from_epoch_2(
        SummaryWriter.add_scalar, lambda tag, value, step, *a, **k: step))
    monkeypatch.setattr(MlflowClient, "log_batch", fail_from_epoch_2(
        MlflowClient.log_batch, lambda run_id, metrics=(), **k: max((m.step for m in metrics), default=0)))
    cfg = compose_config(*ARGS, "logger=both", f"logger.tracking_uri={store}", "logger.experiment=failing")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING), claim(run_dir, to_container(cfg), False) as claimed:
        Trainer(cfg, run_dir, Placement("cpu", torch.get_num_threads()),
                observers=build_trackers(cfg, run_dir)).run(claimed.state)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 2, warned
    assert "TensorBoard logging failed" in warned[0] and "MLflow logging failed" in warned[1]
    assert "No space left on device" in warned[0]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and [e["epoch"] for e in results["epochs"]] == [0, 1, 2, 3]
    assert max(step for step, _ in tensorboard_scalars(run_dir / "tensorboard")["loss/train"]) == 1
    (run,) = mlflow_runs(store, "failing")
    assert sorted(s for s, _ in mlflow_metrics(store, run.info.run_id)["loss/train"]) == [0, 1]


def test_a_failed_run_is_tagged_failed(tmp_path: Path, store: str) -> None:
    from agop_sweep.run.observers import EpochEnd
    from agop_sweep.store.record import RunRecord
    from agop_sweep.trackers.base import RunContext
    from agop_sweep.trackers.mlflow import MlflowTracker
    from agop_sweep.trackers.tensorboard import TensorBoardTracker

    config = {"seed": 1, "optimizer": {"lr": 0.1}}
    record = RunRecord.start({"optimizer": "sgd"}, config, tmp_path / "results.json")
    entry = {"epoch": 0, "train_loss": 0.5, "val_loss": None, "train_acc": 0.1, "val_acc": 0.2,
             "seconds": 1.0}
    record.finish_epoch(entry)
    ctx = RunContext(tmp_path, "seed=1", tmp_path.parent)
    trackers = [TensorBoardTracker(ctx), MlflowTracker(ctx, store, "failed")]
    for tracker in trackers:
        tracker.on_epoch_end(EpochEnd(0, 5, entry, None, record, tmp_path, False))
    record.mark_failed("RuntimeError: boom")
    record.save()
    for tracker in trackers:
        tracker.on_run_end(record, tmp_path)
    assert tensorboard_text(tmp_path / "tensorboard", "status") == ["failed"]
    (run,) = mlflow_runs(store, "failed")
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.tags["error"] == "RuntimeError: boom"
    assert mlflow_metrics(store, run.info.run_id) == {"loss/train": [(0, 0.5)], "acc/train": [(0, 0.1)],
                                                      "acc/val": [(0, 0.2)], "time/epoch_seconds": [(0, 1.0)]}


# -- a real MLflow server --------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_server_serves_a_finished_run(tmp_path: Path) -> None:
    """In the test environment itself: the mlflow extra brings SQLAlchemy 2, which the server needs."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        cwd=tmp_path, env=app_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "mlflow server did not start in 180 s"
                time.sleep(1)
        run_dir = tmp_path / "run"
        proc = run_cli(*ARGS, "logger=mlflow", f"logger.tracking_uri={base}", "logger.experiment=served",
                       f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert not warnings_in(proc), proc.stderr[-3000:]
        experiment = get_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served")
        experiment_id = experiment["experiment"]["experiment_id"]
        body = json.dumps({"experiment_ids": [experiment_id]}).encode()
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            (run,) = json.loads(response.read())["runs"]
        assert run["info"]["status"] == "FINISHED"
        assert {t["key"]: t["value"] for t in run["data"]["tags"]}["status"] == "completed"
        run_id = run["info"]["run_id"]
        logged = {}
        for key in expected(run_dir):
            history = get_json(f"{base}/api/2.0/mlflow/metrics/get-history?run_id={run_id}&metric_key={key}")
            logged[key] = [(int(m.get("step", 0)), m["value"]) for m in history["metrics"]]
        assert_once_each(logged, expected(run_dir), rel=1e-12)
        artifacts = get_json(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}")
        assert "results.json" in {f["path"] for f in artifacts["files"]}
    finally:
        stop_group(server)
        log.close()
