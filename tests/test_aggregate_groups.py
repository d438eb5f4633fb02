"""Which runs share a line, and in which colour (issue 23, points 1 and 7).

Every setting that differs between runs splits lines, unless it is the ``--by`` key, ``seed``
or a run-control key; so no line, bar, band or image row ever averages an SGD run with an Adam
run, whatever ``--by`` is. Each group has one colour in every figure of an aggregate, and an
optimizer the same colour in every aggregate. The groups behind every figure are read from the
figures themselves (each artist drawn for a group carries its ``group:<label>`` gid).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import pytest
from aggregate_fakes import LRS, build_figures, write_fake_run
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from agop_sweep.aggregate import aggregate, discover, tables
from agop_sweep.aggregate import groups as grouping
from agop_sweep.aggregate.command import line_groups
from agop_sweep.aggregate.lr_search import lr_search_figure, searches

BYS = ["optimizer", "seed", "model.width"]
TAB10 = matplotlib.colormaps["tab10"].colors


def write_issue_sweep(root: Path, optimizers: tuple[str, ...] = ("sgd", "adam"),
                      widths: tuple[int, ...] = (32, 64), seeds: tuple[int, ...] = (1, 2),
                      alphas: bool = False) -> Path:
    """``-m optimizer=... model.width=... seed=...`` with made-up numbers: each run's record,
    config and overrides agree on its optimizer, width and seed."""
    for opt in optimizers:
        for width in widths:
            for seed in seeds:
                overrides = [f"optimizer={opt}", f"model.width={width}", f"seed={seed}"]
                run_dir = root / ",".join(overrides)
                # lr (the default's multiple by width) seeds the made-up numbers: every run differs
                write_fake_run(run_dir, opt, seed, overrides, lr=LRS[opt] * width / 32, new_keys=True)
                _set_width(run_dir, width, alphas)
    return root


def _set_width(run_dir: Path, width: int, alphas: bool) -> None:
    path = run_dir / "results.json"
    data = json.loads(path.read_text())
    data["run"]["width"] = width
    data["config"]["model"]["width"] = width
    if alphas:
        for a in data["analysis"]:
            for entry in a["layers"]:
                entry["alphas"] = {k: {"alpha_star": entry["alpha_star"], "alpha_corr": entry["alpha_corr"]}
                                   for k in ("raw_cos", "raw_pearson", "delta_cos", "delta_pearson")}
    path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def issue_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_issue_sweep(tmp_path_factory.mktemp("issue") / "sweep")


@pytest.fixture(scope="module")
def built(issue_sweep: Path) -> dict[str, dict[str, Figure]]:
    """The issue sweep's figures by --by (with --x model.width where width is not --by)."""
    runs, df, table = _loaded(issue_sweep)
    return {by: build_figures(runs, table, df, "delta_cos_agop", by,
                              None if by == "model.width" else "model.width") for by in BYS}


def _loaded(sweep: Path | list[Path], metric: str = "delta_cos_agop") -> tuple[list, pd.DataFrame,
                                                                               pd.DataFrame]:
    runs, _ = discover.find_runs(sweep if isinstance(sweep, list) else [sweep])
    df = tables.tidy_table(runs)
    return runs, df, tables.runs_table(runs, df, metric)


def group_artists(fig: Figure) -> dict[str, list[Any]]:
    """Every artist of ``fig`` drawn for a group, by the group's label (from its gid)."""
    out: dict[str, list[Any]] = {}
    for artist in fig.findobj(lambda a: str(a.get_gid() or "").startswith("group:")):
        out.setdefault(str(artist.get_gid())[len("group:"):], []).append(artist)
    return out


def optimizers_of(table: pd.DataFrame, groups: grouping.Groups, label: str) -> set[str]:
    return set(table.loc[table["run"].isin(groups.members[label]), "optimizer"])


# -- 1. no line mixes optimizers ---------------------------------------------------------------
@pytest.mark.parametrize("by", BYS)
def test_no_figure_mixes_optimizers(issue_sweep: Path, built: dict[str, dict[str, Figure]], by: str) -> None:
    runs, _, table = _loaded(issue_sweep)
    figures = built[by]
    groups = line_groups(runs, table, by)
    # optimizer x width (two seeds each); seed x optimizer x width (one run each); width x optimizer
    assert len(groups.order) == (8 if by == "seed" else 4)
    for label in groups.order:
        assert len(optimizers_of(table, groups, label)) == 1, label
        assert len(groups.members[label]) == (1 if by == "seed" else 2)
    expected = {"comparison", "losses", "final_correlation", "effective_rank", "features", "alignment"}
    assert expected <= set(figures)
    for name, fig in figures.items():
        drawn = group_artists(fig)
        assert drawn, name
        if name.startswith("sweep_"):  # width on the x axis: its groups leave width out
            sweep_groups = line_groups(runs, table, by, exclude=("model.width",))
            assert set(drawn) == set(sweep_groups.order), name
            for label in drawn:
                assert len(optimizers_of(table, sweep_groups, label)) == 1, (name, label)
            continue
        assert set(drawn) == set(groups.order), name  # every group, and nothing else
        for label in drawn:
            assert len(optimizers_of(table, groups, label)) == 1, (name, label)


