"""The aggregate of a mixed set of runs: every launched job accounted for (failed before
training, interrupted), lines that average seeds and ignore run-control keys, and figures that
stay readable for depths 1 and 3, MSE and cross-entropy, three datasets and 20+ lines: no two
texts overlap, legends outside the panels, every panel at least 120 px, losses of different
loss functions on different axes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from aggregate_fakes import build_figures, end_as
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox

from agop_sweep.aggregate import aggregate, discover, main, tables
from agop_sweep.aggregate.command import line_groups
from agop_sweep.aggregate.figures import comparison_figure
from agop_sweep.analyze.names import VARIANTS
from agop_sweep.figures.style import style
from agop_sweep.store.record import RunRecord

MIN_PANEL_PX = 120
RUN_CONTROL_TEXT = ("data.root", "data.verify", "trainer.plots", "False", "True")


def write_run(run_dir: Path, overrides: list[str], *, optimizer: str = "adam", seed: int = 1, depth: int = 2,
              loss: str = "mse", data: str = "synthetic", width: int = 16, act: str = "relu", epochs: int = 4,
              status: str = "completed", run_extra: dict[str, Any] | None = None) -> RunRecord:
    """A run directory (results.json, .hydra/overrides.yaml, features.npz) with made-up
    numbers: losses near 2.3 for cross-entropy and 0.09 for MSE, SVHN-shaped images for svhn."""
    rng = np.random.default_rng(zlib.crc32(str(run_dir).encode()))
    shape = [3, 32, 32] if data == "svhn" else [1, 8, 8]
    d = int(np.prod(shape))
    config = {"optimizer": {"name": optimizer, "lr": 0.01}, "seed": seed, "loss": loss,
              "model": {"width": width, "depth": depth, "act": act}, "trainer": {"plots": "end"},
              "schedule": {"epochs": epochs, "checkpoints": list(range(epochs + 1))},
              "analysis": {"primary": "delta_cos_agop"}, "data": {"name": data, "image_shape": shape}}
    record = RunRecord.start({"optimizer": optimizer, "lr": 0.01, "seed": seed, "dataset": data,
                              "width": width, "depth": depth, "act": act, "loss": loss, **(run_extra or {})},
                             config)
    base = 2.3 if loss == "ce" else 0.09
    for e in range(epochs + 1):
        value = base * (1 - 0.1 * e * rng.random())
        record.finish_epoch({"epoch": e, "train_loss": value, "val_loss": 1.05 * value, "seconds": 0.5,
                          "train_acc": 0.1 + 0.2 * e * rng.random(),
                          "val_acc": 0.1 + 0.15 * e * rng.random()})
        layers = []
        for l in range(depth):
            metrics = {v: None if e == 0 and v.startswith("delta") else float(rng.random()) for v in VARIANTS}
            spectrum = {"effective_rank": float(1 + 10 * rng.random()), "top5_share": [0.3, 0.2]}
            layers.append({"layer": l, "shape": [width, d if l == 0 else width],
                           "corr": metrics["delta_cos_agop"], "metrics": metrics,
                           "spectra": {"agop": spectrum, "nfm_delta": dict(spectrum)}})
        record.add_analysis({"epoch": e, "n_samples": 100, "seconds": 0.1, "layers": layers})
    end_as(record, status)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    record.save(run_dir / "results.json")
    n = epochs + 1
    feats = {"epochs": np.arange(n), "image_shape": np.array(shape), "eigvec_epoch": np.array(n - 1),
             "nfm_eigvecs": rng.standard_normal((4, d)), "agop_eigvecs": rng.standard_normal((4, d))}
    np.savez(run_dir / "features.npz", **feats, **{k: rng.random((n, d)) for k in
                                                   ("nfm_diag", "nfm_delta_diag", "agop_diag")})
    return record


def write_failed_at_start(run_dir: Path, overrides: list[str], error: str) -> RunRecord:
    """What a job that failed before training leaves: status failed, no epochs, no analysis,
    null for what only training would know."""
    run = {"optimizer": "muon", "lr": 0.01, "seed": 1, "dataset": "svhn", "width": 16, "depth": 3,
           "act": "relu", "loss": "mse", "n_train": None, "n_val": None, "device": "cpu", "torch": None,
           "version": "0", "git": None}
    record = RunRecord.start(run, {"optimizer": {"name": "muon"}, "data": {"name": "svhn"}})
    record.mark_failed(error)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    record.save(run_dir / "results.json")
    return record


def dead_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_mixed_set(root: Path) -> Path:
    """3 optimizers x depth 1, 3 x mse, ce x digits, synthetic (adam at depth 3 with two seeds,
    the second one with trainer.plots=off), SVHN-format runs with run-control overrides, a
    job that failed before training and an interrupted one: 32 runs, 28 lines by optimizer."""
    i = 0
    for opt in ("sgd", "adam", "muon"):
        for depth in (1, 3):
            for loss in ("mse", "ce"):
                for data in ("digits", "synthetic"):
                    for seed in (1, 2) if (opt, depth) == ("adam", 3) else (1,):
                        control = ["trainer.plots=off"] if seed == 2 else []
                        overrides = [f"optimizer={opt}", f"model.depth={depth}", f"loss={loss}",
                                     f"data={data}", f"seed={seed}", *control]
                        write_run(root / f"job{i:02d}", overrides, optimizer=opt, seed=seed, depth=depth,
                                  loss=loss, data=data)
                        i += 1
    for opt, act in (("sgd", "tanh"), ("adam", "gelu")):
        overrides = [f"optimizer={opt}", "data=svhn", "data.root=/data/svhn", "data.verify=false",
                     "model.width=32", f"model.act={act}", "model.depth=3"]
        write_run(root / f"svhn_{opt}", overrides, optimizer=opt, depth=3, data="svhn", width=32, act=act)
    write_failed_at_start(root / "failed", ["optimizer=muon", "data=svhn", "data.root=/nowhere"],
                          "FileNotFoundError: /nowhere/train_32x32.mat")
    write_run(root / "interrupted", ["optimizer=muon", "model.depth=3", "data=digits", "model.act=gelu",
                                     "data.image_shape=[1,8,8]"], optimizer="muon", depth=3, data="digits",
              act="gelu", status="running", run_extra={"pid": dead_pid(), "host": socket.gethostname()})
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mixed_set(tmp_path_factory.mktemp("mixed") / "set")


@pytest.fixture(scope="module")
def mixed_figures(mixed: Path) -> tuple[dict[str, Figure], Any]:
    runs, skipped = discover.find_runs([mixed])
    assert not skipped
    df = tables.tidy_table(runs)
    table = tables.runs_table(runs, df, "delta_cos_agop")
    figures = build_figures(runs, table, df, "delta_cos_agop", "optimizer")
    return figures, line_groups(runs, table, "optimizer")


# -- measuring a drawn figure ----------------------------------------------------------------------
def draw(fig: Figure) -> tuple[Any, list[Text]]:
    """Draw ``fig`` with an Agg renderer; the renderer and every text it drew (non-empty)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    drawn: dict[int, Text] = {}
    original = renderer.draw_text

    def spy(gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if mtext is not None and s.strip():
            drawn[id(mtext)] = mtext
        return original(gc, x, y, s, prop, angle, ismath=ismath, mtext=mtext)

    renderer.draw_text = spy
    with style():
        canvas.draw()
    del renderer.draw_text
    assert canvas.get_renderer() is renderer
    return renderer, list(drawn.values())


def _overlap(a: Bbox, b: Bbox, tol: float = 0.5) -> bool:
    return min(a.x1, b.x1) - max(a.x0, b.x0) > tol and min(a.y1, b.y1) - max(a.y0, b.y0) > tol


def check_readable(fig: Figure) -> list[str]:
    """What makes ``fig`` hard to read: overlapping texts, texts off the figure, legends over
    panels, panels under MIN_PANEL_PX."""
    renderer, texts = draw(fig)
    problems = []
    page = fig.bbox
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    for i, (text, box) in enumerate(boxes):
        if box.x0 < page.x0 - 1 or box.x1 > page.x1 + 1 or box.y0 < page.y0 - 1 or box.y1 > page.y1 + 1:
            problems.append(f"{text!r} leaves the figure: {box.bounds}")
        problems += [f"{text!r} overlaps {other!r}" for other, b in boxes[i + 1:] if _overlap(box, b)]
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]  # bars are slim
    for ax in axes:
        box = ax.get_window_extent(renderer)
        if box.width < MIN_PANEL_PX or box.height < MIN_PANEL_PX:
            problems.append(f"panel {ax.get_title()!r} is {box.width:.0f} x {box.height:.0f} px")
    legends = [*fig.legends, *(ax.get_legend() for ax in axes if ax.get_legend())]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        problems += [f"the legend covers panel {ax.get_title()!r}" for ax in axes
                     if _overlap(box, ax.get_window_extent(renderer), tol=0)]
    return problems


