"""Resume after kill -9 and SIGTERM, divergence, failures, a crash mid-write, disk full.

Real processes die, at chosen moments: a patch run before the app (conftest.run_app) sends the
signal from inside a chosen optimizer step or analysis, or right after a chosen file write, so
every fault lands where it is meant to, whatever the machine's speed. ``resume=true`` in the
same run dir must then give every number and every checkpoint of an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY, run_app, strip_timing, tiny

# 16 optimizer steps per epoch, epochs 1..3, every epoch analysed and checkpointed.
RUN_ARGS = tiny("optimizer=adam", "trainer.batch_size=16", "eval.full_train=false")
STEPS = 16  # per epoch


def at_step(n: int, sig: int = signal.SIGKILL) -> str:
    """A patch: ``sig`` to the process from inside its ``n``-th optimizer step (counted from 1)."""
    return (
        "import os, torch\n"
        "_step, _n = torch.optim.Adam.step, [0]\n"
        "def _faulty(self, *args, **kwargs):\n"
        "    _n[0] += 1\n"
        f"    if _n[0] == {n}:\n"
        f"        os.kill(os.getpid(), {int(sig)})\n"
        "    return _step(self, *args, **kwargs)\n"
        "torch.optim.Adam.step = _faulty\n"
    )


def in_analysis(n: int, sig: int = signal.SIGKILL) -> str:
    """A patch: ``sig`` from inside the process's ``n``-th analysis, as it starts its kernels
    (a stop signal is then seen at the first chunk)."""
    return (
        "import os, agop_sweep.analyze.layers as layers\n"
        "_kernels, _n = layers.jacobian_kernels, [0]\n"
        "def _faulty(*args, **kwargs):\n"
        "    _n[0] += 1\n"
        f"    if _n[0] == {n}:\n"
        f"        os.kill(os.getpid(), {int(sig)})\n"
        "    return _kernels(*args, **kwargs)\n"
        "layers.jacobian_kernels = _faulty\n"
    )


def after_write(prefix: str, n: int) -> str:
    """A patch: SIGKILL right after the process's ``n``-th completed atomic write of a file whose
    name starts with ``prefix`` (the rename that publishes it)."""
    return (
        "import os, signal\n"
        "_replace, _n = os.replace, [0]\n"
        "def _faulty(src, dst, *args, **kwargs):\n"
        "    _replace(src, dst, *args, **kwargs)\n"
        f"    if os.path.basename(str(dst)).startswith({prefix!r}):\n"
        "        _n[0] += 1\n"
        f"        if _n[0] == {n}:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.replace = _faulty\n"
    )


def dying_mid_results_json(n: int) -> str:
    """A patch: the process dies (os._exit(9)) half-way through its ``n``-th results.json."""
    return (
        "import os, agop_sweep.store.atomic as at\n"
        "_orig, _n = at.write_atomic, [0]\n"
        "def _dying(path, write):\n"
        "    if str(path).endswith('results.json'):\n"
        "        _n[0] += 1\n"
        f"        if _n[0] == {n}:\n"
        "            def half(f):\n"
        "                f.write(b'{\"schema_version\": 1, \"sta')\n"
        "                f.flush(); os._exit(9)\n"
        "            return _orig(path, half)\n"
        "    return _orig(path, write)\n"
        "at.write_atomic = _dying\n"
    )


def start(run_dir: Path, *extra: str, patch: str = "") -> Any:
    return run_app(*RUN_ARGS, f"hydra.run.dir={run_dir}", *extra, cwd=run_dir.parent, patch=patch)


def comparable(run_dir: Path) -> dict[str, Any]:
    data = json.loads((run_dir / "results.json").read_text())
    data["config"].pop("resume", None)
    data["run"].pop("git", None)  # others may commit while the suite runs
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


def assert_interrupted_and_loadable(run_dir: Path) -> dict[str, Any]:
    """The run was cut short, and every file on disk loads; returns results.json."""
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "running", "the fault did not interrupt the run"
    for p in (run_dir / "models").glob("*.pth"):
        torch.load(p, weights_only=False)
    if (run_dir / "state.pt").exists():
        torch.load(run_dir / "state.pt", weights_only=False)
    return results


def resume_to_the_end(run_dir: Path, reference: Path) -> None:
    resumed = start(run_dir, "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(run_dir.rglob(".*.tmp")), "stale temporary files after resume"
    assert_same_run(reference, run_dir)


def next_epoch(run_dir: Path) -> int:
    return torch.load(run_dir / "state.pt", weights_only=False)["next_epoch"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = start(run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_kill9_then_resume_is_identical(tmp_path: Path, reference: Path) -> None:
    """One run, killed -9 at five moments in turn (each resume is killed again), then resumed
    to its end: every number and checkpoint of the uninterrupted run."""
    run_dir = tmp_path / "run"
    # 1. Mid-epoch: inside the 5th step of epoch 2. The run continues from the end of epoch 1.
    proc = start(run_dir, patch=at_step(STEPS + 5))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [e["epoch"] for e in assert_interrupted_and_loadable(run_dir)["epochs"]] == [0, 1]
    assert next_epoch(run_dir) == 2
    # 2. Right after epoch 2's checkpoint is written, before results.json names it.
    proc = start(run_dir, "resume=true", patch=after_write("model_epoch_", 1))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    results = assert_interrupted_and_loadable(run_dir)
    assert "2" not in results["checkpoints"] and any((run_dir / "models").glob("model_epoch_2*"))
    assert next_epoch(run_dir) == 2
    # 3. Half-way through epoch 2's analysis.
    proc = start(run_dir, "resume=true", patch=in_analysis(1))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert_interrupted_and_loadable(run_dir)
    assert next_epoch(run_dir) == 2
    # 4. Right after epoch 2's results.json, before its state.pt.
    proc = start(run_dir, "resume=true", patch=after_write("results.json", 1))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [e["epoch"] for e in assert_interrupted_and_loadable(run_dir)["epochs"]] == [0, 1, 2]
    assert next_epoch(run_dir) == 2
    # 5. Dead half-way through writing results.json: the temporary file stays, the complete
    #    previous version stays in place.
    proc = start(run_dir, "resume=true", patch=dying_mid_results_json(1))
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert list(run_dir.glob(".results.json.*.tmp")), "the half-written temp file should remain"
    assert_interrupted_and_loadable(run_dir)
    resume_to_the_end(run_dir, reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)])
def test_a_stop_signal_saves_state_and_resume_is_identical(tmp_path: Path, reference: Path, sig: int) -> None:
    """SIGTERM (and SIGUSR1) inside the 5th step of epoch 2: state saved at that step, the
    conventional exit status, no traceback."""
    run_dir = tmp_path / "run"
    proc = start(run_dir, patch=at_step(STEPS + 5, sig))
    assert proc.returncode == 128 + sig, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert_interrupted_and_loadable(run_dir)
    state = torch.load(run_dir / "state.pt", weights_only=False)
    assert (state["next_epoch"], state["progress"]["epoch"], state["progress"]["step"]) == (2, 2, 5)
    resume_to_the_end(run_dir, reference)


# Each moment alone, from a fresh run (after its first results.json).
ONE_FAULT = {
    "kill9-step-1": at_step(1), "kill9-last-step-of-epoch-1": at_step(STEPS),
    "kill9-first-step-of-epoch-3": at_step(2 * STEPS + 1), "kill9-last-step": at_step(3 * STEPS),
    "kill9-in-analysis-1": in_analysis(2), "kill9-in-last-analysis": in_analysis(4),
    "kill9-after-checkpoint-1": after_write("model_epoch_", 2),
    "kill9-after-features-1": after_write("features.npz", 2),
    "kill9-after-results-2": after_write("results.json", 3),
    "kill9-after-state-1": after_write("state.pt", 2),
    "term-step-1": at_step(1, signal.SIGTERM), "term-last-step": at_step(3 * STEPS, signal.SIGTERM),
    "term-in-analysis-1": in_analysis(2, signal.SIGTERM),
}


@pytest.mark.slow
@pytest.mark.parametrize("patch", ONE_FAULT.values(), ids=ONE_FAULT.keys())
def test_one_fault_then_resume_is_identical(tmp_path: Path, reference: Path, patch: str) -> None:
    run_dir = tmp_path / "run"
    proc = start(run_dir, patch=patch)
    assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGTERM), proc.stderr[-3000:]
    assert_interrupted_and_loadable(run_dir)
    resume_to_the_end(run_dir, reference)


def test_divergence_is_a_result(tmp_path: Path) -> None:
    proc = run_app("-m", "optimizer=sgd", "optimizer.lr=1e6,0.01", "model.act=tanh",
                   *TINY, f"hydra.sweep.dir={tmp_path}/sw", cwd=tmp_path)
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
    patch = (
        "import agop_sweep.run.trainer as t\n"
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('injected failure')\n"
        "t.analyze_model = boom\n"
    )
    proc = start(tmp_path / "run", patch=patch)
    assert proc.returncode == 1
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed"
    assert results["error"] == "RuntimeError: injected failure"


def test_disk_full_keeps_previous_checkpoint(tmp_path: Path, reference: Path) -> None:
    """ENOSPC while writing the epoch-2 checkpoint: one-line error, exit 1, the epoch-1
    checkpoint and state intact, and the run resumes once space is back."""
    patch = (
        "import errno, agop_sweep.store.atomic as at, agop_sweep.store.checkpoint as c\n"
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
    proc = start(run_dir, patch=patch)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "No space left" in ln]
    assert len(lines) == 1 and "resume=true" in lines[0], proc.stderr
    models = sorted(p.name for p in (run_dir / "models").iterdir())
    assert [m.split(":")[0] for m in models] == ["model_epoch_0", "model_epoch_1"]
    torch.load(run_dir / "models" / models[1], weights_only=False)
    assert not list((run_dir / "models").glob(".*.tmp"))
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    resume_to_the_end(run_dir, reference)
