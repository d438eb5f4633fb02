"""No refused, failed or interrupted command changes or loses an earlier result: every case
through the app's command line (run by this process where the command stops before training:
conftest.app_here; one refusal in its own process), with the sha256 of every file of the earlier
run before and after."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY, copy_of, one_line_error, run_cli, tiny, tree_digest


@pytest.fixture
def run_dir(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's finished run (conftest)."""
    return copy_of(finished_run, tmp_path)


@pytest.fixture
def analyze(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
            ) -> Callable[..., tuple[int, str]]:
    """``analyze(run_dir, figures=False)``: ``agop-analyze RUN_DIR`` in this process, its exit
    code and stderr; ``figures=False`` skips drawing the run's figures."""
    from agop_sweep.analyze.command import main
    from agop_sweep.figures import run as figures_run

    def run(run_dir: Path, figures: bool = False) -> tuple[int, str]:
        with monkeypatch.context() as mp:
            mp.setattr(logging.getLogger(), "handlers", [])  # as in a fresh process
            if not figures:
                mp.setattr(figures_run, "save_run_figures", lambda *args, **kwargs: [])
            capfd.readouterr()
            try:
                main([str(run_dir)])
            except SystemExit as e:
                return int(e.code or 0), capfd.readouterr().err
            return 0, capfd.readouterr().err

    return run


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