# -- 1. every launched job is accounted for ---------------------------------------------------------
def test_failed_at_start_is_counted_and_listed(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    write_run(sweep / "ok", ["optimizer=adam", "seed=1"])
    write_failed_at_start(sweep / "bad", ["optimizer=muon", "data=svhn"],
                          "FileNotFoundError: no train_32x32.mat")
    main([str(sweep), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert out.startswith("Aggregated 2 runs: 1 completed, 1 failed. Wrote into ")
    for name in ("comparison", "losses", "final_correlation", "effective_rank", "features"):
        assert f"{name}.png" in out
    report = (tmp_path / "out" / "report.md").read_text()
    assert "2 runs launched: 1 completed, 1 failed." in report
    assert "## Failed runs\n\n- `bad`: FileNotFoundError: no train_32x32.mat\n" in report
    table = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run")
    assert table.loc["bad", "status"] == "failed" and pd.isna(table.loc["bad", "last_epoch"])
    assert table.loc["bad", "error"] == "FileNotFoundError: no train_32x32.mat"


def test_only_failed_jobs_still_make_a_report(tmp_path: Path) -> None:
    for i in range(2):
        write_failed_at_start(tmp_path / "sweep" / f"job{i}", [f"seed={i}"], f"ValueError: bad {i}")
    summary = aggregate([tmp_path / "sweep"], tmp_path / "out")
    assert summary.runs == 2 and list(summary.table["status"]) == ["failed", "failed"]
    assert [p.name for p in summary.files] == ["runs.csv", "metrics.parquet", "report.md"]  # no data to draw
    report = (tmp_path / "out" / "report.md").read_text()
    assert "2 runs launched: 2 failed." in report and "ValueError: bad 1" in report


# -- 2. interrupted ------------------------------------------------------------------------------------
def _running(run_dir: Path, pid: int, host: str | None = None) -> Path:
    write_run(run_dir, ["optimizer=sgd", "data=digits", "data.image_shape=[1,8,8]", "resume=false"],
              optimizer="sgd", data="digits", status="running",
              run_extra={"pid": pid, "host": host or socket.gethostname()})
    return run_dir / "results.json"


def test_running_record_whose_process_is_gone_is_interrupted(tmp_path: Path) -> None:
    gone = _running(tmp_path / "sweep" / "gone", dead_pid())
    alive = _running(tmp_path / "sweep" / "alive", os.getpid())
    elsewhere = _running(tmp_path / "sweep" / "elsewhere", dead_pid(), host="another-host")
    assert discover.derived_status(RunRecord.load(gone)) == "interrupted"
    assert discover.derived_status(RunRecord.load(alive)) == "running"
    assert discover.derived_status(RunRecord.load(elsewhere)) == "running"  # its pid says nothing here
    summary = aggregate([tmp_path / "sweep"], tmp_path / "out", figures=False)
    assert dict(zip(summary.table["run"], summary.table["status"], strict=True)) == {
        "alive": "running", "elsewhere": "running", "gone": "interrupted"}
    assert RunRecord.load(gone).status == "running"  # derived, never written
    report = (tmp_path / "out" / "report.md").read_text()
    assert "3 runs launched: 2 running, 1 interrupted." in report
    command = (f"python -m agop_sweep optimizer=sgd data=digits 'data.image_shape=[1,8,8]' "
               f"hydra.run.dir={(tmp_path / 'sweep' / 'gone').resolve()} resume=true")
    assert "## Interrupted runs" in report and f"  {command}\n" in report
    assert report.count("resume=true") == 1


def test_no_progress_for_longer_than_stale_after_is_interrupted(tmp_path: Path, capsys) -> None:
    path = _running(tmp_path / "sweep" / "stale", os.getpid(), host="another-host")
    old = time.time() - 30 * 3600
    os.utime(path, (old, old))
    record = RunRecord.load(path)
    assert discover.derived_status(record) == "interrupted"  # default: 24 hours
    assert discover.derived_status(record, stale_after_hours=48) == "running"
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "a"), "--no-figures"])
    assert "Aggregated 1 runs: 1 interrupted." in capsys.readouterr().out
    main([str(tmp_path / "sweep"), "--out", str(tmp_path / "b"), "--no-figures", "--stale-after", "48"])
    assert "Aggregated 1 runs: 1 running." in capsys.readouterr().out