@pytest.mark.parametrize("by", BYS)
def test_lines_are_the_means_of_one_optimizers_runs(issue_sweep: Path, built: dict[str, dict[str, Figure]],
                                                    by: str) -> None:
    """The comparison lines are the means of their groups' runs, never of mixed optimizers."""
    runs, df, table = _loaded(issue_sweep)
    groups = line_groups(runs, table, by)
    fig = built[by]["comparison"]
    ax = next(a for a in fig.axes if a.get_title() == "layer 1")
    for line in ax.get_lines():
        label = line.get_label()
        if label not in groups.order:
            continue
        mine = df[df["run"].isin(groups.members[label])]
        sel = mine[(mine["metric"] == "delta_cos_agop") & (mine["layer"] == 1)]
        mean = sel.groupby("epoch")["value"].mean().dropna()
        np.testing.assert_allclose(line.get_ydata(), mean.to_numpy())


@pytest.mark.parametrize("column", ["optimizer", "lr", "dataset", "width", "depth", "loss"])
@pytest.mark.parametrize("by", ["seed", "act"])
def test_every_standard_column_splits_lines(column: str, by: str) -> None:
    """Runs that differ only in one standard column, with no override naming it (two sweeps
    merged), never share a line; seed is averaged over."""
    base = {"status": "completed", "optimizer": "adam", "lr": 0.001, "dataset": "digits", "width": 32,
            "depth": 2, "loss": "mse", "act": "relu"}
    values = {"optimizer": ("sgd", "adam"), "lr": (0.1, 0.001), "dataset": ("digits", "svhn"),
              "width": (32, 64), "depth": (2, 5), "loss": ("mse", "ce")}[column]
    rows = [{**base, column: v, "seed": s, "run": f"{column}={v},seed={s}"} for v in values for s in (1, 2)]
    table = pd.DataFrame(rows)
    labels = grouping.line_labels(table, by, [])
    lines: dict[str, set[Any]] = {}
    for _, row in table.iterrows():
        lines.setdefault(labels[row["run"]], set()).add(row[column])
    assert all(len(v) == 1 for v in lines.values()), lines
    assert len(lines) == (2 if by == "act" else 4)  # by seed: each seed's line splits in two
    assert all(len([r for r in labels.values() if r == label]) == 2 for label in lines) or by == "seed"


def test_a_setting_and_its_override_are_one_setting() -> None:
    """``lr`` and ``optimizer.lr`` (``width`` and ``model.width``) name one setting: one split,
    labelled as the override wrote it; an optimizer's default lr adds no label of its own."""
    table = pd.DataFrame([
        {"run": f"r{i}", "status": "completed", "optimizer": opt, "lr": lr, "seed": s, "dataset": "digits",
         "width": 32, "depth": 2, "loss": "mse", "optimizer.lr": lr}
        for i, (opt, lr, s) in enumerate([("adam", 0.001, 1), ("adam", 0.01, 1), ("sgd", 0.1, 1),
                                          ("sgd", 0.1, 2)])])
    labels = grouping.line_labels(table, "seed", ["optimizer.lr"])
    assert labels["r0"] == "seed=1, adam, optimizer.lr=0.001"
    assert labels["r2"] == "seed=1, sgd, optimizer.lr=0.1"
    assert all(" lr=" not in label and label.count("lr=") <= 1 for label in labels.values())
    by_lr = grouping.line_labels(table, "lr", [])  # by the standard column: optimizer.lr never splits
    assert by_lr["r2"] == by_lr["r3"] == "lr=0.1" and by_lr["r0"] == "lr=0.001"
    plain = table.drop(columns="optimizer.lr").iloc[[0, 2, 3]]  # adam 0.001 and sgd 0.1 only
    expected = {"seed=1, adam", "seed=1, sgd", "seed=2, sgd"}
    assert set(grouping.line_labels(plain, "seed", []).values()) == expected


