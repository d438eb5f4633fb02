"""``python -m agop_sweep.analyze RUN_DIR``: the analysis recomputed from a run's checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_of, error_lines, run_cli, tiny


def _analyze(run_dir: Path, *overrides: str):
    return run_cli(str(run_dir), *overrides, cwd=run_dir.parent, module="agop_sweep.analyze")


def test_reanalysis_with_another_primary_reproduces_every_metric(finished_run: Path, tmp_path: Path) -> None:
    """Through the command line, figures included; matplotlib's per-font INFO lines stay out of
    its output."""
    run_dir = copy_of(finished_run, tmp_path)
    before = json.loads((run_dir / "results.json").read_text())
    (run_dir / "features.npz").unlink()
    proc = _analyze(run_dir, "analysis.primary=raw_cos_sqrt")
    assert proc.returncode == 0, proc.stderr
    assert "fontTools" not in proc.stdout + proc.stderr
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


def test_runs_saved_by_earlier_versions_can_be_reanalysed(finished_run: Path, tmp_path: Path,
                                                          no_figures: None) -> None:
    """Configs from before trainer.plots and optimizer.fused: trainer.live_plots, no fused."""
    run_dir = copy_of(finished_run, tmp_path)
    path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["trainer"]["live_plots"] = cfg["trainer"].pop("plots") == "live"
    del cfg["optimizer"]["fused"]
    path.write_text(yaml.safe_dump(cfg))
    assert _main(str(run_dir)) == 0
    assert len(json.loads((run_dir / "results.json").read_text())["analysis"]) == 4


def test_wrong_directories_give_one_line_and_exit_1(finished_run: Path, tmp_path: Path, capsys) -> None:
    proc = _analyze(tmp_path)
    assert proc.returncode == 1
    (line,) = error_lines(proc.stderr)
    assert line.startswith(f"agop-analyze: error: {tmp_path} is not a run directory "
                           f"({tmp_path / '.hydra' / 'config.yaml'} is missing) and holds no runs")
    run_dir = copy_of(finished_run, tmp_path)
    shutil.rmtree(run_dir / "models")
    capsys.readouterr()
    assert _main(str(run_dir)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"agop-analyze: error: {run_dir / 'models'} holds no model_epoch_*.pth checkpoints"]


def test_analyze_after_analysis_off_records_it_enabled(tmp_path: Path, no_figures: None, app_here) -> None:
    """A run trained with analysis=off, analyzed later: results.json then says the analysis
    ran (enabled: true)."""
    proc = app_here(*tiny("analysis=off"), f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = json.loads((tmp_path / "run" / "results.json").read_text())
    assert before["analysis"] == [] and before["config"]["analysis"]["enabled"] is False
    assert _main(str(tmp_path / "run")) == 0
    after = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [a["epoch"] for a in after["analysis"]] == [0, 1, 2, 3]
    assert after["config"]["analysis"]["enabled"] is True


# -- issue 23: nothing earlier is lost, every re-analysis is recorded, sweeps, both name kinds ------
def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-analyses without drawing figures (most of a tiny run's re-analysis time)."""
    from agop_sweep.figures import run as figures_run

    monkeypatch.setattr(figures_run, "save_run_figures", lambda *args, **kwargs: [])


