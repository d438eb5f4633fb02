"""Resume after kill -9 and SIGTERM, divergence, failures, atomic files, disk full.

Real processes are killed: each trial starts a run as a subprocess, kills it at a random
moment, resumes it with ``resume=true`` in the same run dir, and compares every number
and every checkpoint with an uninterrupted run of the same config.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import app_env, strip_timing

# Enough steps per epoch (256) that kills land inside epochs, analyses and writes alike.
RUN_ARGS = [
    "data=synthetic", "data.n_train=4096", "data.n_val=256", "data.n_features=64",
    "data.image_shape=[1,8,8]", "model.width=64", "model.depth=3", "optimizer=adam",
    "trainer.batch_size=16", "schedule.epochs=6", "schedule.checkpoints=[0,1,2,3,6]",
    "eval.full_train=false", "analysis.chunk_size=256", "trainer.plots=off",
]


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "agop_sweep", *RUN_ARGS, f"hydra.run.dir={run_dir}", *extra]


def run_app(run_dir: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cmd(run_dir, *extra), cwd=cwd, env=app_env(), capture_output=True, text=True,
                          timeout=900)


def run_patched(patch: str, run_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the app in a fresh interpreter after executing ``patch`` (which injects a fault)."""
    launch = ("import sys\nfrom agop_sweep.run.app import main\n"
              "sys.argv = ['agop_sweep'] + sys.argv[1:]\nmain()\n")
    code = patch + launch
    return subprocess.run([sys.executable, "-c", code, *RUN_ARGS, f"hydra.run.dir={run_dir}"],
                          cwd=cwd, env=app_env(), capture_output=True, text=True, timeout=900)


def comparable(run_dir: Path) -> dict[str, Any]:
    data = json.loads((run_dir / "results.json").read_text())
    data["config"].pop("resume", None)
    return strip_timing(data)


def assert_same_run(a: Path, b: Path) -> None:
    assert comparable(a) == comparable(b)
    names = sorted(p.name for p in (a / "models").iterdir())
    assert names == sorted(p.name for p in (b / "models").iterdir())
    for name in names:
        ca = torch.load(a / "models" / name, weights_only=False)
        cb = torch.load(b / "models" / name, weights_only=False)
        for key in ca["state_dict"]:
            assert torch.equal(ca["state_dict"][key], cb["state_dict"][key]), (name, key)
    fa, fb = np.load(a / "features.npz"), np.load(b / "features.npz")
    assert fa.files == fb.files
    for key in fa.files:
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    proc = run_app(root / "run", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def _start_and_wait(run_dir: Path, tmp_path: Path, rng: random.Random, span: float
                    ) -> tuple[subprocess.Popen[str], float | None]:
    """Start the run, wait until training has started (results.json exists), then wait a
    random moment, uniform over the first 60 % of ``span`` seconds. Returns the process and,
    when it ended first, how long it ran from the start of training."""
    proc = subprocess.Popen(_cmd(run_dir), cwd=tmp_path, env=app_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "results.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    started, wait = time.monotonic(), rng.uniform(0.0, 0.6 * span)
    while time.monotonic() - started < wait and proc.poll() is None:
        time.sleep(0.01)
    if proc.poll() is not None:
        proc.communicate()
        return proc, time.monotonic() - started
    return proc, None


def _kill_and_resume(tmp_path: Path, reference: Path, sig: int, rng: random.Random) -> dict[str, Any]:
    run_dir = tmp_path / "run"
    # The span starts as the uninterrupted run's own time; a run that ends before its fault
    # (the machine got faster than when the reference ran) is run again with its own time as
    # the span, so that the fault really lands inside the run (asserted below).
    span = json.loads((reference / "results.json").read_text())["timing"]["total_seconds"]
    for _ in range(3):
        proc, ran = _start_and_wait(run_dir, tmp_path, rng, span)
        if ran is None:
            break
        shutil.rmtree(run_dir)
        span = min(span, ran)
    assert proc.poll() is None, "the run ended before the fault three times: this trial tested nothing"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    info = {"returncode": proc.returncode}
    status = json.loads((run_dir / "results.json").read_text())["status"]
    assert status == "running", "the fault did not interrupt the run"
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        # A clean stop: state saved, conventional exit status, no traceback.
        assert proc.returncode == 128 + sig, stderr
        assert "Traceback" not in stderr
        assert (run_dir / "state.pt").exists()
    info["status"] = status
    # Every file on disk loads, whatever moment the kill hit.
    json.loads((run_dir / "results.json").read_text())
    for p in (run_dir / "models").glob("*.pth"):
        torch.load(p, weights_only=False)
    if (run_dir / "state.pt").exists():
        torch.load(run_dir / "state.pt", weights_only=False)
    resumed = run_app(run_dir, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run_dir.glob(".*.tmp")), "stale temporary files after resume"
    assert_same_run(reference, run_dir)
    return info


@pytest.mark.parametrize("trial", range(2))
def test_kill9_then_resume_is_identical(tmp_path: Path, reference: Path, trial: int) -> None:
    _kill_and_resume(tmp_path, reference, signal.SIGKILL, random.Random(100 + trial))


def test_sigterm_saves_state_and_resume_is_identical(tmp_path: Path, reference: Path) -> None:
    _kill_and_resume(tmp_path, reference, signal.SIGTERM, random.Random(7))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(8))
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1])
def test_many_random_kills(tmp_path: Path, reference: Path, sig: int, trial: int) -> None:
    _kill_and_resume(tmp_path, reference, sig, random.Random(1000 * sig + trial))


