"""The training loop in-process: precision and compile options, the train-loss modes,
preemption inside an epoch, and the resume helpers."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch
from aggregate_fakes import end_as
from conftest import composing, strip_timing, tiny
from omegaconf import DictConfig, open_dict

from agop_sweep.config import to_container, upgrade_saved_config
from agop_sweep.errors import UserError
from agop_sweep.run.device import Placement
from agop_sweep.run.observers import Observer
from agop_sweep.run.trainer import Trainer
from agop_sweep.store.record import RunRecord
from agop_sweep.store.rundir import claim
from agop_sweep.store.state import check_same_experiment, config_differences


@pytest.fixture
def make_cfg() -> Iterator:
    """``make_cfg(*overrides)``: conftest's TINY config (no figures; test_plot_modes sets them)."""
    with composing() as compose:
        yield lambda *overrides: compose(*tiny(*overrides))


def run(cfg: DictConfig, run_dir: Path, observers: Sequence[Observer] = ()) -> dict:
    """Train in ``run_dir`` as the app does: claim it (resume=true continues it), then run."""
    with claim(run_dir, to_container(cfg), cfg.resume) as claimed:
        trainer = Trainer(cfg, run_dir, Placement("cpu", torch.get_num_threads()), observers=observers)
        trainer.run(claimed.state)
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_precisions_train(make_cfg, tmp_path: Path, precision: str) -> None:
    res = run(make_cfg(f"trainer.precision={precision}", "optimizer=adam"), tmp_path)
    losses = [e["train_loss"] for e in res["epochs"]]
    assert res["status"] == "completed"
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(("mode", "calls"), [
    # smoke schedule: epochs 0..3 analysed; live redraws PNGs after 0, 1, 2 and both formats at the end
    ("live", [("png",)] * 3 + [("png", "pdf")]),
    ("end", [("png", "pdf")]),
    ("off", []),
])
def test_plot_modes(make_cfg, tmp_path: Path, monkeypatch, mode: str, calls: list) -> None:
    from agop_sweep.figures import run as figures_run

    seen = []
    monkeypatch.setattr(figures_run, "save_run_figures",
                        lambda results, run_dir, features, formats: seen.append(tuple(formats)))
    run(make_cfg(f"trainer.plots={mode}"), tmp_path)
    assert seen == calls


def test_an_observer_failing_at_the_end_leaves_a_completed_run_completed(make_cfg, tmp_path: Path,
                                                                           caplog) -> None:
    """Every ending goes through Trainer.end_run: a broken observer is logged, the next one
    still runs, and the run keeps its status."""
    ended = []

    class Broken(Observer):
        name = "broken"

        def on_run_end(self, record: RunRecord, run_dir: Path) -> None:
            raise RuntimeError("observer bug")

    class Witness(Observer):
        name = "witness"

        def on_run_end(self, record: RunRecord, run_dir: Path) -> None:
            ended.append(record.status)

    assert run(make_cfg(), tmp_path, observers=[Broken(), Witness()])["status"] == "completed"
    assert ended == ["completed"]
    assert "Observer broken failed at the end of the run" in caplog.text


def test_compile_failure_falls_back_to_eager(make_cfg, tmp_path: Path, monkeypatch) -> None:
    def broken(model):
        def fail(x):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    compiled = run(make_cfg("trainer.compile=true"), tmp_path / "a")
    eager = run(make_cfg(), tmp_path / "b")
    assert compiled["status"] == "completed"
    assert [e["train_loss"] for e in compiled["epochs"]] == [e["train_loss"] for e in eager["epochs"]]


def test_train_loss_modes(make_cfg, tmp_path: Path) -> None:
    """full_train=false: epochs that are not analysed report the running minibatch average;
    analysed epochs always report the full pass (from the analysis)."""
    over = ["schedule.epochs=3", "schedule.checkpoints=[0,3]"]
    full = run(make_cfg(*over), tmp_path / "full")
    cheap = run(make_cfg(*over, "eval.full_train=false"), tmp_path / "cheap")
    for f, c in zip(full["epochs"], cheap["epochs"], strict=True):
        if f["epoch"] in (0, 3):
            assert c["train_loss"] == f["train_loss"]
        else:
            assert c["train_loss"] == f["running_train_loss"] != f["train_loss"]
    analysed = {a["epoch"]: a for a in full["analysis"]}
    assert full["epochs"][3]["train_loss"] == analysed[3]["train_loss"]


def test_signal_mid_epoch_saves_progress_and_resumes_exactly(make_cfg, tmp_path: Path, monkeypatch) -> None:
    reference = run(make_cfg("trainer.batch_size=16"), tmp_path / "ref")
    handler_before = signal.getsignal(signal.SIGUSR1)

    # Raise SIGUSR1 from inside the 5th optimizer step of epoch 2 (16 steps an epoch).
    calls = {"n": 0}
    original_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 16 + 5:
            signal.raise_signal(signal.SIGUSR1)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run(make_cfg("trainer.batch_size=16"), run_dir)
    assert stop.value.code == 128 + signal.SIGUSR1
    state = torch.load(run_dir / "state.pt", weights_only=False)
    assert state["next_epoch"] == 2
    assert state["progress"]["epoch"] == 2 and state["progress"]["step"] == 5
    monkeypatch.setattr(torch.optim.SGD, "step", original_step)
    resumed = run(make_cfg("trainer.batch_size=16", "resume=true"), run_dir)
    assert strip_timing(resumed["epochs"]) == strip_timing(reference["epochs"])
    assert signal.getsignal(signal.SIGUSR1) == handler_before  # the guard restored it


