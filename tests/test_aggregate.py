"""The aggregate command: tables equal to the runs' results.json, figures, options, partial
runs, and bad input.

The ``sweep`` fixture comes in two kinds: ``fake`` writes six runs in Hydra's layout with
made-up numbers (fast, the default test run), ``real`` runs a 3 optimizers x 2 seeds sweep as
one ``python -m agop_sweep -m`` subprocess with the aggregating callback (slow: six runs that
draw their own figures). Their writers are in ``aggregate_fakes``; the tests that need no
sweep are in ``test_aggregate_inputs``.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aggregate_fakes import (
    FIGURES,
    OPTIMIZERS,
    end_as,
    env,
    legend_texts,
    make_fake_sweep,
    make_real_sweep,
    results_of,
    valid_png,
)
from matplotlib.collections import PolyCollection

from agop_sweep.aggregate import aggregate, discover, main, tables
from agop_sweep.aggregate import figures as agg_figures
from agop_sweep.aggregate import groups as grouping
from agop_sweep.store.record import RunRecord


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_real_sweep(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module", params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def sweep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "real":
        return request.getfixturevalue("real_sweep")  # the same sweep for every test
    return make_fake_sweep(tmp_path_factory.mktemp("fake") / "sweep")


# -- the sweep and the callback -------------------------------------------------------------------
@pytest.mark.slow
def test_every_run_has_its_figures(real_sweep: Path) -> None:
    sweep = real_sweep
    runs = results_of(sweep)
    assert len(runs) == 6
    for name, res in runs.items():
        assert res.status == "completed"
        for stem in ("training_analysis", "features"):
            w, h = valid_png(sweep / name / "plots" / f"{stem}.png")
            assert w > h > 300
            assert (sweep / name / "plots" / f"{stem}.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_callback_aggregated_the_sweep(real_sweep: Path) -> None:
    sweep = real_sweep
    table = pd.read_csv(sweep / "runs.csv")
    assert sorted(table["optimizer"]) == sorted(OPTIMIZERS * 2)
    for stem in FIGURES:
        valid_png(sweep / f"{stem}.png")
        assert (sweep / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    report = (sweep / "report.md").read_text()
    for stem in FIGURES:
        assert f"]({stem}.png)" in report
    assert "[runs.csv](runs.csv)" in report and "6 runs launched: 6 completed." in report


# -- the command ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_out(sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("agg") / "out"
    proc = subprocess.run([sys.executable, "-m", "agop_sweep.aggregate", str(sweep), "--out", str(out)],
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Aggregated 6 runs: 6 completed." in proc.stdout
    return out


def test_runs_csv_equals_results(sweep: Path, cli_out: Path) -> None:
    table = pd.read_csv(cli_out / "runs.csv")
    runs = results_of(sweep)
    assert sorted(table["run"]) == sorted(runs)
    for column in ("status", "optimizer", "lr", "seed", "final_train_loss", "final_val_loss",
                   "final_train_acc", "final_val_acc", "corr_layer0", "corr_layer1", "wall_seconds"):
        assert column in table.columns
    # The sweep's overrides are columns too.
    for column in ("data.n_train", "model.width", "data"):
        assert column in table.columns
    for _, row in table.iterrows():
        res = runs[row["run"]]
        last = res.epochs[-1]
        assert row["status"] == res.status
        assert (row["optimizer"], row["lr"], row["seed"]) == (
            res.run["optimizer"], res.run["lr"], res.run["seed"])
        for m in ("train_loss", "val_loss", "train_acc", "val_acc"):
            assert row[f"final_{m}"] == pytest.approx(last[m], rel=1e-12)
        final = res.analysis[-1]
        assert row["last_analysed_epoch"] == final["epoch"] == 3
        for layer in final["layers"]:
            assert row[f"corr_layer{layer['layer']}"] == pytest.approx(layer["corr"], rel=1e-12)
        timing = res.timing
        assert row["wall_seconds"] == pytest.approx(timing["finished_at"] - timing["started_at"])
        assert row["model.width"] == 16 and row["data.n_train"] == 128


def test_metrics_table_equals_results(sweep: Path, cli_out: Path) -> None:
    df = pd.read_parquet(cli_out / "metrics.parquet")
    runs = results_of(sweep)
    assert list(df.columns[-5:]) == ["epoch", "layer", "metric", "value", "censored"]
    assert set(df["censored"]) <= {"", "above", "below"}
    assert {"run", "status", "optimizer", "lr", "seed", "model.width"} <= set(df.columns)
    for name, res in runs.items():
        mine = df[df["run"] == name]
        layer_keys = tables.layer_keys(res)  # weight_change, alpha_star, alpha_corr in newer runs
        expected_rows = 4 * len(res.epochs) + sum(  # + the spectra's 8, and each kind's exponent pair
            len(layer["metrics"]) + 8 + len(layer_keys) + 2 * len(layer.get("alphas") or {})
            for a in res.analysis for layer in a["layers"])
        assert len(mine) == expected_rows
        assert set(mine["optimizer"]) == {res.run["optimizer"]}
        # Losses: one row per epoch, no layer.
        losses = mine[mine["metric"] == "val_loss"].sort_values("epoch")
        assert losses["layer"].isna().all()
        np.testing.assert_allclose(losses["value"], [e["val_loss"] for e in res.epochs], rtol=1e-12)
        # Every variant of every layer at every analysed epoch; null stays missing.
        for a in res.analysis:
            for layer in a["layers"]:
                rows = mine[(mine["epoch"] == a["epoch"]) & (mine["layer"] == layer["layer"])]
                got = dict(zip(rows["metric"], rows["value"], strict=True))
                for variant, v in layer["metrics"].items():
                    assert (math.isnan(got[variant]) if v is None else got[variant] == pytest.approx(v))
                spectra = layer["spectra"]
                assert got["agop_effective_rank"] == pytest.approx(spectra["agop"]["effective_rank"])
                assert got["top_eigvec_cos_raw"] == pytest.approx(spectra["top_eigvec_cos"]["raw"])
    # delta at epoch 0 is undefined in results.json and missing here.
    assert df[(df["epoch"] == 0) & (df["metric"] == "delta_cos_agop")]["value"].isna().all()


def test_cli_writes_every_figure_and_the_report(cli_out: Path) -> None:
    for stem in FIGURES:
        w, h = valid_png(cli_out / f"{stem}.png")
        assert 600 <= w <= 1600 and h <= 1000  # readable at 100 % on a laptop screen
        assert (cli_out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    # alignment.png too for runs that recorded alpha_star and weight_change (the real ones)
    drawn = len(FIGURES) + (cli_out / "alignment.png").exists()
    assert (cli_out / "report.md").read_text().count("![") == drawn
    assert not list(cli_out.glob(".*.tmp"))


def test_console_script(sweep: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("agop-aggregate")
    if not exe.exists():
        exe = Path(shutil.which("agop-aggregate") or "")
    if not exe.is_file():
        pytest.skip("the agop-aggregate console script is not installed")
    proc = subprocess.run([str(exe), str(sweep), "--out", str(tmp_path), "--no-figures", "--format", "csv"],
                          env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs, _ = discover.find_runs([sweep])
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == len(tables.tidy_table(runs))
    assert not (tmp_path / "comparison.png").exists()


# -- figures as objects ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(sweep: Path) -> tuple[list, pd.DataFrame, pd.DataFrame, grouping.Groups]:
    runs, skipped = discover.find_runs([sweep])
    assert not skipped
    df = tables.tidy_table(runs)
    table = tables.runs_table(runs, df, "delta_cos_agop")
    return runs, df, table, grouping.make_groups(table, "optimizer", discover.override_columns(runs))


def test_groups_are_optimizers_over_seeds(loaded) -> None:
    _, _, _, groups = loaded
    assert groups.order == list(OPTIMIZERS)
    assert all(len(groups.members[g]) == 2 for g in groups.order)
    assert groups.legend_label("sgd") == "sgd lr=0.1 (2 runs)"


def test_comparison_figure_lines_are_seed_means_with_bands(loaded) -> None:
    _, df, _, groups = loaded
    fig = agg_figures.comparison_figure(df, groups, "delta_cos_agop", switch=None)
    layer_axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("layer ")]
    assert [ax.get_title() for ax in layer_axes] == ["layer 0", "layer 1"]
    for l, ax in enumerate(layer_axes):
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        assert sorted(lines) == sorted(OPTIMIZERS)
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3  # min-max bands
        assert ax.get_ylim() == (0.0, 1.0)
        for opt in OPTIMIZERS:
            sel = df[(df["optimizer"] == opt) & (df["metric"] == "delta_cos_agop") & (df["layer"] == l)]
            mean = sel.groupby("epoch")["value"].mean().dropna()
            np.testing.assert_allclose(lines[opt].get_xdata(), mean.index)
            np.testing.assert_allclose(lines[opt].get_ydata(), mean.to_numpy())
    assert "adam lr=0.001 (2 runs)" in legend_texts(fig)


def test_final_correlation_bars(loaded) -> None:
    _, df, table, groups = loaded
    fig = agg_figures.final_correlation_figure(df, groups, "delta_cos_agop")
    (ax,) = fig.axes
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 3 * 2  # optimizer x layer
    expected = [table[table["optimizer"] == o][f"corr_layer{l}"].mean() for o in OPTIMIZERS for l in (0, 1)]
    np.testing.assert_allclose(heights, expected)


def test_effective_rank_and_features_figures(loaded) -> None:
    runs, df, _, groups = loaded
    fig = agg_figures.effective_rank_figure(df, groups, "delta_cos_agop", switch=None)
    ax0 = next(ax for ax in fig.axes if ax.get_title() == "layer 0")
    styles = sorted((ln.get_label(), ln.get_linestyle()) for ln in ax0.get_lines())
    assert styles == sorted([(o, s) for o in OPTIMIZERS for s in ("-", "--")])
    fig = agg_figures.features_comparison_figure(runs, groups, "delta_cos_agop")
    row_labels = [ax.get_ylabel().split("\n")[0] for ax in fig.axes if ax.get_ylabel()]
    assert row_labels == list(OPTIMIZERS)
    images = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert sum(len(ax.get_images()) for ax in images) == 3 * 4
    assert all(ax.get_images()[0].get_array().shape == (8, 8) for ax in images)
    assert len(fig.axes) == 2 * len(images)  # every image has its colour bar


# -- options -----------------------------------------------------------------------------------------------
def test_metric_and_by_options(sweep: Path, tmp_path: Path) -> None:
    summary = aggregate([sweep], tmp_path, metric="raw_pearson_sqrt", by="seed", figures=False)
    runs = results_of(sweep)
    for _, row in summary.table.iterrows():
        final = runs[row["run"]].analysis[-1]["layers"]
        assert row["corr_metric"] == "raw_pearson_sqrt"
        assert row["corr_layer1"] == pytest.approx(final[1]["metrics"]["raw_pearson_sqrt"])
    runs, _ = discover.find_runs([sweep])
    groups = grouping.make_groups(summary.table, "seed", discover.override_columns(runs))
    # --by seed never averages one optimizer with another: each seed's line splits by optimizer.
    assert groups.order == [f"seed={s}, {o}" for s in (1, 2) for o in OPTIMIZERS]
    assert "raw_pearson_sqrt" in (tmp_path / "report.md").read_text()


def test_lines_split_by_other_varying_overrides(sweep: Path) -> None:
    """Runs that differ in something besides by and seed get their own lines."""
    runs, _ = discover.find_runs([sweep])
    runs[0].overrides["optimizer.lr"] = 0.5  # one run with another lr
    table = tables.runs_table(runs, tables.tidy_table(runs), "delta_cos_agop")
    labels = grouping.line_labels(table, "optimizer", discover.override_columns(runs))
    assert labels[runs[0].name] == "adam, optimizer.lr=0.5"
    assert labels[runs[1].name] == "adam, optimizer.lr=0.001"  # its config's value
    assert labels[runs[2].name] == "muon, optimizer.lr=0.01"


# -- partial runs and bad files -------------------------------------------------------------------------
def test_running_diverged_failed_and_corrupt(sweep: Path, tmp_path: Path, caplog) -> None:
    work = tmp_path / "sweep"
    shutil.copytree(sweep, work, ignore=shutil.ignore_patterns("*.pth", "state.pt", "plots"))
    names = sorted(results_of(work))
    edits = {names[0]: "running", names[2]: "diverged", names[4]: "failed"}
    for name, status in edits.items():
        path = work / name / "results.json"
        full = RunRecord.load(path)
        # the run as it was after epoch 1
        cut = RunRecord.start(full.run, dict(full.config), started_at=full.started_at)
        if status == "running":  # still running: its process (here, this one) is alive
            cut.update_run(pid=os.getpid(), host=socket.gethostname())
        for entry, analysis in zip(full.epochs[:2], full.analysis[:2], strict=True):
            cut.finish_epoch(entry, analysis)
        if status == "diverged":
            cut.finish_epoch({**cut.epochs[-1], "train_loss": None, "val_loss": None})
        end_as(cut, status)
        cut.save(path)
    (work / "corrupt").mkdir()
    (work / "corrupt" / "results.json").write_text('{"schema_version": 1, "status": "runn')
    (work / "foreign").mkdir()
    (work / "foreign" / "results.json").write_text('{"accuracy": 0.9}')
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="agop_sweep.aggregate"):
        summary = aggregate([work], out, figures=False)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(work / "corrupt" / "results.json") in warned
    assert str(work / "foreign" / "results.json") in warned
    assert summary.runs == 6 and len(summary.skipped) == 2
    table = pd.read_csv(out / "runs.csv").set_index("run")
    for name, status in edits.items():
        assert table.loc[name, "status"] == status
        assert table.loc[name, "last_epoch"] == 1 and table.loc[name, "last_analysed_epoch"] == 1
    assert table.loc[names[4], "error"] == "RuntimeError: boom"
    assert math.isnan(table.loc[names[2], "final_val_loss"])
    # Drawn as far as they go: one line per run, the cut ones end at epoch 1.
    df = summary.metrics
    assert df[df["run"] == names[0]]["epoch"].max() == 1
    groups = grouping.make_groups(summary.table, "run", [])
    fig = agg_figures.comparison_figure(df, groups, "raw_cos_agop", switch=None)
    ax0 = next(ax for ax in fig.axes if ax.get_title() == "layer 0")
    ends = {ln.get_label(): ln.get_xdata()[-1] for ln in ax0.get_lines()}
    assert ends == {f"run={n}": 1 if n in edits else 3 for n in names}
    fig = agg_figures.losses_figure(df, groups, switch=None)
    val = next(ax for ax in fig.axes if ax.get_title() == "val loss")
    diverged = next(ln for ln in val.get_lines() if ln.get_label().startswith(f"run={names[2]} "))
    assert list(diverged.get_xdata()) == [0]  # its null val loss at epoch 1 is not drawn
    report = (out / "report.md").read_text()
    assert "1 diverged" in report and "1 failed" in report and "1 running" in report
    assert "corrupt/results.json" in report  # the skipped files are listed


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("agop-aggregate: error: ")
    return err


@pytest.mark.parametrize(("option", "value", "hint"), [("--by", "colour", "optimizer"),
                                                       ("--metric", "nope", "delta_cos_agop")])
def test_bad_options_exit_1_with_one_line(sweep: Path, tmp_path: Path, capsys, option, value, hint) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--out", str(tmp_path), option, value])
    assert e.value.code == 1
    err = _one_line_error(capsys)
    assert value in err and hint in err  # names the bad value and the choices


def test_overlapping_directories_count_each_run_once(sweep: Path, tmp_path: Path, capsys) -> None:
    """The same sweep twice, one of its runs again, and the sweep through a symlink and a
    path with ``..``: six runs, not twelve."""
    link = tmp_path / "link"
    link.symlink_to(sweep, target_is_directory=True)
    one_run = sorted(p.parent for p in sweep.glob("*/results.json"))[0]
    dirs = [sweep, sweep, one_run, link, sweep / ".." / sweep.name]
    main([*map(str, dirs), "--out", str(tmp_path / "out"), "--no-figures"])
    assert "Aggregated 6 runs: 6 completed." in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert len(table) == 6 and table["run"].is_unique
    assert sorted(table["run"]) == sorted(results_of(sweep))  # named from the first dir given
    runs, _ = discover.find_runs([one_run, sweep])
    assert len(runs) == 6 and runs[0].name != runs[1].name