def _main(*args: str) -> int:
    """``agop-analyze`` in this process (its exit code)."""
    from agop_sweep.analyze.command import main

    try:
        main(list(args))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_reanalysis_keeps_the_earlier_numbers_and_records_itself(finished_run: Path, tmp_path: Path,
                                                                  no_figures: None) -> None:
    run_dir = copy_of(finished_run, tmp_path)
    before = _results(run_dir)
    assert _main(str(run_dir), "analysis.primary=raw_cos_sqrt") == 0
    after = _results(run_dir)
    for old, new in zip(before["analysis"][1:], after["analysis"][1:], strict=True):
        for lo, ln in zip(old["layers"], new["layers"], strict=True):
            kept = ln["alphas"]["delta_cos"]  # the earlier primary's exponent, under its kind
            assert kept["alpha_star"] == pytest.approx(lo["alpha_star"], abs=1e-12)
            assert kept["alpha_corr"] == pytest.approx(lo["alpha_corr"], abs=1e-9)
            assert ln["corr"] == ln["metrics"]["raw_cos_sqrt"]
    (entry,) = after["reanalyses"]
    assert entry["options"] == ["analysis.primary=raw_cos_sqrt"] and entry["complete"] is True
    assert (entry["previous_primary"], entry["primary"]) == ("delta_cos_agop", "raw_cos_sqrt")
    assert entry["epochs"] == [0, 1, 2, 3] and entry["unreadable"] == [] and entry["at"] > 0
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["analysis"]["primary"] == "raw_cos_sqrt"  # the config names what made the numbers
    # Again, without spectra: the earlier spectra stay; the run's config is now the base.
    assert _main(str(run_dir), "analysis.spectra=false") == 0
    again = _results(run_dir)
    assert [e["primary"] for e in again["reanalyses"]] == ["raw_cos_sqrt", "raw_cos_sqrt"]
    assert again["reanalyses"][1]["options"] == ["analysis.spectra=false"]
    for old, new in zip(after["analysis"], again["analysis"], strict=True):
        for lo, ln in zip(old["layers"], new["layers"], strict=True):
            assert ln["spectra"] == lo["spectra"] and "delta_cos" in ln["alphas"]


def _sweep_of(finished_run: Path, root: Path) -> Path:
    for name in ("optimizer=adam,seed=1", "optimizer=adam,seed=2"):
        shutil.copytree(finished_run, root / "sweep" / name)
    return root / "sweep"


def test_a_sweep_dir_is_reanalysed_run_by_run_and_resumable(finished_run: Path, tmp_path: Path, caplog,
                                                             no_figures: None) -> None:
    """A re-analysis of a sweep that stops half-way (here: one run is in use) goes on where it
    stopped when the command is given again; --force redoes the runs already done."""
    import logging

    from agop_sweep.store import lock

    sweep = _sweep_of(finished_run, tmp_path)
    first, second = sorted(p for p in sweep.iterdir())
    fd = lock.acquire(second)  # as the job training that run would hold it
    try:
        with caplog.at_level(logging.INFO, logger="agop_sweep.analyze.command"):
            assert _main(str(sweep), "analysis.primary=raw_pearson_agop") == 1
    finally:
        os.close(fd)
    assert len(_results(first)["reanalyses"]) == 1 and "reanalyses" not in _results(second)
    assert "[1/2] optimizer=adam,seed=1: 4 analysed epochs" in caplog.text
    assert "[2/2] optimizer=adam,seed=2: failed" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="agop_sweep.analyze.command"):
        assert _main(str(sweep), "analysis.primary=raw_pearson_agop") == 0
    assert "[1/2] optimizer=adam,seed=1: skipped" in caplog.text
    assert "Re-analysed 1 of 2 runs (1 skipped" in caplog.text
    assert [len(_results(d)["reanalyses"]) for d in (first, second)] == [1, 1]
    assert _results(second)["config"]["analysis"]["primary"] == "raw_pearson_agop"
    assert _main(str(sweep), "analysis.primary=raw_pearson_agop", "--force") == 0
    assert [len(_results(d)["reanalyses"]) for d in (first, second)] == [2, 2]


def test_an_empty_directory_is_neither_a_run_nor_a_sweep(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert _main(str(tmp_path / "empty")) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no runs" in err


def test_portable_checkpoint_names_are_read(finished_run: Path, tmp_path: Path, no_figures: None) -> None:
    """Checkpoints named model_epoch_<E>-<dataset>-width<W>-depth<D>-<act>.pth (copied, say,
    from a run with trainer.checkpoint_names=portable) are analysed like the default names."""
    run_dir = copy_of(finished_run, tmp_path)
    for path in (run_dir / "models").iterdir():
        epoch = int(path.name.split(":")[0].removeprefix("model_epoch_"))
        path.rename(path.with_name(f"model_epoch_{epoch}-synthetic-width16-depth2-relu.pth"))
    assert _main(str(run_dir)) == 0
    after = _results(run_dir)
    assert [a["epoch"] for a in after["analysis"]] == [0, 1, 2, 3]
    assert after["checkpoints"] == {str(e): f"models/model_epoch_{e}-synthetic-width16-depth2-relu.pth"
                                    for e in range(4)}
