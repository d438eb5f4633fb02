"""``python -m agop_sweep.analyze RUN_DIR``: the analysis recomputed from a run's checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY, error_lines, run_cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run (checkpoints at every epoch of the smoke schedule); copy before changing."""
    root = tmp_path_factory.mktemp("analyze")
    proc = run_cli(*TINY, "optimizer=adam", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def _analyze(run_dir: Path, *overrides: str):
    return run_cli(str(run_dir), *overrides, cwd=run_dir.parent, module="agop_sweep.analyze")


def test_reanalysis_with_another_primary_reproduces_every_metric(finished_run: Path, tmp_path: Path) -> None:
    run_dir = _copy(finished_run, tmp_path)
    before = json.loads((run_dir / "results.json").read_text())
    (run_dir / "features.npz").unlink()
    proc = _analyze(run_dir, "analysis.primary=raw_cos_sqrt")
    assert proc.returncode == 0, proc.stderr
    after = json.loads((run_dir / "results.json").read_text())
    assert after["config"]["analysis"]["primary"] == "raw_cos_sqrt"
    assert after["epochs"] == before["epochs"]  # training history untouched
    assert [a["epoch"] for a in after["analysis"]] == [a["epoch"] for a in before["analysis"]] == [0, 1, 2, 3]
    for old, new in zip(before["analysis"], after["analysis"], strict=True):
        assert new["n_samples"] == old["n_samples"] and new["train_loss"] == pytest.approx(old["train_loss"])
        for lo, ln in zip(old["layers"], new["layers"], strict=True):
            assert ln["metrics"] == pytest.approx(lo["metrics"], abs=1e-12)  # same weights, same pass
            assert ln["corr"] == ln["metrics"]["raw_cos_sqrt"]
    with np.load(run_dir / "features.npz") as f:
        assert list(f["epochs"]) == [0, 1, 2, 3]
    assert (run_dir / "plots" / "training_analysis.png").exists()


def test_runs_saved_by_earlier_versions_can_be_reanalysed(finished_run: Path, tmp_path: Path) -> None:
    """Configs from before trainer.plots and optimizer.fused: trainer.live_plots, no fused."""
    run_dir = _copy(finished_run, tmp_path)
    path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["live_plots"] = cfg["trainer"].pop("plots") == "live"
    del cfg["optimizer"]["fused"]
    path.write_text(yaml.safe_dump(cfg))
    proc = _analyze(run_dir)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((run_dir / "results.json").read_text())["analysis"]) == 4


def test_wrong_directories_give_one_line_and_exit_1(finished_run: Path, tmp_path: Path) -> None:
    proc = _analyze(tmp_path)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [f"agop-analyze: error: {tmp_path} is not a run directory "
                                        f"({tmp_path / '.hydra' / 'config.yaml'} is missing)"]
    run_dir = _copy(finished_run, tmp_path)
    shutil.rmtree(run_dir / "models")
    proc = _analyze(run_dir)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [
        f"agop-analyze: error: {run_dir / 'models'} holds no model_epoch_*.pth checkpoints"]


def test_analyze_after_analysis_off_records_it_enabled_and_stays_quiet(tmp_path: Path) -> None:
    """A run trained with analysis=off, analyzed later: results.json then says the analysis
    ran (enabled: true), and matplotlib's per-font INFO lines stay out of the output."""
    proc = run_cli(*TINY, "analysis=off", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = json.loads((tmp_path / "run" / "results.json").read_text())
    assert before["analysis"] == [] and before["config"]["analysis"]["enabled"] is False
    proc = _analyze(tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    after = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [a["epoch"] for a in after["analysis"]] == [0, 1, 2, 3]
    assert after["config"]["analysis"]["enabled"] is True
    assert "fontTools" not in proc.stdout + proc.stderr
