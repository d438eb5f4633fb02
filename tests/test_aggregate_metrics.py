"""The aggregate with the newer alignment measures: --metric with a centered variant or a
per-layer key, the alignment figure and the --x sweep figure."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aggregate_fakes import build_figures, env, make_fake_sweep, make_lr_sweep, results_of, write_fake_run
from matplotlib.collections import PolyCollection

from agop_sweep.aggregate.command import aggregate, line_groups, main
from agop_sweep.aggregate.discover import find_runs
from agop_sweep.aggregate.tables import runs_table, tidy_table
from agop_sweep.analyze.names import METRICS
from agop_sweep.figures.__main__ import main as figures_main
from agop_sweep.figures.run import training_analysis_figure
from agop_sweep.figures.style import LAYER_KEYS


def _figures(sweep: Path, metric: str, x: str | None = None, by: str = "optimizer") -> dict:
    runs, _ = find_runs([sweep])
    df = tidy_table(runs)
    table = runs_table(runs, df, metric)
    return build_figures(runs, table, df, metric, by, x)


def test_tidy_table_carries_the_new_metrics(tmp_path: Path) -> None:
    summary = aggregate([make_fake_sweep(tmp_path / "s", new_keys=True)], fmt="csv", figures=False)
    names = set(summary.metrics["metric"])
    assert set(METRICS) | set(LAYER_KEYS) <= names
    wc = summary.metrics[summary.metrics["metric"] == "weight_change"]
    assert (wc.loc[wc["epoch"] == 0, "value"] == 0).all()
    alpha = summary.metrics[summary.metrics["metric"] == "alpha_star"]
    assert alpha.loc[alpha["epoch"] == 0, "value"].isna().all()
    csv = pd.read_csv(tmp_path / "s" / "metrics.csv")
    assert {"delta_pearson_cagop", "alpha_star", "alpha_corr"} <= set(csv["metric"])


@pytest.mark.parametrize("metric", ["delta_pearson_cagop", "alpha_star", "weight_change"])
def test_metric_draws_and_tables(tmp_path: Path, metric: str) -> None:
    sweep = make_fake_sweep(tmp_path / "s", new_keys=True)
    summary = aggregate([sweep], metric=metric, fmt="csv", figures=False)
    assert (summary.table["corr_metric"] == metric).all()
    records = results_of(sweep)
    name = next(iter(records))
    row = summary.table[summary.table["run"].str.endswith(name)].iloc[0]
    last = records[name].analysis[-1]["layers"][1]
    expected = last["metrics"][metric] if metric in last["metrics"] else last[metric]
    assert row["corr_layer1"] == pytest.approx(expected)
    figs = _figures(sweep, metric)
    ax = figs["comparison"].axes[0]
    low, high = ax.get_ylim()
    if metric == "alpha_star":
        assert (low, high) == pytest.approx((-0.05, 2.05))  # the grid 0..2, its ends in view
        # The runs' primary is delta_cos_agop: the ansatz's 1/2 (for the raw NFM) does not apply.
        assert not any(list(line.get_ydata()) == [0.5, 0.5] for line in ax.lines)
        assert "delta NFM, cosine" in ax.get_ylabel()
        bars = figs["final_correlation"].axes[0]
        assert not any(line.get_linestyle() == ":" for line in bars.lines)
    elif metric == "weight_change":
        assert low == 0.0 and high > 0
    else:
        assert (low, high) in ((0.0, 1.0), (-1.0, 1.0))
    assert metric in figs["comparison"].get_suptitle()
    assert metric in (tmp_path / "s" / "report.md").read_text()


def test_alignment_figure_panels_and_means(tmp_path: Path, saved_figures: list[str]) -> None:
    sweep = make_fake_sweep(tmp_path / "s", new_keys=True)
    fig = _figures(sweep, "delta_cos_agop")["alignment"]
    axes = fig.axes
    assert len(axes) == 6  # one row per layer: alpha*, the correlation there, weight_change
    assert [ax.get_title() for ax in axes] == [
        f"layer {l}: {t}" for l in (0, 1) for t in ("alpha*", "corr at alpha*", "||W - W0|| / ||W0||")]
    assert axes[0].get_ylim() == pytest.approx((-0.05, 2.05)) and axes[2].get_ylim()[0] == 0.0
    assert axes[1].get_ylim() == (0.0, 1.0)
    records = results_of(sweep)
    panels = [(m, l) for l in (0, 1) for m in ("alpha_star", "alpha_corr", "weight_change")]
    for ax, (metric, layer) in zip(axes, panels, strict=True):
        for opt in ("adam", "sgd"):
            runs = [r for n, r in records.items() if f"optimizer={opt}" in n]
            by_epoch = np.array([[np.nan if a["layers"][layer][metric] is None else a["layers"][layer][metric]
                                  for a in r.analysis] for r in runs])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # alpha_star: all null at epoch 0
                mean = np.nanmean(by_epoch, 0)
            ok = np.isfinite(mean)
            (line,) = [li for li in ax.lines if li.get_label() == opt]
            assert np.allclose(line.get_ydata(), mean[ok])
            assert np.allclose(line.get_xdata(), np.arange(4)[ok])
    assert not any(line.get_linestyle() == ":" for line in axes[0].lines)  # delta NFM: no ansatz line
    assert "alignment" in (aggregate([sweep], fmt="csv").out / "report.md").read_text()
    assert "alignment" in saved_figures


def test_alignment_left_out_without_the_keys(tmp_path: Path) -> None:
    old = make_fake_sweep(tmp_path / "old")
    assert "alignment" not in _figures(old, "delta_cos_agop")
    # a mix: only the newer runs appear
    write_fake_run(old / "new", "adam", 7, ["optimizer=adam", "seed=7"], new_keys=True)
    fig = _figures(old, "delta_cos_agop")["alignment"]
    labels = {li.get_label() for li in fig.axes[0].lines if not li.get_label().startswith("_")}
    assert all("adam" in label for label in labels) and labels


def test_sweep_x_figure(tmp_path: Path, saved_figures: list[str]) -> None:
    sweep = make_lr_sweep(tmp_path / "s")
    aggregate([sweep], fmt="csv", x="optimizer.lr", metric="alpha_star")
    assert "sweep_optimizer.lr" in saved_figures
    assert "sweep_optimizer.lr.png" in (sweep / "report.md").read_text()
    fig = _figures(sweep, "alpha_star", x="optimizer.lr")["sweep_optimizer.lr"]
    assert len(fig.axes) == 3  # 2 layers + val accuracy
    assert fig.axes[-1].get_title() == "final val accuracy"
    records = results_of(sweep)
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        lines = [li for li in ax.lines if li.get_label() in ("adam", "sgd")]
        assert len(lines) == 2
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2
        for line, band in zip(lines, bands, strict=True):
            assert list(line.get_xdata()) == [1e-4, 1e-3, 1e-2]
            opt = line.get_label()
            for x, y, (lo, hi) in zip(line.get_xdata(), line.get_ydata(), _band(band, line.get_xdata()),
                                      strict=True):
                finals = [_final(r, ax.get_title()) for n, r in records.items()
                          if f"optimizer={opt}," in n and f"optimizer.lr={x:g}," in n]
                assert len(finals) == 2
                assert y == pytest.approx(np.mean(finals))
                assert (lo, hi) == pytest.approx((min(finals), max(finals)))


def _final(record, title: str) -> float:
    if title == "final val accuracy":
        return record.last_epoch()["val_acc"]
    layer = int(title.split(":")[0].split()[1])
    return record.analysis[-1]["layers"][layer]["alpha_star"]


def _band(band: PolyCollection, xs) -> list[tuple[float, float]]:
    verts = band.get_paths()[0].vertices
    out = []
    for x in xs:
        ys = verts[np.isclose(verts[:, 0], x), 1]
        out.append((ys.min(), ys.max()))
    return out


def test_sweep_x_linear_within_a_decade(tmp_path: Path) -> None:
    sweep = make_lr_sweep(tmp_path / "s", lrs=(0.002, 0.01, 0.005))
    fig = _figures(sweep, "delta_cos_agop", x="optimizer.lr")["sweep_optimizer.lr"]
    assert fig.axes[0].get_xscale() == "linear"
    line = next(li for li in fig.axes[0].lines if li.get_label() == "adam")
    assert list(line.get_xdata()) == [0.002, 0.005, 0.01]


@pytest.mark.parametrize("key", ["optimizer", "no.such.key"])
def test_bad_x_is_one_line_exit_1(tmp_path: Path, key: str, capsys) -> None:
    sweep = make_lr_sweep(tmp_path / "s", lrs=(1e-3,))
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--x", key, "--no-figures"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--x" in err


def test_bad_x_subprocess(tmp_path: Path) -> None:
    sweep = make_lr_sweep(tmp_path / "s", lrs=(1e-3,))
    proc = subprocess.run([sys.executable, "-m", "agop_sweep.aggregate", str(sweep), "--x", "optimizer"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "not numeric" in proc.stderr


def test_line_groups_unchanged_by_new_keys(tmp_path: Path) -> None:
    runs, _ = find_runs([make_fake_sweep(tmp_path / "s", new_keys=True)])
    df = tidy_table(runs)
    assert line_groups(runs, runs_table(runs, df, "alpha_star"), "optimizer").order == ["adam", "muon", "sgd"]


@pytest.mark.parametrize("metric", ["delta_cos_cagop", "alpha_star", "weight_change"])
def test_run_figure_metric(tmp_path: Path, metric: str) -> None:
    sweep = make_fake_sweep(tmp_path / "s", new_keys=True)
    record = next(iter(results_of(sweep).values()))
    fig = training_analysis_figure(record, metric)
    assert metric in fig.get_suptitle()
    overview = fig.axes[2]
    assert overview.get_ylabel() == metric
    if metric == "alpha_star":
        assert overview.get_ylim() == pytest.approx((-0.05, 2.05))


def test_run_figures_cli_metric(tmp_path: Path) -> None:
    sweep = make_fake_sweep(tmp_path / "s", new_keys=True)
    run_dir = next(p.parent for p in sweep.glob("*/results.json"))
    figures_main([str(run_dir), "--metric", "alpha_star"])
    assert (run_dir / "plots" / "training_analysis.png").exists()


def test_run_figure_unknown_metric(tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "r"
    write_fake_run(run_dir, "adam", 1, ["optimizer=adam"])
    with pytest.raises(SystemExit) as e:
        figures_main([str(run_dir), "--metric", "alpha_star"])
    assert e.value.code == 1 and "alpha_star" in capsys.readouterr().err
