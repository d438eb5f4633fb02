"""The aggregate's input handling without a sweep: bad directories, override parsing, run
names, numeric settings and equal values."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aggregate_fakes import env, legend_texts, write_fake_run
from matplotlib.container import BarContainer

from agop_sweep.aggregate import aggregate, discover, main
from agop_sweep.aggregate import figures as agg_figures
from agop_sweep.aggregate import groups as grouping
from agop_sweep.aggregate.discover import parse_overrides
from agop_sweep.aggregate.report import short_names


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


def test_wrong_directory_by_subprocess(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "agop_sweep.aggregate", str(tmp_path / "nope")],
                          env=env(), capture_output=True, text=True, timeout=300)
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