# -- 4. lines average seeds and ignore run-control keys ---------------------------------------------
@pytest.mark.parametrize("control", ["trainer.plots=off", "data.root=/elsewhere"])
def test_seed_and_run_control_keys_make_one_line_with_a_band(control: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_run(sweep / "a", ["optimizer=adam", "model.depth=2", "seed=1"])
    write_run(sweep / "b", ["optimizer=adam", "model.depth=2", "seed=2", control], seed=2)
    runs, _ = discover.find_runs([sweep])
    df = tables.tidy_table(runs)
    table = tables.runs_table(runs, df, "delta_cos_agop")
    assert control.split("=")[0] in table.columns  # still a column of runs.csv
    groups = line_groups(runs, table, "optimizer")
    assert groups.order == ["adam"] and sorted(groups.members["adam"]) == ["a", "b"]
    fig = comparison_figure(df, groups, "delta_cos_agop", switch=None)
    for ax in fig.axes:
        assert [ln.get_label() for ln in ax.get_lines()] == ["adam"]
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 1


def test_labels_show_overrides_as_written(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    for spelling, seed in (("0.00001", 1), ("1e-05", 2), ("0.001", 1)):
        write_run(sweep / f"{spelling}-{seed}", ["optimizer=sgd", f"optimizer.lr={spelling}", f"seed={seed}",
                                                 "model.act=off" if spelling == "0.001" else "model.act=on"],
                  seed=seed)
    runs, _ = discover.find_runs([sweep])
    table = tables.runs_table(runs, tables.tidy_table(runs), "delta_cos_agop")
    groups = line_groups(runs, table, "optimizer")
    # 0.00001 and 1e-05 are one value (one line), labelled as its first run wrote it.
    assert groups.order == ["sgd, optimizer.lr=0.00001, model.act=on",
                            "sgd, optimizer.lr=0.001, model.act=off"]
    assert [len(groups.members[g]) for g in groups.order] == [2, 1]


# -- 3. the figures of a mixed set -------------------------------------------------------------------
def test_mixed_set_groups(mixed_figures) -> None:
    figures, groups = mixed_figures
    assert len(groups.order) == 28
    assert set(figures) == {"comparison", "losses", "final_correlation", "effective_rank", "features"}
    labels = " ".join(groups.legend_label(g) for g in groups.order)
    for hidden in (*RUN_CONTROL_TEXT, "=nan", "=None"):
        assert hidden not in labels
    assert "model.depth=1" in labels and "loss=ce" in labels and "data=svhn" in labels


@pytest.mark.parametrize("name", ["comparison", "losses", "final_correlation", "effective_rank", "features"])
def test_mixed_set_figures_are_readable(name: str, mixed_figures) -> None:
    figures, _ = mixed_figures
    fig = figures[name]
    assert check_readable(fig) == []
    if name != "features":
        (legend,) = fig.legends
        assert legend.get_window_extent().y1 < min(ax.get_window_extent().y0 for ax in fig.axes)  # below


def test_mixed_set_losses_never_share_an_axis(mixed_figures) -> None:
    figures, groups = mixed_figures
    loss_axes = [ax for ax in figures["losses"].axes if "loss" in ax.get_title()]
    assert len(loss_axes) == 4  # train and val, for mse and for ce
    seen = {}
    for ax in loss_axes:
        kinds = {groups.loss_of(g) for ln in ax.get_lines() for g in groups.order
                 if ln.get_label() == groups.legend_label(g)}
        assert len(kinds) == 1, ax.get_title()
        (kind,) = kinds
        values = np.concatenate([ln.get_ydata() for ln in ax.get_lines()])
        assert (values > 1.0).all() if kind == "ce" else (values < 0.2).all()
        seen.setdefault(kind, []).append(ax.get_title())
    assert seen == {"mse": ["train loss (mse)", "val loss (mse)"], "ce": ["train loss (ce)", "val loss (ce)"]}


def test_mixed_set_files(mixed: Path, tmp_path: Path, capsys) -> None:
    """The tables and the report (the figures of this set: mixed_figures above; how the report
    shows figures: tests/test_aggregate.py)."""
    main([str(mixed), "--out", str(tmp_path), "--no-figures"])
    out = capsys.readouterr().out
    assert out.startswith("Aggregated 32 runs: 30 completed, 1 interrupted, 1 failed. Wrote into ")
    report = (tmp_path / "report.md").read_text()
    assert "- `failed`: FileNotFoundError: /nowhere/train_32x32.mat" in report
    assert f"hydra.run.dir={(mixed / 'interrupted').resolve()} resume=true" in report
    assert "![" not in report
