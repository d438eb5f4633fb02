"""``logger=wandb``, always offline here (``WANDB_MODE=offline``, no API key, every W&B
directory under tmp_path): what a run logs is read back from its .wandb files
(agop_sweep/trackers/wandb_files.py, checked first against files that wandb itself wrote):
each epoch once, also across a kill -9 and a resume; config, summary, figures, results.json
as an artifact; one run per job, named after the key that varies, grouped by sweep."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TrackerSweep, app_env, run_cli

pytest.importorskip("wandb")

from tracker_readers import (
    ARGS,
    assert_once_each,
    expected,
    kill_after_epoch_2,
    run_app,
    tensorboard_scalars,
    wandb_offline,
    wandb_scalars,
    warnings_in,
)

from agop_sweep.trackers.base import run_key
from agop_sweep.trackers.wandb import has_credentials, run_id_for, wandb_mode, wandb_root
from agop_sweep.trackers.wandb_files import chunks, read_run, run_files


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline with no credentials, its files under tmp_path; returns ``$WANDB_DIR``."""
    return wandb_offline(tmp_path, monkeypatch)


def job_run_id(run_dir: Path) -> str:
    started = json.loads((run_dir / "results.json").read_text())["timing"]["started_at"]
    return run_id_for(f"{run_dir.resolve()}@{started}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the reader, against wandb's own files -----------------------------------------------------------


def test_the_reader_reads_what_wandb_writes(tmp_path: Path) -> None:
    import wandb

    settings = wandb.Settings(console="off", quiet=True, silent=True, x_disable_stats=True)
    run = wandb.init(project="p", id="reader1", dir=str(tmp_path), mode="offline", config={"a": {"b": 1}},
                     settings=settings, reinit="create_new")
    for step in range(3):
        run.log({"loss/train": 1 / (step + 1), "n": step}, step=step, commit=True)
    run.log({"text": "x" * 70_000}, step=3, commit=True)  # one record across three blocks
    run.summary["status"] = "completed"
    run.finish()
    wandb.teardown()  # waits until wandb's service has written the file out
    (path,) = run_files(tmp_path / "wandb", "reader1")
    log = read_run([path])
    assert log.history == [(0, {"loss/train": 1.0, "n": 0}), (1, {"loss/train": 0.5, "n": 1}),
                           (2, {"loss/train": pytest.approx(1 / 3, rel=1e-15), "n": 2}),
                           (3, {"text": "x" * 70_000})]
    assert log.config["a"] == {"b": 1} and log.summary["status"] == "completed" and log.exits == [0]
    assert [r.run_id for r in log.runs] == ["reader1"]
    data = path.read_bytes()
    whole = list(chunks(data))
    for cut in (len(data) - 5, 40_000, 100):  # a torn file: the records before the tear
        assert list(chunks(data[:cut])) == whole[: len(list(chunks(data[:cut])))]
    corrupt = bytearray(data)
    corrupt[30] ^= 0xFF  # inside the first record: its CRC fails, the read ends there
    assert list(chunks(bytes(corrupt))) == []
    with pytest.raises(ValueError, match="bad header"):
        list(chunks(b"not a log"))


def test_credentials_decide_the_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not has_credentials() and wandb_mode() is None  # WANDB_MODE=offline: wandb reads it
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode() == "offline"
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode() == "online"  # wandb login
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode() == "offline"  # a key for another host
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_mode() == "online"


def test_files_go_to_wandb_dir_else_the_outputs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    offline: Path) -> None:
    job = tmp_path / "outputs" / "multirun" / "d" / "t" / "seed=1"
    assert wandb_root(job) == offline.resolve()
    monkeypatch.delenv("WANDB_DIR")
    assert wandb_root(job) == (tmp_path / "outputs").resolve()
    assert run_id_for("a@1") == run_id_for("a@1") != run_id_for("a@2")
    assert re.fullmatch(r"[0-9a-f]{16}", run_id_for("a@1"))


# -- what a run holds --------------------------------------------------------------------------------


def test_a_sweep_logs_one_run_per_job_with_every_number(tracker_sweep: TrackerSweep) -> None:
    """conftest's tracker sweep: two jobs at once, each its own W&B run named after the key
    that varies, in one group; every number of results.json once, the config, the status, the
    figures as images and results.json as an artifact."""
    sweep, proc, offline = tracker_sweep.dir, tracker_sweep.proc, tracker_sweep.wandb_dir
    assert not warnings_in(proc), (proc.stdout + proc.stderr)[-3000:]
    assert f"upload it with: wandb sync {offline / 'wandb'}" in proc.stdout
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(jobs) == 2
    names = set()
    for run_dir in jobs:
        results = json.loads((run_dir / "results.json").read_text())
        run_id = job_run_id(run_dir)
        files = run_files(offline / "wandb", run_id)
        assert len(files) == 1 and files[0].parent.name.startswith("offline-run-")
        log = read_run(files)
        (run,) = log.runs
        names.add(run.display_name)
        assert (run.project, run.run_group, run.job_type) == ("agop_sweep", "outputs/multirun/sweep", "train")
        assert run.display_name in run.notes.split() and "model.width=16" in run.notes.split()
        want = expected(run_dir)
        assert_once_each(wandb_scalars(log.history), want, rel=1e-12)
        assert {k: v for k, v in log.config.items() if k != "_wandb"} == results["config"]
        assert log.summary["status"] == "completed" and log.exits == [0]
        # The figures, at the step after the last epoch, byte for byte.
        last = max(e["epoch"] for e in results["epochs"])
        (figures,) = [row for step, row in log.history if step == last + 1]
        assert set(figures) == {"figures/training_analysis", "figures/features"}
        for key, image in figures.items():
            png = run_dir / "plots" / f"{key.split('/')[1]}.png"
            assert image["_type"] == "image-file" and image["sha256"] == sha256(png)
            assert sha256(files[0].parent / "files" / image["path"]) == sha256(png)
        (artifact,) = log.artifacts
        assert (artifact.name, artifact.type) == (f"results-{run_id}", "results")
        (entry,) = artifact.manifest.contents
        md5 = base64.b64encode(hashlib.md5((run_dir / "results.json").read_bytes()).digest()).decode()
        assert (entry.path, entry.digest) == ("results.json", md5)
        # TensorBoard alongside, its log dir named as the W&B run.
        assert_once_each(tensorboard_scalars(sweep / "tensorboard" / run.display_name), want, rel=1e-6)
    assert names == {"optimizer=sgd", "optimizer=adam"}


# -- resume ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill9_after_wandb_wrote_its_file_then_resume_logs_every_epoch_once(tmp_path: Path,
                                                                             offline: Path) -> None:
    """W&B's file holds epochs 0 to 2 when the run is killed: the resumed process finds epoch 2,
    which state.pt does not count, in the first process's file and leaves it out (the case where
    W&B had not written it: tests/test_loggers.py)."""
    run_dir = tmp_path / "run"
    args = ["logger=wandb", f"hydra.run.dir={run_dir}"]
    killed = run_app(tmp_path, *args, code=kill_after_epoch_2(flush=True))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "running" and [e["epoch"] for e in results["epochs"]] == [0, 1, 2]
    first = run_files(offline / "wandb", job_run_id(run_dir))
    assert {step for step, _ in read_run(first).history} == {0, 1, 2}
    resumed = run_cli(*ARGS, *args, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not warnings_in(resumed), (resumed.stdout + resumed.stderr)[-3000:]
    assert "(continued)" in resumed.stdout
    files = run_files(offline / "wandb", job_run_id(run_dir))
    assert len(files) == 2 and files[0] == first[0]  # a second process, the same run id
    want = expected(run_dir)
    assert max(want["loss/train"]) == 3
    log = read_run(files)
    assert_once_each(wandb_scalars(log.history), want, rel=1e-12)
    assert [s for s, row in read_run(files[1:]).history if "loss/train" in row] == [3]
    assert [r.display_name for r in log.runs] == [log.runs[0].display_name] * 2
    assert log.summary["status"] == "completed" and log.exits == [0, 0]


def test_a_failed_run_is_marked_failed(tmp_path: Path, offline: Path) -> None:
    """Exit code 1 and summary status failed; no figures (a failed run may resume)."""
    from PIL import Image

    from agop_sweep.run.observers import EpochEnd
    from agop_sweep.store.record import RunRecord
    from agop_sweep.trackers.base import RunContext
    from agop_sweep.trackers.wandb import WandbTracker

    config = {"seed": 1, "optimizer": {"lr": 0.1}}
    record = RunRecord.start({"optimizer": "sgd"}, config, tmp_path / "results.json")
    entry = {"epoch": 0, "train_loss": 0.5, "val_loss": None, "train_acc": 0.1, "val_acc": 0.2,
             "seconds": 1.0}
    record.finish_epoch(entry)
    (tmp_path / "plots").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "plots" / "features.png")  # a figure it must not log
    tracker = WandbTracker(RunContext(tmp_path, "seed=1", tmp_path.parent), experiment="failed")
    tracker.on_epoch_end(EpochEnd(0, 5, entry, None, record, tmp_path, False))
    record.mark_failed("RuntimeError: boom")
    record.save()
    tracker.on_run_end(record, tmp_path)
    log = read_run(run_files(offline / "wandb", run_id_for(run_key(tmp_path, record))))
    assert log.history == [(0, {"loss/train": 0.5, "acc/train": 0.1, "acc/val": 0.2,
                                "time/epoch_seconds": 1.0})]
    assert (log.summary["status"], log.summary["error"], log.exits) == ("failed", "RuntimeError: boom", [1])
    assert {k: v for k, v in log.config.items() if k != "_wandb"} == config
    assert log.runs[0].run_group == "failed"


# -- offline means offline -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_an_offline_run_connects_to_nothing_but_its_own_processes(tmp_path: Path) -> None:
    """Every connect(2) of the run and its children (wandb's service) under strace: Unix
    sockets and the loopback only."""
    trace = tmp_path / "connect.trace"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), sys.executable,
                           "-m", "agop_sweep", *ARGS, "logger=wandb", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = [line for line in trace.read_text().splitlines() if "connect(" in line]
    assert any("AF_UNIX" in line for line in calls)  # the run did talk to wandb's service
    outside = [line for line in calls
               if "AF_UNIX" not in line and "127.0.0.1" not in line and "::1" not in line]
    assert not outside, outside