def test_config_differences_ignore_run_control_keys() -> None:
    old = {"optimizer": {"lr": 0.1}, "device": "cpu", "data": {"root": "a", "name": "svhn"}, "resume": False}
    new = {"optimizer": {"lr": 0.2}, "device": "cuda", "data": {"root": "b", "name": "svhn"}, "resume": True}
    assert config_differences(old, new) == ["optimizer.lr"]
    check_same_experiment(old, {**old, "device": "cuda:1"})
    with pytest.raises(UserError, match=r"optimizer.lr \(0.1 there, 0.2 now\)"):
        check_same_experiment(old, new)


def test_observer_state_is_read_under_its_earlier_name_too(tmp_path: Path) -> None:
    """state.pt keeps the observers' state (a tracker's run id) under ``observers``; files that
    named it ``hooks`` still resume it."""
    from dataclasses import asdict

    from agop_sweep.store.checkpoint import torch_save
    from agop_sweep.store.state import STATE_FILE, ResumeState, load_state, save_state

    state = ResumeState(1, None, {}, {}, [], torch.zeros(1), torch.zeros(1), {}, {}, {},
                        observers={"mlflow": {"run_id": "abc"}})
    save_state(tmp_path, state)
    assert load_state(tmp_path).observers == {"mlflow": {"run_id": "abc"}}
    earlier = asdict(state)
    earlier["hooks"] = earlier.pop("observers")
    torch_save(tmp_path / STATE_FILE, earlier)
    assert load_state(tmp_path).observers == {"mlflow": {"run_id": "abc"}}


def test_configs_saved_by_earlier_versions_are_upgraded() -> None:
    old = {"optimizer": {"name": "adam", "lr": 0.1}, "trainer": {"batch_size": 8, "live_plots": False}}
    up = upgrade_saved_config(old)
    assert up == {"optimizer": {"name": "adam", "lr": 0.1, "fused": False},
                  "trainer": {"batch_size": 8, "plots": "end"}}
    assert "live_plots" in old["trainer"]  # the saved dict itself is left alone
    now = {"optimizer": {"name": "adam", "lr": 0.1, "fused": True},
           "trainer": {"batch_size": 8, "plots": "live"}}
    # Those runs took torch's unfused step: resuming one needs optimizer.fused=false, and says so.
    with pytest.raises(UserError, match=r"optimizer.fused \(False there, True now\)"):
        check_same_experiment(up, now)
    check_same_experiment(up, {**now, "optimizer": {**now["optimizer"], "fused": False}})


def _objective(status: str, val_loss: float | None, train_loss: float | None = None) -> float:
    record = RunRecord.start({}, {})
    record.finish_epoch({"epoch": 1, "train_loss": train_loss, "val_loss": val_loss, "train_acc": None,
                      "val_acc": None})
    end_as(record, status)
    return record.objective()


def test_objective() -> None:
    assert _objective("diverged", 0.1) == math.inf
    assert _objective("completed", 0.25, 0.2) == 0.25
    assert _objective("completed", None, 0.2) == 0.2
    assert _objective("completed", None, None) == math.inf
    assert RunRecord.start({}, {}).objective() == math.inf


def test_validation_rejects_before_data(make_cfg, tmp_path: Path) -> None:
    from agop_sweep.config import validate

    cfg = make_cfg()
    with open_dict(cfg):
        cfg.optimizer.lr = -1.0
    with pytest.raises(UserError, match=r"optimizer.lr=-1.0: must be > 0"):
        validate(cfg)


def test_checkpoints_without_optimizer_state(make_cfg, tmp_path: Path) -> None:
    """trainer.checkpoint_optimizer=false: checkpoints carry {} as their optimizer state, the
    resumable state keeps it, and the weights are those of a default run."""
    from agop_sweep.store import checkpoint

    full = run(make_cfg("optimizer=adam"), tmp_path / "full")
    slim = run(make_cfg("optimizer=adam", "trainer.checkpoint_optimizer=false"), tmp_path / "slim")
    for epoch, rel in slim["checkpoints"].items():
        small = checkpoint.load(tmp_path / "slim" / rel)
        big = checkpoint.load(tmp_path / "full" / full["checkpoints"][epoch])
        assert small["optimizer"] == {}
        assert bool(big["optimizer"]["adam"]["state"]) == (epoch != "0")  # moments after a step
        for key, value in big["state_dict"].items():
            assert torch.equal(small["state_dict"][key], value)
    assert checkpoint.load(tmp_path / "slim" / "state.pt")["optimizer"]["adam"]["state"]


def test_epochs_past_the_last_checkpoint_are_announced(make_cfg, tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="agop_sweep.run.trainer"):
        res = run(make_cfg("schedule.epochs=5"), tmp_path)  # smoke's checkpoints stop at 3
    assert [a["epoch"] for a in res["analysis"]] == [0, 1, 2, 3]
    assert any("the last 2 epoch(s) up to 5 are trained but neither analysed nor checkpointed" in r.message
               for r in caplog.records)


def test_the_run_clock_starts_with_the_trainer(make_cfg, tmp_path: Path) -> None:
    """wall time = finished_at - started_at counts the run, not the interpreter's imports."""
    import time

    before = time.time()
    res = run(make_cfg(), tmp_path)
    assert before <= res["timing"]["started_at"] <= res["timing"]["finished_at"] <= time.time()