# -- refused starts --------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "expected"), [
    (["optimizer.lr=0.5"],
     "already holds a run; pass resume=true to continue it, or choose another hydra.run.dir"),
    (["optimizer.lr=0.5", "resume=true"], "holds a different experiment: optimizer.lr (0.1 there, 0.5 now)"),
    (["model.width=8", "resume=true"], "holds a different experiment: model.width"),
])
def test_a_refused_start_changes_no_file_of_the_run(run_dir: Path, extra: list[str], expected: str,
                                                   app_here) -> None:
    before = tree_digest(run_dir)
    proc = app_here(*TINY, *extra, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert expected in one_line_error(proc)
    assert tree_digest(run_dir) == before  # .hydra/ and the log included


def test_a_refusal_through_the_command_line_is_exactly_one_line(run_dir: Path) -> None:
    """The command itself (the other tests here run the app in their own process): exit 1, one
    line, no frame of Hydra's around it, no file changed."""
    before = tree_digest(run_dir)
    proc = run_cli(*TINY, "optimizer.lr=0.5", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 1 and proc.stderr.endswith("already holds a run; pass resume=true to continue "
                                                         "it, or choose another hydra.run.dir\n"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert tree_digest(run_dir) == before


def test_after_a_refusal_the_run_still_resumes_and_reanalyzes(run_dir: Path, analyze, app_here) -> None:
    app_here(*TINY, "optimizer.lr=0.5", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    proc = app_here(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert "already completed" in proc.stdout + proc.stderr
    code, err = analyze(run_dir)
    assert code == 0, err


def test_a_no_op_resume_changes_no_file_of_the_run(run_dir: Path, app_here) -> None:
    """Issue 22: it rewrote .hydra/*.yaml (overrides.yaml gained resume=true) and appended to
    the log. Now it only says so on the console."""
    before = tree_digest(run_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"}
    proc = app_here(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert "already completed; nothing to do" in proc.stdout + proc.stderr
    assert tree_digest(run_dir) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_analyze_with_every_checkpoint_refused_writes_nothing(run_dir: Path, analyze) -> None:
    """Issue 22: it rewrote results.json (analysis_seconds 0.0) and drew plots for a run
    trained with trainer.plots=off."""
    shutil.rmtree(run_dir / "plots")  # as trainer.plots=off leaves it
    for path in (run_dir / "models").iterdir():
        path.write_bytes(path.read_bytes()[:1000])
    before = tree_digest(run_dir)
    code, err = analyze(run_dir, figures=True)
    assert code == 1 and "Traceback" not in err, err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("agop-analyze: error: ")]
    assert line.startswith(f"agop-analyze: error: none of the 4 checkpoints of {run_dir} could be analysed")
    assert "cannot be read as a checkpoint" in line
    assert tree_digest(run_dir) == before
    assert not (run_dir / "plots").exists()


# -- planted symbolic links (issue 22, point 3) ----------------------------------------------------
@pytest.mark.parametrize("link", ["models", "plots", ".hydra", "agop_sweep.log", ".lock", "results.json"])
def test_a_new_run_refuses_a_planted_symlink_into_another_run(run_dir: Path, tmp_path: Path,
                                                             link: str, app_here) -> None:
    """A new run into a dir whose models/ linked to another run's overwrote that run's
    checkpoints. Now: one line naming the link, and the other run's files unchanged."""
    before = tree_digest(run_dir)
    new = tmp_path / "new"
    new.mkdir()
    (new / link).symlink_to(run_dir / link)
    proc = app_here(*TINY, "optimizer.lr=0.5", f"hydra.run.dir={new}", cwd=tmp_path)
    line = one_line_error(proc)
    assert line.startswith(f"{new / link} is a symbolic link (to {run_dir / link}) that no run created")
    assert tree_digest(run_dir) == before
    assert sorted(p.name for p in new.iterdir()) == [link]


def test_a_no_op_resume_refuses_a_planted_symlink_and_deletes_nothing_through_it(
        run_dir: Path, tmp_path: Path, app_here) -> None:
    """A no-op resume=true deleted another run's temporary file through a linked models/."""
    other = tmp_path / "other"
    shutil.copytree(run_dir / "models", other)
    (other / ".model_epoch_9.pth.abc.tmp").write_bytes(b"a write in progress")
    shutil.rmtree(run_dir / "models")
    (run_dir / "models").symlink_to(other, target_is_directory=True)
    before, before_other = tree_digest(run_dir), tree_digest(other)
    proc = app_here(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "is a symbolic link" in one_line_error(proc)
    assert tree_digest(run_dir) == before and tree_digest(other) == before_other


def test_analyze_refuses_a_planted_symlink(run_dir: Path, tmp_path: Path, analyze) -> None:
    other = tmp_path / "other_plots"
    other.mkdir()
    (other / "training_analysis.png").write_bytes(b"another run's figure")
    shutil.rmtree(run_dir / "plots")
    (run_dir / "plots").symlink_to(other, target_is_directory=True)
    before, before_other = tree_digest(run_dir), tree_digest(other)
    code, err = analyze(run_dir, figures=True)
    assert code == 1 and "Traceback" not in err, err
    assert f"{run_dir / 'plots'} is a symbolic link" in err
    assert tree_digest(run_dir) == before and tree_digest(other) == before_other


def test_a_run_dir_that_is_itself_a_link_is_the_users_choice(tmp_path: Path, app_here) -> None:
    (tmp_path / "scratch").mkdir()
    (tmp_path / "run").symlink_to(tmp_path / "scratch", target_is_directory=True)
    proc = app_here(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scratch" / "results.json").is_file()


def test_a_sweep_over_a_run_control_key_is_refused_before_any_job(tmp_path: Path, app_here) -> None:
    sweep = tmp_path / "sweep"
    proc = app_here("-m", *TINY, "data.root=a,b", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    line = one_line_error(proc)
    assert "data.root" in line and "share one directory" in line
    assert not sweep.exists()


# -- every job accounted for -----------------------------------------------------------------------
def test_jobs_failing_at_start_leave_a_failed_record(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                     app_here) -> None:
    from agop_sweep.aggregate.command import main as aggregate_main

    sweep = tmp_path / "sweep"
    proc = app_here("-m", *tiny("model.width=0,16"), f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1
    records = {p.parent.name.split("model.width=")[1].split(",")[0]: json.loads(p.read_text())
               for p in sweep.glob("*/results.json")}
    assert sorted(records) == ["0", "16"]
    failed = records["0"]
    assert failed["status"] == "failed" and failed["epochs"] == []
    assert failed["error"] == "ConfigError: Invalid config: model.width=0: must be >= 1"
    assert failed["run"]["width"] == 0 and failed["config"]["model"]["width"] == 0
    assert records["16"]["status"] == "completed"
    capfd.readouterr()
    aggregate_main([str(sweep), "--no-figures"])
    assert "Aggregated 2 runs: 1 completed, 1 failed." in capfd.readouterr().out
    report = (sweep / "report.md").read_text()
    assert "Failed runs" in report and "model.width=0: must be >= 1" in report
    # The failed job's directory can be reused once the cause is fixed.
    failed_dir = next(sweep.glob("*model.width=0,*"))
    proc = app_here(*tiny("model.width=4"), f"hydra.run.dir='{failed_dir}'", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_a_failure_into_a_directory_of_another_run_writes_nothing(run_dir: Path, app_here) -> None:
    before = tree_digest(run_dir)
    proc = app_here(*TINY, "model.width=0", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert "model.width=0" in one_line_error(proc)
    assert tree_digest(run_dir) == before


# -- analyze keeps what was valid ------------------------------------------------------------------
def _checkpoint(run_dir: Path, epoch: int) -> Path:
    return run_dir / _results(run_dir)["checkpoints"][str(epoch)]


def test_analyze_with_a_truncated_checkpoint_keeps_every_analysis(run_dir: Path, analyze) -> None:
    before = _results(run_dir)
    path = _checkpoint(run_dir, 2)
    path.write_bytes(path.read_bytes()[:1000])
    code, err = analyze(run_dir)
    assert code == 1
    assert f"{path} cannot be read as a checkpoint" in err
    after = _results(run_dir)
    assert [a["epoch"] for a in after["analysis"]] == [0, 1, 2, 3]
    assert after["analysis"][2] == before["analysis"][2]  # kept as it was
    for old, new in zip(before["analysis"], after["analysis"], strict=True):
        for lo, ln in zip(old["layers"], new["layers"], strict=True):
            assert ln["metrics"] == pytest.approx(lo["metrics"], abs=1e-12)


def test_analyze_reports_a_deleted_checkpoint_and_unlists_it(run_dir: Path, analyze) -> None:
    path = _checkpoint(run_dir, 1)
    path.unlink()
    code, err = analyze(run_dir)
    assert code == 1 and f"{path} is missing" in err
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


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(run_dir: Path, tmp_path: Path,
                                                                  analyze) -> None:
    marker = tmp_path / "pwned"
    path = _checkpoint(run_dir, 3)
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, path)
    code, err = analyze(run_dir)
    assert code == 1
    assert f"{path} asks to load a type that is not plain data" in err
    assert not marker.exists()


def test_a_crafted_state_file_is_refused_on_resume(run_dir: Path, tmp_path: Path, app_here) -> None:
    marker = tmp_path / "pwned"
    torch.save({"payload": _Payload(marker)}, run_dir / "state.pt")
    before = tree_digest(run_dir)
    proc = app_here(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert "not plain data" in one_line_error(proc)
    assert not marker.exists()
    assert tree_digest(run_dir) == before


# -- unwritable output locations ---------------------------------------------------------------------
def test_a_read_only_parent_of_the_run_dir(tmp_path: Path, read_only, app_here) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    read_only(parent)
    proc = app_here(*TINY, f"hydra.run.dir={parent / 'run'}", cwd=tmp_path)
    assert f"{parent} is not writable" in one_line_error(proc)


def test_a_read_only_parent_of_the_sweep_dir(tmp_path: Path, read_only, app_here) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    read_only(parent)
    proc = app_here("-m", *TINY, "seed=1,2", f"hydra.sweep.dir={parent / 'sweep'}", cwd=tmp_path)
    assert f"{parent} is not writable" in one_line_error(proc)


def test_a_read_only_run_dir(tmp_path: Path, read_only, app_here) -> None:
    run = tmp_path / "run"
    run.mkdir()
    read_only(run)
    proc = app_here(*TINY, f"hydra.run.dir={run}", cwd=tmp_path)
    assert f"{run} is not writable" in one_line_error(proc)


def test_a_run_dir_below_a_regular_file(tmp_path: Path, app_here) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = app_here(*TINY, f"hydra.run.dir={blocker / 'run'}", cwd=tmp_path)
    assert f"{blocker} is a file, not a directory" in one_line_error(proc)


def test_a_read_only_models_dir_on_resume(run_dir: Path, read_only, app_here) -> None:
    (run_dir / "state.pt").unlink()  # nothing to resume from, so the run would start over
    (run_dir / "results.json").unlink()
    before = tree_digest(run_dir)
    read_only(run_dir / "models")
    proc = app_here(*TINY, "resume=true", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert f"{run_dir / 'models'} is not a writable directory" in one_line_error(proc)
    assert tree_digest(run_dir) == before