def test_run_control_keys_and_seed_never_split(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    for seed, control in ((1, "trainer.plots=off"), (2, "trainer.plots=end")):
        overrides = ["optimizer=adam", f"seed={seed}", control, f"data.root=/d{seed}"]
        write_fake_run(sweep / ",".join(overrides), "adam", seed, overrides)
    runs, _, table = _loaded(sweep)
    assert line_groups(runs, table, "optimizer").order == ["adam"]


# -- 7. colours --------------------------------------------------------------------------------
def _main_color(artist: Any) -> tuple[float, ...] | None:
    """The colour an artist shows its group in (None for black run points and grey whiskers)."""
    if isinstance(artist, Line2D) and not artist.get_label().startswith("_"):
        return to_rgb(artist.get_color())
    if isinstance(artist, Rectangle):
        return to_rgb(artist.get_facecolor())
    if isinstance(artist, PolyCollection):
        return to_rgb(artist.get_facecolor()[0])
    return None


def group_colors_in(figures: dict[str, Figure]) -> dict[str, set[tuple[float, ...]]]:
    out: dict[str, set[tuple[float, ...]]] = {}
    for fig in figures.values():
        for label, artists in group_artists(fig).items():
            out.setdefault(label, set()).update(c for a in artists if (c := _main_color(a)) is not None)
    return out


@pytest.mark.parametrize("by", BYS)
def test_each_group_has_one_colour_in_every_figure(issue_sweep: Path, built: dict[str, dict[str, Figure]],
                                                  by: str) -> None:
    runs, _, table = _loaded(issue_sweep)
    colors = group_colors_in({k: f for k, f in built[by].items() if not k.startswith("sweep_")})
    groups = line_groups(runs, table, by)
    assert set(colors) == set(groups.order)
    for label, seen in colors.items():
        assert seen == {tuple(to_rgb(groups.colors[label]))}, label
    assert len({tuple(to_rgb(c)) for c in groups.colors.values()}) == len(groups.order)  # all distinct
    for label in groups.order:  # shades of the optimizer's own hue
        base = TAB10[grouping.OPTIMIZER_COLORS[next(iter(optimizers_of(table, groups, label)))]]
        assert abs(_hue(groups.colors[label]) - _hue(base)) < 0.06, label


def _hue(color: Any) -> float:
    return colorsys.rgb_to_hsv(*to_rgb(color))[0]


def test_an_optimizer_has_the_same_colour_in_every_aggregate(tmp_path: Path) -> None:
    one = write_issue_sweep(tmp_path / "one", optimizers=("sgd", "adam"), widths=(32,))
    two = write_issue_sweep(tmp_path / "two", optimizers=("adam", "muon"), widths=(32,))
    seen: dict[str, set[tuple[float, ...]]] = {}
    for sweep in (one, two, [one, two]):
        runs, df, table = _loaded(sweep)
        figures = build_figures(runs, table, df, "delta_cos_agop", "optimizer")
        for label, colors in group_colors_in(figures).items():
            seen.setdefault(label, set()).update(colors)
    assert seen == {o: {tuple(TAB10[grouping.OPTIMIZER_COLORS[o]])} for o in ("sgd", "adam", "muon")}


def test_searches_take_their_optimizers_colours(tmp_path: Path) -> None:
    for opt, lrs in (("adam", (1e-3, 1e-2)), ("muon", (1e-2, 1e-1))):
        for lr in lrs:
            overrides = [f"hparams_search={opt}", f"optimizer.lr={lr}"]
            write_fake_run(tmp_path / ",".join(overrides), opt, 1, overrides, lr=lr)
    runs, _, table = _loaded(tmp_path)
    fig = lr_search_figure(searches(runs, table))
    colors = {label: {c for a in artists if (c := _main_color(a))}
              for label, artists in group_artists(fig).items()}
    assert colors == {"adam": {tuple(TAB10[1])}, "muon": {tuple(TAB10[2])}}


def test_report_summary_rows_are_the_figures_groups(issue_sweep: Path, tmp_path: Path) -> None:
    for by in BYS:
        summary = aggregate([issue_sweep], tmp_path / by, by=by, figures=False)
        report = (tmp_path / by / "report.md").read_text()
        section = report.split("## Per layer: final delta_cos_agop")[1].split("\n## ")[0]
        rows = [line.split(" | ")[0].lstrip("| ") for line in section.splitlines()
                if line.startswith("| ")][1:]
        runs, _ = discover.find_runs([issue_sweep])
        assert rows == line_groups(runs, summary.table, by).order


@pytest.mark.slow
def test_real_sweep_never_mixes_optimizers(tmp_path: Path) -> None:
    """The issue's sweep, run for real: ``-m optimizer=sgd,adam model.width=32,64 seed=1,2``,
    aggregated by default, ``--by seed`` and ``--by model.width``: every figure's groups hold
    one optimizer, and report.md has the per-layer summary with those groups."""
    import subprocess
    import sys

    from conftest import TINY, app_env

    sweep = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith(("model.width", "trainer.plots"))]
    cmd = [sys.executable, "-m", "agop_sweep", "-m", "optimizer=sgd,adam", "model.width=32,64", "seed=1,2",
           *args, "trainer.plots=off", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs, df, table = _loaded(sweep)
    assert len(runs) == 8
    for by in BYS:
        groups = line_groups(runs, table, by)
        figures = build_figures(runs, table, df, "delta_cos_agop", by)
        for name, fig in figures.items():
            drawn = group_artists(fig)
            assert set(drawn) == set(groups.order), (by, name)
            assert all(len(optimizers_of(table, groups, g)) == 1 for g in drawn), (by, name)
        aggregate([sweep], tmp_path / by, by=by, figures=False)
        report = (tmp_path / by / "report.md").read_text()
        assert "## Per layer: final delta_cos_agop" in report
        for g in groups.order:
            assert f"| {g} | {len(groups.members[g])} | " in report