def test_resume_of_finished_run_does_nothing(tmp_path: Path, reference: Path) -> None:
    before = (reference / "results.json").read_bytes()
    proc = run_app(reference, "resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "already completed; nothing to do" in proc.stdout + proc.stderr
    assert (reference / "results.json").read_bytes() == before


def test_rerun_without_resume_refuses_to_overwrite(tmp_path: Path, reference: Path) -> None:
    proc = run_app(reference, cwd=tmp_path)
    assert proc.returncode == 1
    assert "already holds a run; pass resume=true" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_with_other_config_lists_differences(tmp_path: Path, reference: Path) -> None:
    proc = run_app(reference, "resume=true", "optimizer.lr=0.5", "seed=3", cwd=tmp_path)
    assert proc.returncode == 1
    line = [ln for ln in proc.stderr.splitlines() if "different experiment" in ln]
    assert len(line) == 1, proc.stderr
    assert "optimizer.lr (0.001 there, 0.5 now)" in line[0]
    assert "seed (1717 there, 3 now)" in line[0]
    assert "Traceback" not in proc.stderr


def test_divergence_is_a_result(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agop_sweep", "-m", "optimizer=sgd", "optimizer.lr=1e6,0.01", "model.act=tanh",
         "data=synthetic", "data.n_train=256", "data.n_val=64", "data.n_features=64",
         "data.image_shape=[1,8,8]", "model.width=32", "schedule=smoke", "trainer.plots=off",
         f"hydra.sweep.dir={tmp_path}/sw"],
        cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    runs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "sw").glob("*/results.json")}
    diverged = next(r for name, r in runs.items() if "lr=1000000" in name)
    fine = next(r for name, r in runs.items() if "lr=0.01" in name)
    assert diverged["status"] == "diverged"
    assert diverged["diverged_epoch"] == diverged["epochs"][-1]["epoch"] >= 1
    assert diverged["epochs"][-1]["train_loss"] is None  # non-finite is written as null
    assert fine["status"] == "completed"  # the rest of the multirun went on
    assert "diverged at epoch" in proc.stdout + proc.stderr


def test_exception_marks_run_failed(tmp_path: Path) -> None:
    code = (
        "import sys, agop_sweep.analyze.layers as a\n"
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('injected failure')\n"
        "a.analyze_model = boom\n"
        "import agop_sweep.run.trainer as t; t.analyze_model = boom\n"
    )
    proc = run_patched(code, tmp_path / "run", tmp_path)
    assert proc.returncode == 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"] == "RuntimeError: injected failure"


def test_crash_while_writing_leaves_loadable_files(tmp_path: Path) -> None:
    """The process dies (os._exit) half-way through writing its 3rd results.json: every file
    on disk still loads, and a resume completes the run."""
    code = (
        "import os, sys, agop_sweep.store.atomic as at\n"
        "calls = {'n': 0}\n"
        "orig = at.write_atomic\n"
        "def dying(path, write):\n"
        "    if str(path).endswith('results.json'):\n"
        "        calls['n'] += 1\n"
        "        if calls['n'] == 3:\n"
        "            def half(f):\n"
        "                f.write(b'{\"schema_version\": 1, \"sta')\n"
        "                f.flush(); os._exit(9)\n"
        "            return orig(path, half)\n"
        "    return orig(path, write)\n"
        "at.write_atomic = dying\n"
    )
    run_dir = tmp_path / "run"
    proc = run_patched(code, run_dir, tmp_path)
    assert proc.returncode == 9
    assert list(run_dir.glob(".results.json.*.tmp")), "the half-written temp file should remain"
    results = json.loads((run_dir / "results.json").read_text())  # the previous, complete version
    assert results["status"] == "running"
    assert [e["epoch"] for e in results["epochs"]] == [0, 1]
    for p in (run_dir / "models").glob("*.pth"):
        torch.load(p, weights_only=False)
    torch.load(run_dir / "state.pt", weights_only=False)
    resumed = run_app(run_dir, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
    assert not list(run_dir.glob(".*.tmp"))


def test_disk_full_keeps_previous_checkpoint(tmp_path: Path) -> None:
    """ENOSPC while writing the epoch-2 checkpoint: one-line error, exit 1, the epoch-1
    checkpoint and state intact, and the run resumes once space is back."""
    code = (
        "import errno, sys, agop_sweep.store.atomic as at, agop_sweep.store.checkpoint as c\n"
        "orig = c.torch_save\n"
        "def full(path, obj):\n"
        "    if 'model_epoch_2:' in str(path):\n"
        "        def partial(f):\n"
        "            f.write(b'x' * 1000)\n"
        "            raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "        return at.write_atomic(path, partial)\n"
        "    return orig(path, obj)\n"
        "c.torch_save = full\n"
    )
    run_dir = tmp_path / "run"
    proc = run_patched(code, run_dir, tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "No space left" in ln]
    assert len(lines) == 1 and "resume=true" in lines[0], proc.stderr
    models = sorted(p.name for p in (run_dir / "models").iterdir())
    assert [m.split(":")[0] for m in models] == ["model_epoch_0", "model_epoch_1"]
    torch.load(run_dir / "models" / models[1], weights_only=False)
    assert not list((run_dir / "models").glob(".*.tmp"))
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    resumed = run_app(run_dir, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"
