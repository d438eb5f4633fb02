"""Reading back what the trackers hold (tests/test_loggers.py, tests/test_wandb.py): TensorBoard
through its EventAccumulator, MLflow through MlflowClient, W&B from its run's .wandb files, and
what results.json says they must hold."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY, app_env

ARGS = [*TINY, "optimizer=adam"]
Series = dict[str, dict[int, float]]


def expected(run_dir: Path) -> Series:
    """Every non-null number of results.json by tracker key and epoch."""
    data = json.loads((run_dir / "results.json").read_text())
    out: Series = {}

    def put(key: str, epoch: int, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.setdefault(key, {})[epoch] = float(value)

    names = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "acc/train",
             "val_acc": "acc/val", "seconds": "time/epoch_seconds"}
    for e in data["epochs"]:
        for field, key in names.items():
            put(key, e["epoch"], e.get(field))
    for a in data["analysis"]:
        put("time/analysis_seconds", a["epoch"], a["seconds"])
        for layer in a["layers"]:
            where = f"layer{layer['layer']}"
            for name, value in layer["metrics"].items():
                put(f"{name}/{where}", a["epoch"], value)
            put(f"weight_change/{where}", a["epoch"], layer["weight_change"])
            put(f"alpha_star/{where}", a["epoch"], layer["alpha_star"])
            for spectrum in ("agop", "nfm_raw", "nfm_delta"):  # null where undefined (epoch 0's delta)
                rank = (layer["spectra"][spectrum] or {}).get("effective_rank")
                put(f"effective_rank_{spectrum}/{where}", a["epoch"], rank)
    return out


def assert_once_each(logged: dict[str, list[tuple[int, float]]], want: Series, rel: float) -> None:
    """``logged`` (key -> [(step, value)] as the tracker returns them) holds every value of
    ``want`` exactly once and nothing else."""
    assert set(logged) == set(want), set(logged) ^ set(want)
    for key, points in logged.items():
        steps = [step for step, _ in points]
        assert sorted(steps) == sorted(set(steps)), f"{key}: a step logged twice: {steps}"
        assert dict(points) == pytest.approx(want[key], rel=rel), key


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_text(logdir: Path, tag: str) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    return [t.tensor_proto.string_val[0].decode() for t in acc.Tensors(f"{tag}/text_summary")]


def mlflow_runs(uri: str, experiment: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    return client.search_runs([found.experiment_id])


def mlflow_metrics(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    keys = client.get_run(run_id).data.metrics
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline with no credentials for this test and the runs it starts, every W&B
    directory under tmp_path; returns ``$WANDB_DIR`` (the runs' files: ``<it>/wandb/``)."""
    root = tmp_path / "wandb_root"
    for key in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_ENTITY",
                "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_RUN_GROUP", "WANDB_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(root))
    for key, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(key, str(tmp_path / "wandb_home" / sub))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    return root


def kill_after_epoch_2(flush: bool) -> str:
    """A patch (tests' ``run_app(code=...)``): SIGKILL right after the last tracker (W&B) has
    logged epoch 2, which state.pt, saved before the trackers ran, counts as not logged;
    ``flush``: W&B first writes its file out, so that it holds epochs 0 to 2."""
    return f"""
import os, signal
from agop_sweep.trackers.wandb import WandbTracker
_log = WandbTracker._log_new_epochs
def _log_then_die(self, record, current):
    _log(self, record, current)
    if current == 2:
        if {flush}:
            self._finish_run(0)
        os.kill(os.getpid(), signal.SIGKILL)
WandbTracker._log_new_epochs = _log_then_die
"""


def wandb_scalars(history: list[tuple[int, dict[str, Any]]]) -> dict[str, list[tuple[int, float]]]:
    """A W&B run's numeric history (wandb_files.RunLog.history) as key -> [(step, value)]."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step, row in history:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((step, float(value)))
    return out


def warnings_in(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The warning lines of a run's output (Hydra logs to stdout; Python warnings go to stderr)."""
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    return [line for line in lines if "WARNING" in line or "Warning:" in line]


def run_app(tmp_path: Path, *extra: str, code: str = "") -> subprocess.CompletedProcess[str]:
    """The app in a fresh interpreter, after ``code`` (which may patch something)."""
    launch = ("import sys\nfrom agop_sweep.run.app import main\n"
              "sys.argv = ['agop_sweep'] + sys.argv[1:]\nmain()\n")
    return subprocess.run([sys.executable, "-c", code + launch, *ARGS, *extra], cwd=tmp_path,
                          env=app_env(), capture_output=True, text=True, timeout=300)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def stop_group(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (it started its own workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue
