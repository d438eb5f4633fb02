"""No refused, failed or interrupted command changes or loses an earlier result: every case
through the real CLI, with the sha256 of every file of the earlier run before and after."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, copy_of, finished_tiny_run, one_line_error, run_cli, tree_digest


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run; tests copy it before touching it."""
    root = tmp_path_factory.mktemp("integrity")
    return finished_tiny_run(root)


@pytest.fixture
def run_dir(finished_run: Path, tmp_path: Path) -> Path:
    return copy_of(finished_run, tmp_path)


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# -- refused starts --------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "expected"), [
    (["optimizer.lr=0.5"], "already holds a run; pass resume=true"),
    (["optimizer.lr=0.5", "resume=true"], "holds a different experiment: optimizer.lr (0.1 there, 0.5 now)"),
    (["model.width=8", "resume=true"], "holds a different experiment: model.width"),
])
def test_a_refused_start_changes_no_file_of_the_run(run_dir: Path, extra: list[str], expected: str) -> None:
    before = tree_digest(run_dir)
    proc = run_cli(*TINY, *extra, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert expected in one_line_error(proc)
    assert tree_digest(run_dir) == before  # .hydra/ and the log included


def test_after_a_refusal_the_run_still_resumes_and_reanalyzes(run_dir: Path) -> None:
    run_cli(*TINY, "optimizer.lr=0.5", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    proc = run_cli(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert "already completed" in proc.stdout + proc.stderr
    proc = run_cli(str(run_dir), cwd=run_dir.parent, module="agop_sweep.analyze")
    assert proc.returncode == 0, proc.stderr


def test_a_no_op_resume_changes_no_file_of_the_run(run_dir: Path) -> None:
    """Issue 22: it rewrote .hydra/*.yaml (overrides.yaml gained resume=true) and appended to
    the log. Now it only says so on the console."""
    before = tree_digest(run_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    proc = run_cli(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert "already completed; nothing to do" in proc.stdout + proc.stderr
    assert tree_digest(run_dir) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_analyze_with_every_checkpoint_refused_writes_nothing(run_dir: Path) -> None:
    """Issue 22: it rewrote results.json (analysis_seconds 0.0) and drew plots for a run
    trained with trainer.plots=off."""
    shutil.rmtree(run_dir / "plots")  # as trainer.plots=off leaves it
    for path in (run_dir / "models").iterdir():
        path.write_bytes(path.read_bytes()[:1000])
    before = tree_digest(run_dir)
    proc = _analyze(run_dir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("agop-analyze: error: ")]
    assert line.startswith(f"agop-analyze: error: none of the 4 checkpoints of {run_dir} could be analysed")
    assert "cannot be read as a checkpoint" in line
    assert tree_digest(run_dir) == before
    assert not (run_dir / "plots").exists()


# -- planted symbolic links (issue 22, point 3) ----------------------------------------------------
@pytest.mark.parametrize("link", ["models", "plots", ".hydra", "agop_sweep.log", ".lock", "results.json"])
def test_a_new_run_refuses_a_planted_symlink_into_another_run(run_dir: Path, tmp_path: Path,
                                                             link: str) -> None:
    """A new run into a dir whose models/ linked to another run's overwrote that run's
    checkpoints. Now: one line naming the link, and the other run's files unchanged."""
    before = tree_digest(run_dir)
    new = tmp_path / "new"
    new.mkdir()
    (new / link).symlink_to(run_dir / link)
    proc = run_cli(*TINY, "optimizer.lr=0.5", f"hydra.run.dir={new}", cwd=tmp_path)
    line = one_line_error(proc)
    assert line.startswith(f"{new / link} is a symbolic link (to {run_dir / link}) that no run created")
    assert tree_digest(run_dir) == before
    assert sorted(p.name for p in new.iterdir()) == [link]


def test_a_no_op_resume_refuses_a_planted_symlink_and_deletes_nothing_through_it(run_dir: Path,
                                                                                 tmp_path: Path) -> None:
    """A no-op resume=true deleted another run's temporary file through a linked models/."""
    other = tmp_path / "other"
    shutil.copytree(run_dir / "models", other)
    (other / ".model_epoch_9.pth.abc.tmp").write_bytes(b"a write in progress")
    shutil.rmtree(run_dir / "models")
    (run_dir / "models").symlink_to(other, target_is_directory=True)
    before, before_other = tree_digest(run_dir), tree_digest(other)
    proc = run_cli(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "is a symbolic link" in one_line_error(proc)
    assert tree_digest(run_dir) == before and tree_digest(other) == before_other


def test_analyze_refuses_a_planted_symlink(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_plots"
    other.mkdir()
    (other / "training_analysis.png").write_bytes(b"another run's figure")
    shutil.rmtree(run_dir / "plots")
    (run_dir / "plots").symlink_to(other, target_is_directory=True)
    before, before_other = tree_digest(run_dir), tree_digest(other)
    proc = _analyze(run_dir)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{run_dir / 'plots'} is a symbolic link" in proc.stderr
    assert tree_digest(run_dir) == before and tree_digest(other) == before_other


def test_a_run_dir_that_is_itself_a_link_is_the_users_choice(tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "scratch", target_is_directory=True)
    proc = run_cli(*TINY, "trainer.plots=off", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scratch" / "results.json").is_file()


def test_a_sweep_over_a_run_control_key_is_refused_before_any_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *TINY, "data.root=a,b", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    line = one_line_error(proc)
    assert "data.root" in line and "share one directory" in line
    assert not sweep.exists()


# -- every job accounted for -----------------------------------------------------------------------
def test_jobs_failing_at_start_leave_a_failed_record(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", *TINY, "model.width=0,16", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1
    records = {p.parent.name.split("model.width=")[1].split(",")[0]: json.loads(p.read_text())
               for p in sweep.glob("*/results.json")}
    assert sorted(records) == ["0", "16"]
    failed = records["0"]
    assert failed["status"] == "failed" and failed["epochs"] == []
    assert failed["error"] == "ConfigError: Invalid config: model.width=0: must be >= 1"
    assert failed["run"]["width"] == 0 and failed["config"]["model"]["width"] == 0
    assert records["16"]["status"] == "completed"
    summary = run_cli(str(sweep), cwd=tmp_path, module="agop_sweep.aggregate")
    assert summary.returncode == 0, summary.stderr
    assert "Aggregated 2 runs: 1 completed, 1 failed." in summary.stdout
    report = (sweep / "report.md").read_text()
    assert "Failed runs" in report and "model.width=0: must be >= 1" in report
    # The failed job's directory can be reused once the cause is fixed.
    failed_dir = next(sweep.glob("*model.width=0,*"))
    proc = run_cli(*TINY, "model.width=4", f"hydra.run.dir='{failed_dir}'", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_failure_into_a_directory_of_another_run_writes_nothing(run_dir: Path) -> None:
    before = tree_digest(run_dir)
    proc = run_cli(*TINY, "model.width=0", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert "model.width=0" in one_line_error(proc)
    assert tree_digest(run_dir) == before


# -- analyze keeps what was valid ------------------------------------------------------------------
def _analyze(run_dir: Path):
    return run_cli(str(run_dir), cwd=run_dir.parent, module="agop_sweep.analyze")


def _checkpoint(run_dir: Path, epoch: int) -> Path:
    return run_dir / _results(run_dir)["checkpoints"][str(epoch)]


def test_analyze_with_a_truncated_checkpoint_keeps_every_analysis(run_dir: Path) -> None:
    before = _results(run_dir)
    path = _checkpoint(run_dir, 2)
    path.write_bytes(path.read_bytes()[:1000])
    proc = _analyze(run_dir)
    assert proc.returncode == 1
    assert f"{path} cannot be read as a checkpoint" in proc.stderr
    after = _results(run_dir)
    assert [a["epoch"] for a in after["analysis"]] == [0, 1, 2, 3]
    assert after["analysis"][2] == before["analysis"][2]  # kept as it was
    for old, new in zip(before["analysis"], after["analysis"], strict=True):
        for lo, ln in zip(old["layers"], new["layers"], strict=True):
            assert ln["metrics"] == pytest.approx(lo["metrics"], abs=1e-12)


def test_analyze_reports_a_deleted_checkpoint_and_unlists_it(run_dir: Path) -> None:
    path = _checkpoint(run_dir, 1)
    path.unlink()
    proc = _analyze(run_dir)
    assert proc.returncode == 1 and f"{path} is missing" in proc.stderr
    after = _results(run_dir)
    assert [a["epoch"] for a in after["analysis"]] == [0, 1, 2, 3]
    assert sorted(after["checkpoints"]) == ["0", "2", "3"]


# -- pickles are never run ---------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(run_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _checkpoint(run_dir, 3)
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    proc = _analyze(run_dir)
    assert proc.returncode == 1
    assert f"{path} asks to load a type that is not plain data" in proc.stderr
    assert not marker.exists()


def test_a_crafted_state_file_is_refused_on_resume(run_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"payload": _Payload(marker)}, run_dir / "state.pt")
    before = tree_digest(run_dir)
    proc = run_cli(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert "not plain data" in one_line_error(proc)
    assert not marker.exists()
    assert tree_digest(run_dir) == before


# -- unwritable output locations ---------------------------------------------------------------------
def test_a_read_only_parent_of_the_run_dir(tmp_path: Path, read_only) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    read_only(parent)
    proc = run_cli(*TINY, f"hydra.run.dir={parent / 'run'}", cwd=tmp_path)
    assert f"{parent} is not writable" in one_line_error(proc)


def test_a_read_only_parent_of_the_sweep_dir(tmp_path: Path, read_only) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    read_only(parent)
    proc = run_cli("-m", *TINY, "seed=1,2", f"hydra.sweep.dir={parent / 'sweep'}", cwd=tmp_path)
    assert f"{parent} is not writable" in one_line_error(proc)


def test_a_read_only_run_dir(tmp_path: Path, read_only) -> None:
    run = tmp_path / "run"
    run.mkdir()
    read_only(run)
    proc = run_cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert f"{run} is not writable" in one_line_error(proc)


def test_a_run_dir_below_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run_cli(*TINY, f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert f"{blocker} is a file, not a directory" in one_line_error(proc)


def test_a_read_only_models_dir_on_resume(run_dir: Path, read_only) -> None:
    (run_dir / "state.pt").unlink()  # nothing to resume from, so the run would start over
    (run_dir / "results.json").unlink()
    before = tree_digest(run_dir)
    read_only(run_dir / "models")
    proc = run_cli(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert f"{run_dir / 'models'} is not a writable directory" in one_line_error(proc)
    assert tree_digest(run_dir) == before
