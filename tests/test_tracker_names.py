"""Tracker run names (agop_sweep/trackers/naming.py): the keys that vary within a sweep, in
the sweep's order, handed to the jobs by the SweepKeys callback; TensorBoard's named log dirs.
The end-to-end sweep (MLflow's and TensorBoard's run lists) is in test_loggers.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agop_sweep.trackers.base import RunContext
from agop_sweep.trackers.naming import (
    SWEEP_KEYS_ENV,
    SweepKeys,
    sweep_keys_from_env,
    sweep_run_name,
    varying_keys,
)
from agop_sweep.trackers.tensorboard import RUN_KEY_FILE, choose_logdir, named_logdir


def test_the_keys_that_vary_in_the_sweeps_order() -> None:
    line = ["data=digits", "optimizer=sgd,adam,muon", "model.width=256", "seed=1,2", "schedule=short"]
    assert varying_keys(line) == ["optimizer", "seed"]
    assert varying_keys(["seed=3", "optimizer=adam"]) == []  # one value each: nothing varies
    assert varying_keys(["seed=choice(1)", "model.width=range(16,48,16)"]) == ["model.width"]
    assert varying_keys(["+extra=1,2", "~dropped"]) == ["extra"]


def test_a_search_varies_its_params_unless_the_command_line_fixes_them() -> None:
    params = {"optimizer.lr": "tag(log, interval(0.003, 3.0))"}
    assert varying_keys(["data=digits"], params) == ["optimizer.lr"]
    assert varying_keys(["optimizer.lr=0.1"], params) == []  # fixed on the command line
    # A key that both give: the command line's value, in the command line's place.
    assert varying_keys(["seed=1,2", "optimizer.lr=0.1,0.2"], params) == ["seed", "optimizer.lr"]


def test_a_job_is_named_by_the_varying_keys_in_order() -> None:
    job = ["data=digits", "seed=2", "optimizer=adam", "model.width=256"]
    assert sweep_run_name(["optimizer"], job) == "optimizer=adam"
    assert sweep_run_name(["optimizer", "seed"], job) == "optimizer=adam,seed=2"
    assert sweep_run_name(["optimizer.lr"], ["optimizer.lr=0.0123", "data=digits"]) == "optimizer.lr=0.0123"
    assert sweep_run_name(["model.depth"], job) == ""  # the job does not set it


def test_sweep_keys_hands_the_keys_to_the_jobs(monkeypatch, compose_config) -> None:
    monkeypatch.setenv(SWEEP_KEYS_ENV, json.dumps(["stale"]))
    config = OmegaConf.create({"hydra": {"overrides": {"task": ["optimizer=sgd,adam,muon", "seed=3"]},
                                         "sweeper": {"params": None}}})
    SweepKeys().on_multirun_start(config)
    assert sweep_keys_from_env() == ["optimizer"]
    search = compose_config("hparams_search=sgd", "data=digits", return_hydra_config=True)
    SweepKeys().on_multirun_start(search)  # the lr search: the sweeper's params
    assert sweep_keys_from_env() == ["optimizer.lr"]
    SweepKeys().on_multirun_start(OmegaConf.create({"hydra": {"overrides": {"task": ["seed=(("]}}}))
    assert sweep_keys_from_env() is None  # unreadable: no keys, never the earlier sweep's


def _ctx(tmp_path: Path, name: str, swept: bool = True) -> RunContext:
    sweep = tmp_path / "sweep"
    return RunContext(sweep / f"data=digits,{name}", name, sweep, True, 0, (), swept)


@pytest.mark.parametrize("name", ["", ".", "x" * 201])
def test_a_name_that_cannot_be_a_directory_keeps_the_run_dir(tmp_path: Path, name: str) -> None:
    assert named_logdir(_ctx(tmp_path, name)) is None
    assert choose_logdir(_ctx(tmp_path, name), "key") == _ctx(tmp_path, name).run_dir / "tensorboard"


def test_tensorboard_log_dirs_by_name(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "optimizer=adam")
    named = tmp_path / "sweep" / "tensorboard" / "optimizer=adam"
    assert choose_logdir(ctx, "run-a") == named  # free
    assert named_logdir(_ctx(tmp_path, "data.path=/a/b")) == named.parent / "data.path=_a_b"
    assert named_logdir(_ctx(tmp_path, "optimizer=adam", swept=False)) is None  # a single run
    named.mkdir(parents=True)
    (named / RUN_KEY_FILE).write_text("run-a")
    assert choose_logdir(ctx, "run-a") == named  # this run's, resumed
    assert choose_logdir(ctx, "run-b") == ctx.run_dir / "tensorboard"  # another run's
    # A job that wrote into its run dir before runs had named dirs goes on there.
    fresh = _ctx(tmp_path, "optimizer=sgd")
    (fresh.run_dir / "tensorboard").mkdir(parents=True)
    assert choose_logdir(fresh, "run-c") == named.parent / "optimizer=sgd"
    (fresh.run_dir / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")
    assert choose_logdir(fresh, "run-c") == fresh.run_dir / "tensorboard"


def test_a_resumed_sweep_job_logs_into_its_named_log_dir(tmp_path: Path) -> None:
    """state.pt keeps the log dir, relative to the run dir: a copied sweep resumes in its copy."""
    pytest.importorskip("tensorboard")
    from tracker_readers import tensorboard_scalars

    from agop_sweep.run.observers import EpochEnd
    from agop_sweep.store.record import RunRecord
    from agop_sweep.trackers.tensorboard import TensorBoardTracker

    ctx = _ctx(tmp_path, "optimizer=adam")
    ctx.run_dir.mkdir(parents=True)
    record = RunRecord.start({"optimizer": "adam"}, {"seed": 1}, ctx.run_dir / "results.json")
    first = TensorBoardTracker(ctx)
    for epoch in (0, 1):
        entry = {"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "seconds": 1.0}
        record.finish_epoch(entry)
        first.on_epoch_end(EpochEnd(epoch, 3, entry, None, record, ctx.run_dir, False))
    state = first.state_dict()
    first.close()
    assert state["logdir"] == "../tensorboard/optimizer=adam"
    assert (ctx.group / "tensorboard" / "optimizer=adam" / RUN_KEY_FILE).is_file()
    copy = tmp_path / "copy"
    shutil.copytree(ctx.group, copy)
    moved = RunContext(copy / ctx.run_dir.name, ctx.name, copy, True, 0, (), True)
    second = TensorBoardTracker(moved)
    second.load_state_dict(state)
    entry = {"epoch": 2, "train_loss": 0.25, "seconds": 1.0}
    record.finish_epoch(entry)
    second.on_epoch_end(EpochEnd(2, 3, entry, None, record, moved.run_dir, False))
    second.close()
    assert tensorboard_scalars(copy / "tensorboard" / "optimizer=adam")["loss/train"] == [
        (0, 1.0), (1, 0.5), (2, 0.25)]
    assert len(tensorboard_scalars(ctx.group / "tensorboard" / "optimizer=adam")["loss/train"]) == 2
