"""The aggregate command: tables equal to the runs' results.json, figures, options, partial
runs, and bad input.

The ``sweep`` fixture comes in two kinds: ``fake`` writes six runs in Hydra's layout with
made-up numbers (fast, the default test run), ``real`` runs a 3 optimizers x 2 seeds sweep as
one ``python -m agop_sweep -m`` subprocess with the aggregating callback (slow: six runs that
draw their own figures).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import PolyCollection
from matplotlib.container import BarContainer
from PIL import Image

from agop_sweep.aggregate import aggregate, discover, main, tables
from agop_sweep.aggregate import figures as agg_figures
from agop_sweep.aggregate import groups as grouping
from agop_sweep.aggregate.discover import parse_overrides
from agop_sweep.aggregate.report import short_names
from agop_sweep.nfa import VARIANTS
from agop_sweep.record import RunRecord

TINY = [
    "data=synthetic", "data.n_train=128", "data.n_val=32", "data.n_features=64",
    "data.image_shape=[1,8,8]", "model.width=16", "model.depth=2", "schedule=smoke",
    "trainer.plots=end",
]
CALLBACK = "+hydra.callbacks.aggregate._target_=agop_sweep.callbacks.AggregateOnMultirunEnd"
FIGURES = ("comparison", "losses", "final_correlation", "effective_rank", "features")
OPTIMIZERS = ("adam", "muon", "sgd")
LRS = {"sgd": 0.1, "adam": 0.001, "muon": 0.01}


def _env() -> dict[str, str]:
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}


def write_fake_run(run_dir: Path, optimizer: str, seed: int, overrides: list[str], depth: int = 2,
                   epochs: int = 3, lr: float | None = None) -> RunRecord:
    """A run directory as the app writes it (results.json, .hydra/, features.npz) with
    made-up numbers that differ per optimizer and seed."""
    rng = np.random.default_rng(zlib.crc32(f"{optimizer}{seed}".encode()))
    lr = LRS[optimizer] if lr is None else lr
    config = {"optimizer": {"name": optimizer, "lr": lr}, "seed": seed,
              "model": {"width": 16, "depth": depth, "act": "relu"},
              "schedule": {"name": "smoke", "epochs": epochs, "checkpoints": list(range(epochs + 1))},
              "analysis": {"primary": "delta_cos_agop"},
              "data": {"name": "synthetic", "n_train": 128, "image_shape": [1, 8, 8]}}
    record = RunRecord.new({"optimizer": optimizer, "lr": lr, "seed": seed, "dataset": "synthetic",
                            "width": 16, "depth": depth, "act": "relu"}, config)
    for e in range(epochs + 1):
        loss = 0.1 * (1 - 0.1 * e * rng.random())
        record.add_epoch({"epoch": e, "train_loss": loss, "val_loss": loss * 1.05,
                          "train_acc": 0.1 + 0.2 * e * rng.random(), "val_acc": 0.1 + 0.1 * e * rng.random(),
                          "seconds": 0.5})
        layers = []
        for l in range(depth):
            metrics = {v: None if e == 0 and v.startswith("delta") else float(rng.random()) for v in VARIANTS}
            spectrum = {"effective_rank": float(1 + 10 * rng.random()), "top5_share": [0.3, 0.2, 0.1, 0, 0]}
            layers.append({
                "layer": l, "shape": [16, 64 if l == 0 else 16], "corr": metrics["delta_cos_agop"],
                "metrics": metrics,
                "spectra": {"agop": spectrum, "nfm_raw": dict(spectrum),
                            "nfm_delta": None if e == 0 else spectrum,
                            "top_eigvec_cos": {"raw": float(rng.random()), "delta": None if e == 0 else 0.5}},
            })
        record.add_analysis({"epoch": e, "n_samples": 128, "seconds": 0.1, "layers": layers})
    record.add_time("train_seconds", 1.0)
    record.add_time("analysis_seconds", 0.5)
    record.add_time("total_seconds", 2.0)
    record.timing.update(started_at=1000.0 + seed, finished_at=1003.5 + seed)
    record.set_status("completed")
    (run_dir / ".hydra").mkdir(parents=True)
    record.save(run_dir / "results.json")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    n = len(record.epochs)
    feats = {"epochs": np.arange(n), "image_shape": np.array([1, 8, 8]), "eigvec_epoch": np.array(n - 1),
             "nfm_eigvecs": rng.standard_normal((8, 64)), "agop_eigvecs": rng.standard_normal((8, 64))}
    feats |= {k: rng.random((n, 64)) for k in ("nfm_diag", "nfm_delta_diag", "agop_diag")}
    feats |= {f"eigvals_{k}_{l}": np.sort(rng.random(16))[::-1]
              for k in ("agop", "nfm") for l in range(depth)}
    np.savez(run_dir / "features.npz", **feats)
    return record


def make_fake_sweep(sweep: Path) -> Path:
    for opt in ("sgd", "adam", "muon"):
        for seed in (1, 2):
            overrides = ["data=synthetic", "model.width=16", "data.n_train=128", f"optimizer={opt}",
                         f"seed={seed}"]
            write_fake_run(sweep / ",".join(overrides), opt, seed, overrides)
    return sweep


def make_real_sweep(root: Path) -> Path:
    sweep = root / "sweep"
    cmd = [sys.executable, "-m", "agop_sweep", "-m", "optimizer=sgd,adam,muon", "seed=1,2", *TINY,
           f"hydra.sweep.dir={sweep}", CALLBACK]
    proc = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return sweep


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_real_sweep(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module", params=["fake", pytest.param("real", marks=pytest.mark.slow)])
def sweep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == "real":
        return request.getfixturevalue("real_sweep")  # the same sweep for every test
    return make_fake_sweep(tmp_path_factory.mktemp("fake") / "sweep")


def results_of(sweep: Path) -> dict[str, RunRecord]:
    return {p.parent.name: RunRecord.load(p) for p in sweep.glob("*/results.json")}


def legend_texts(fig) -> list[str]:
    """The texts of every legend of ``fig``, the figure's own and its axes', in order."""
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


# -- the sweep and the callback -------------------------------------------------------------------
@pytest.mark.slow
def test_every_run_has_its_figures(real_sweep: Path) -> None:
    sweep = real_sweep
    runs = results_of(sweep)
    assert len(runs) == 6
    for name, res in runs.items():
        assert res.status == "completed"
        for stem in ("training_analysis", "features"):
            w, h = _valid_png(sweep / name / "plots" / f"{stem}.png")
            assert w > h > 300
            assert (sweep / name / "plots" / f"{stem}.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.slow
def test_callback_aggregated_the_sweep(real_sweep: Path) -> None:
    sweep = real_sweep
    table = pd.read_csv(sweep / "runs.csv")
    assert sorted(table["optimizer"]) == sorted(OPTIMIZERS * 2)
    for stem in FIGURES:
        _valid_png(sweep / f"{stem}.png")
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
                          env=_env(), capture_output=True, text=True, timeout=600)
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
    assert list(df.columns[-4:]) == ["epoch", "layer", "metric", "value"]
    assert {"run", "status", "optimizer", "lr", "seed", "model.width"} <= set(df.columns)
    for name, res in runs.items():
        mine = df[df["run"] == name]
        expected_rows = 4 * len(res.epochs) + sum(
            len(layer["metrics"]) + 8 for a in res.analysis for layer in a["layers"])
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
        w, h = _valid_png(cli_out / f"{stem}.png")
        assert 600 <= w <= 1600 and h <= 1000  # readable at 100 % on a laptop screen
        assert (cli_out / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    assert (cli_out / "report.md").read_text().count("![") == len(FIGURES)
    assert not list(cli_out.glob(".*.tmp"))


def test_console_script(sweep: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("agop-aggregate")
    if not exe.exists():
        exe = Path(shutil.which("agop-aggregate") or "")
    if not exe.is_file():
        pytest.skip("the agop-aggregate console script is not installed")
    proc = subprocess.run([str(exe), str(sweep), "--out", str(tmp_path), "--no-figures", "--format", "csv"],
                          env=_env(), capture_output=True, text=True, timeout=300)
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
    assert sum(len(ax.get_images()) for ax in fig.axes) == 3 * 4
    assert all(ax.get_images()[0].get_array().shape == (8, 8) for ax in fig.axes)


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
    assert groups.order == ["seed=1", "seed=2"]
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
        cut = RunRecord.new(full.run, full.config)  # the run as it was after epoch 1
        for entry in full.epochs[:2]:
            cut.add_epoch(entry)
        for entry in full.analysis[:2]:
            cut.add_analysis(entry)
        cut.timing.update(full.timing)
        if status == "diverged":
            cut.add_epoch({**cut.epochs[-1], "train_loss": None, "val_loss": None})
            cut.set_status(status, diverged_epoch=1)
        elif status == "failed":
            cut.set_status(status, error="RuntimeError: boom")
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


@pytest.mark.parametrize("case", ["missing", "empty", "file", "only_corrupt"])
def test_bad_directories_exit_1_with_one_line(case: str, tmp_path: Path, capsys) -> None:
    target = tmp_path / "target"
    if case == "empty":
        target.mkdir()
    elif case == "file":
        target.write_text("not a dir")
    elif case == "only_corrupt":
        (target / "run").mkdir(parents=True)
        (target / "run" / "results.json").write_text("[]")
    with pytest.raises(SystemExit) as e:
        main([str(target)])
    assert e.value.code == 1
    err = _one_line_error(capsys)
    assert str(target) in err
    assert not (target / "runs.csv").exists()


@pytest.mark.parametrize(("option", "value", "hint"), [("--by", "colour", "optimizer"),
                                                       ("--metric", "nope", "delta_cos_agop")])
def test_bad_options_exit_1_with_one_line(sweep: Path, tmp_path: Path, capsys, option, value, hint) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(sweep), "--out", str(tmp_path), option, value])
    assert e.value.code == 1
    err = _one_line_error(capsys)
    assert value in err and hint in err  # names the bad value and the choices


def test_wrong_directory_by_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agop_sweep.aggregate", str(tmp_path / "nope")],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "is not a directory" in proc.stderr
    assert proc.stdout == ""


# -- helpers ---------------------------------------------------------------------------------------------
def test_parse_overrides() -> None:
    got = parse_overrides(["optimizer=sgd", "optimizer.lr=0.05", "+extra=3", "~foo", "seed=2",
                           "data.image_shape=[1,8,8]", "hydra.run.dir=x", "flag=true"])
    assert got == {"optimizer": "sgd", "optimizer.lr": 0.05, "extra": 3, "seed": 2,
                   "data.image_shape": "[1,8,8]", "flag": True}


def test_short_names() -> None:
    names = ["data=digits,optimizer=adam,seed=1", "data=digits,optimizer=sgd,seed=1"]
    assert short_names(names) == {names[0]: "optimizer=adam", names[1]: "optimizer=sgd"}
    assert short_names(["only"]) == {"only": "only"}


def test_parse_overrides_reads_numbers_as_hydra_does() -> None:
    """Hydra writes a swept 0.00001 as 1e-05: both are the float, as Hydra itself reads them."""
    got = parse_overrides(["optimizer.lr=1e-05", "b=0.00001", "++c.d=2", "model@m=mlp", "e=null", "f='1'",
                           "g=1,2", "~h=3", "hydra/launcher=joblib", 42])
    assert got == {"optimizer.lr": 1e-05, "b": 1e-05, "c.d": 2, "model": "mlp", "e": "null", "f": "1",
                   "g": "1,2"}
    assert type(got["optimizer.lr"]) is float and type(got["c.d"]) is int


# -- numeric settings, overlapping directories, equal values -----------------------------------------
def make_lr_sweep(sweep: Path, spellings: tuple[str, str]) -> None:
    """SGD at two learning rates (as spelled in overrides.yaml) x two seeds, written in the
    order that sorts them as text, 0.0001 before 1e-05."""
    for spelling in sorted(spellings):
        for seed in (1, 2):
            overrides = ["optimizer=sgd", f"optimizer.lr={spelling}", f"seed={seed}"]
            write_fake_run(sweep / ",".join(overrides), "sgd", seed, overrides, lr=float(spelling))


@pytest.mark.parametrize("spellings", [("0.00001", "0.0001"), ("1e-05", "0.0001")])
def test_numeric_override_is_a_float_column_sorted_numerically(spellings: tuple[str, str],
                                                               tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_lr_sweep(sweep, spellings)
    summary = aggregate([sweep], tmp_path / "out", by="optimizer.lr", figures=False)
    for table in (summary.table, summary.metrics, pd.read_parquet(tmp_path / "out" / "metrics.parquet")):
        assert table["optimizer.lr"].dtype == np.float64
    assert list(summary.table["optimizer.lr"]) == [1e-05, 1e-05, 1e-04, 1e-04]
    assert list(summary.table["seed"]) == [1, 2, 1, 2]
    assert pd.read_csv(tmp_path / "out" / "runs.csv")["optimizer.lr"].tolist() == [1e-05, 1e-05, 1e-04, 1e-04]
    lrs = summary.metrics["optimizer.lr"].to_numpy()
    assert (np.diff(lrs) >= 0).all()  # the tidy table in the same order
    runs, _ = discover.find_runs([sweep])
    overrides = discover.override_columns(runs)
    # Lines by the lr itself, and lr splitting the optimizer's line: numeric order both times.
    for by, expected in (("optimizer.lr", ["optimizer.lr=1e-05", "optimizer.lr=0.0001"]),
                         ("optimizer", ["sgd, optimizer.lr=1e-05", "sgd, optimizer.lr=0.0001"])):
        groups = grouping.make_groups(summary.table, by, overrides)
        assert groups.order == expected
        assert all(len(groups.members[g]) == 2 for g in groups.order)
        fig = agg_figures.comparison_figure(summary.metrics, groups, "delta_cos_agop", switch=None)
        assert legend_texts(fig) == [f"{g} (2 runs)" for g in expected]
        fig = agg_figures.final_correlation_figure(summary.metrics, groups, "delta_cos_agop")
        assert legend_texts(fig) == [f"{g} (2 runs)" for g in expected]


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


def test_equal_values_draw_bars_without_negative_whiskers(tmp_path: Path) -> None:
    """Three copies of one run: the mean of three equal values rounds past them (0.7 to
    0.6999999999999998, 0.1 to 0.10000000000000002), which made matplotlib refuse the
    whiskers ("'yerr' must not contain negative values")."""
    overrides = ["optimizer=adam", "seed=1"]
    first = tmp_path / "sweep" / "copy0"
    record = write_fake_run(first, "adam", 1, overrides)
    last = record.analysis[-1]
    layers = [{**entry, "corr": v, "metrics": {**entry["metrics"], "delta_cos_agop": v}}
              for entry, v in zip(last["layers"], (0.7, 0.1), strict=True)]
    record.add_analysis({**last, "layers": layers})
    record.save(first / "results.json")
    for i in (1, 2):
        shutil.copytree(first, tmp_path / "sweep" / f"copy{i}")
    equal = pd.DataFrame({"layer": [0] * 3 + [1] * 3, "value": [0.7] * 3 + [0.1] * 3})
    stats = equal.groupby("layer")["value"]
    assert (stats.mean() != stats.min()).all()  # the rounding this test is about
    summary = aggregate([tmp_path / "sweep"], tmp_path / "out")
    assert "final_correlation.png" in [p.name for p in summary.files]
    runs, _ = discover.find_runs([tmp_path / "sweep"])
    groups = grouping.make_groups(summary.table, "optimizer", discover.override_columns(runs))
    assert groups.members == {"adam": ["copy0", "copy1", "copy2"]}
    fig = agg_figures.final_correlation_figure(summary.metrics, groups, "delta_cos_agop")
    (ax,) = fig.axes
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [0.7, 0.1])
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    whiskers = bars.errorbar.lines[2][0].get_segments()
    assert all(seg[1, 1] >= seg[0, 1] for seg in whiskers)
    np.testing.assert_allclose([seg[:, 1] for seg in whiskers], [[0.7, 0.7], [0.1, 0.1]])
