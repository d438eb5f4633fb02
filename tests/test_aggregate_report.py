"""What the aggregate tells a reader (issue 23): a resume command that works when pasted (2),
alpha_star at the grid's ends marked as censored and never averaged silently (3), the ansatz's
1/2 only where it applies (4), the per-layer summary table (5), the chance level of a
learning-rate search (6), whole-epoch ticks and a readable alignment figure (8)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aggregate_fakes import build_figures, write_fake_run
from conftest import TINY, app_env
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image
from test_aggregate_groups import write_issue_sweep

from agop_sweep.aggregate import aggregate, discover, tables
from agop_sweep.aggregate.discover import hydra_quote
from agop_sweep.aggregate.lr_search import chance_loss, lr_search_figure, searches
from agop_sweep.figures.style import ANSATZ_GID, edge, save_figure
from agop_sweep.store.record import RunRecord


def _edit(run_dir: Path, change) -> None:
    path = run_dir / "results.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _figures(sweep: Path, metric: str, by: str = "optimizer", x: str | None = None) -> dict[str, Figure]:
    runs, _ = discover.find_runs([sweep])
    df = tables.tidy_table(runs)
    return build_figures(runs, tables.runs_table(runs, df, metric), df, metric, by, x)


# -- 2. a resume command that can be pasted ----------------------------------------------------------
@pytest.mark.parametrize("path", ["/x/optimizer=adam,seed=1", "/x/data.image_shape=[1,8,8],seed=2",
                                  "/x/plain", "/x/it's", '/x/q"uote', "/x/${oops}", "/x/back\\slash\\",
                                  "/x/a b=c"])
def test_hydra_quote_reads_back_as_the_path(path: str) -> None:
    """Every run dir name becomes an override value Hydra's parser reads back unchanged (and
    ``${`` stays literal: OmegaConf would interpolate it)."""
    (override,) = OverridesParser.create().parse_overrides([f"hydra.run.dir={hydra_quote(path)}"])
    value = override.value()
    assert value.replace("\\${", "${") == path
    assert ("${" not in path) or "\\${" in value


def test_the_old_unquoted_command_did_not_parse() -> None:
    with pytest.raises(HydraException, match="mismatched input '='"):
        OverridesParser.create().parse_overrides(["hydra.run.dir=/x/optimizer=adam,seed=1"])


def test_resume_command_quotes_the_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "sweep" / "optimizer=adam,seed=1"
    write_fake_run(run_dir, "adam", 1, ["optimizer=adam", "seed=1", "data.image_shape=[1,8,8]"])
    (run,), _ = discover.find_runs([tmp_path / "sweep"])
    args = shlex.split(run.resume_command())
    assert args[:3] == ["python", "-m", "agop_sweep"] and args[-1] == "resume=true"
    (override,) = OverridesParser.create().parse_overrides([args[-2]])
    assert override.key_or_group == "hydra.run.dir" and override.value() == str(run_dir.resolve())
    assert "data.image_shape=[1,8,8]" in args


def _interrupt_patch(epoch: int) -> str:
    """Run the app with a kill -9 (os._exit) when the checkpoint of ``epoch`` is written."""
    return ("import os, sys, agop_sweep.store.checkpoint as c\n"
            "orig = c.save_checkpoint\n"
            "def dying(run_dir, e, *a, **k):\n"
            f"    if e == {epoch}:\n"
            "        os._exit(137)\n"
            "    return orig(run_dir, e, *a, **k)\n"
            "c.save_checkpoint = dying\n"
            "from agop_sweep.run.app import main\nsys.argv = ['agop_sweep'] + sys.argv[1:]\nmain()\n")


@pytest.mark.slow
def test_printed_resume_command_works_when_pasted(tmp_path: Path) -> None:
    """A sweep job killed after epoch 1; report.md prints its resume command; that command,
    run by a shell exactly as printed, finishes the run."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-c", _interrupt_patch(2), "-m", "optimizer=adam", "seed=3", *TINY,
           "trainer.plots=off", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=app_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stderr[-3000:]
    (job,) = [p.parent for p in sweep.glob("*/results.json")]
    assert "=" in job.name and "," in job.name and "[" in job.name  # what broke the old command
    aggregate([sweep], figures=False)
    report = (sweep / "report.md").read_text()
    assert "## Interrupted runs" in report
    (command,) = [line.strip() for line in report.splitlines()
                  if line.strip().startswith("python -m agop_sweep")]
    env = {**app_env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    resumed = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = RunRecord.in_dir(job)
    assert record.status == "completed" and [e["epoch"] for e in record.epochs] == [0, 1, 2, 3]
    assert "Resuming" in (job / "agop_sweep.log").read_text() or "resum" in resumed.stderr.lower()


# -- 3. alpha_star at the grid's ends ---------------------------------------------------------------
def _censored_sweep(root: Path) -> Path:
    """sgd's two seeds sit at 0 and at 2 (alpha_corr 0.11, 0.33), adam's inside the grid."""
    sweep = write_issue_sweep(root, widths=(32,), alphas=True)
    for run_dir in sweep.glob("optimizer=sgd*"):
        seed = 1 if "seed=1" in run_dir.name else 2

        def change(data: dict, seed: int = seed) -> None:
            for a in data["analysis"][1:]:
                for entry in a["layers"]:
                    entry["alpha_star"], entry["alpha_corr"] = (0.0, 0.11) if seed == 1 else (2.0, 0.33)
        _edit(run_dir, change)
    return sweep


@pytest.fixture(scope="module")
def censored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _censored_sweep(tmp_path_factory.mktemp("censored") / "sweep")


def test_tables_mark_censored_values(censored: Path, tmp_path: Path) -> None:
    summary = aggregate([censored], tmp_path, metric="alpha_star", figures=False, fmt="csv")
    table = summary.table.set_index("run")
    sgd = [r for r in table.index if "sgd" in r]
    assert sorted(table.loc[sgd, "censored_layer0"]) == ["above", "below"]
    assert sorted(table.loc[sgd, "alpha_corr_layer1"]) == [0.11, 0.33]
    assert set(table.loc[[r for r in table.index if "adam" in r], "censored_layer0"]) == {""}
    df = pd.read_csv(tmp_path / "metrics.csv", keep_default_na=False)
    alpha = df[df["metric"] == "alpha_star"]
    assert {(float(v), c) for v, c in zip(alpha["value"].replace("", np.nan), alpha["censored"], strict=True)
            if c} == {(0.0, "below"), (2.0, "above")}
    assert set(df.loc[df["metric"] != "alpha_star", "censored"]) == {""}


def test_report_never_averages_censored_values(censored: Path, tmp_path: Path) -> None:
    aggregate([censored], tmp_path, metric="alpha_star", figures=False)
    report = (tmp_path / "report.md").read_text()
    section = report.split("## Per layer: final alpha_star")[1].split("\n## ")[0]
    sgd_row = next(line for line in section.splitlines() if line.startswith("| sgd"))
    assert "\u2264 0 & \u2265 2" in sgd_row and "1.00" not in sgd_row  # no mean of a 0 and a 2
    assert "corr 0.22" in sgd_row  # the mean correlation at alpha*, next to it
    runs_rows = report.split("## Runs")[1]
    assert "\u2265 2 (0.33)" in runs_rows and "\u2264 0 (0.11)" in runs_rows


def test_one_sided_censoring_gives_a_bound() -> None:
    from agop_sweep.figures.style import alpha_mean_text

    assert alpha_mean_text([2.0, 1.0]) == "\u2265 1.50"  # the true mean is at least that
    assert alpha_mean_text([0.0, 1.0]) == "\u2264 0.50"
    assert alpha_mean_text([2.0, 2.0]) == "\u2265 2"
    assert alpha_mean_text([0.0, 2.0]) == "\u2264 0 & \u2265 2"
    assert alpha_mean_text([0.5, 1.0]) == "0.75"
    assert [edge(v) for v in (0.0, 0.01, 1.99, 2.0, float("nan"))] == ["below", "", "", "above", ""]


def test_figures_mark_censored_values(censored: Path) -> None:
    figures = _figures(censored, "alpha_star")
    ax = next(a for a in figures["comparison"].axes if a.get_title() == "layer 0")
    sgd = next(ln for ln in ax.get_lines() if ln.get_label() == "sgd")
    assert np.isnan(sgd.get_ydata()).all()  # a mean of a 0 and a 2 is never drawn as a 1
    ends = sorted({(ln.get_marker(), float(y)) for ln in ax.get_lines() if ln.get_marker() in ("^", "v")
                   for y in ln.get_ydata()})
    assert ends == [("^", 2.0), ("v", 0.0)]
    (bars,) = figures["final_correlation"].axes
    labels = [t.get_text().replace(" ", "") for t in bars.texts]
    assert any(t.startswith("\u22640&\u22652") for t in labels)
    assert not any(t.startswith("1.00") for t in labels)
    assert any("\n(0.22)" in t for t in labels)  # alpha_corr below alpha_star
    sgd_bars = [p for p in bars.patches if p.get_gid() == "group:sgd"]
    assert sgd_bars and not any(p.get_visible() for p in sgd_bars)  # runs at both ends: no bar
    points = [ln for ln in bars.get_lines() if ln.get_gid() == "group:sgd" and ln.get_marker() in ("^", "v")]
    assert {float(y) for ln in points for y in ln.get_ydata()} == {0.0, 2.0}
    legend = " ".join(t.get_text() for t in figures["final_correlation"].legends[0].get_texts())
    assert "censored" in legend


# -- 4. the ansatz's 1/2 only for the raw NFM --------------------------------------------------------
def _primary(sweep: Path, primary: str) -> None:
    for run_dir in sweep.glob("*/"):
        if (run_dir / "results.json").exists():
            _edit(run_dir, lambda d: d["config"]["analysis"].update(primary=primary))


@pytest.mark.parametrize(("primary", "metric", "drawn", "label"), [
    ("delta_cos_agop", "alpha_star", False, "delta NFM, cosine"),
    ("raw_cos_agop", "alpha_star", True, "raw NFM W\u1d40W, cosine"),
    ("delta_cos_agop", "alpha_star_raw_pearson", True, "raw NFM W\u1d40W, Pearson"),
    ("raw_pearson_sqrt", "alpha_star_delta_cos", False, "delta NFM, cosine"),
])
def test_ansatz_line_only_for_the_raw_nfm(tmp_path: Path, primary: str, metric: str, drawn: bool,
                                          label: str) -> None:
    sweep = write_issue_sweep(tmp_path / "s", widths=(32,), alphas=True)
    _primary(sweep, primary)
    figures = _figures(sweep, metric)
    for name in ("comparison", "final_correlation", "alignment"):
        fig = figures[name]
        lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == ANSATZ_GID]
        assert bool(lines) == drawn, name
        if drawn:
            assert all(list(ln.get_ydata()) == [0.5, 0.5] for ln in lines)
        legend = " ".join(t.get_text() for leg in fig.legends for t in leg.get_texts())
        assert ("ansatz: alpha = 0.5 (for the raw NFM" in legend) == drawn, name
        assert any(label in ax.get_ylabel() for ax in fig.axes), name


# -- 5. the per-layer summary -------------------------------------------------------------------------
def test_summary_table_per_layer_and_group(tmp_path: Path) -> None:
    sweep = write_issue_sweep(tmp_path / "s")
    summary = aggregate([sweep], tmp_path / "out", figures=False)
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Per layer: final delta_cos_agop")[1].split("\n## ")[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]  # the |---| line does not start with "| "
    assert len(body) == 4
    assert [h.strip() for h in header] == ["line", "runs", "layer 0", "layer 1", "final val acc"]
    table = summary.table
    means = {}
    for row in body:
        label = row[0].strip()
        opt, width = label.split(", model.width=")
        mine = table[(table["optimizer"] == opt) & (table["model.width"] == int(width))]
        assert row[1].strip() == "2"
        for l in (0, 1):
            values = mine[f"corr_layer{l}"]
            cell = row[2 + l].strip().strip("*")
            assert cell == f"{values.mean():.2f} ({values.min():.2f}\u2013{values.max():.2f})"
            means.setdefault(l, {})[label] = (values.mean(), row[2 + l].startswith("**"))
        acc = mine["final_val_acc"]
        assert row[4].strip() == f"{acc.mean():.3f} ({acc.min():.3f}\u2013{acc.max():.3f})"
    for l, by_label in means.items():  # the best line of each layer, and only it, in bold
        best = max(by_label, key=lambda g: by_label[g][0])
        assert [g for g, (_, bold) in by_label.items() if bold] == [best], l
    assert report.index("## Per layer") < report.index("## Runs")


# -- 6. the chance level of a learning-rate search ---------------------------------------------------
def _search(root: Path, optimizer: str, trials: dict[float, float]) -> None:
    for lr, val_loss in trials.items():
        overrides = [f"optimizer.lr={lr}", f"hparams_search={optimizer}"]
        run_dir = root / ",".join(overrides)
        write_fake_run(run_dir, optimizer, 1, overrides, lr=lr)
        _edit(run_dir, lambda d, v=val_loss: d["epochs"][-1].update(val_loss=v))


def test_chance_loss() -> None:
    assert chance_loss("mse", 10) == pytest.approx(0.09)
    assert chance_loss("ce", 10) == pytest.approx(np.log(10))
    # The constant 1/c: whatever the class frequencies, MSE against one-hot is (c - 1) / c^2.
    rng = np.random.default_rng(0)
    y = np.eye(10)[rng.choice(10, 5000, p=np.r_[0.3, np.full(9, 0.7 / 9)])]
    assert float(((y - 0.1) ** 2).mean()) == pytest.approx(0.09)


def test_a_search_at_chance_is_flagged(tmp_path: Path) -> None:
    """Six trials between 0.09991 and 0.09995 all sit above chance (0.09): no best lr, a flag,
    and an axis that shows chance, so they do not look like a trend."""
    values = [0.09995, 0.09993, 0.09991, 0.09992, 0.09994, 0.09995]
    _search(tmp_path, "sgd", dict(zip([1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], values, strict=True)))
    _search(tmp_path, "adam", {1e-3: 0.05, 1e-2: 0.07})
    aggregate([tmp_path], figures=False)
    section = (tmp_path / "report.md").read_text().split("## Learning-rate search")[1].split("\n## ")[0]
    assert "**No trial beats chance** in sgd" in section
    row = "| sgd | 6 | 6 | 0 | 0 | none: no trial beats chance (lowest at 0.01) | 0.09991 | 0.09 |"
    assert row in section
    assert "| adam | 2 | 2 | 0 | 0 | **0.001** | 0.05 | 0.09 |" in section
    runs, _ = discover.find_runs([tmp_path])
    table = tables.runs_table(runs, tables.tidy_table(runs), "delta_cos_agop")
    fig = lr_search_figure(searches(runs, table))
    (ax,) = fig.axes
    chance = [ln for ln in ax.get_lines() if ln.get_gid() == "chance"]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == [0.09, 0.09]
    low, high = ax.get_ylim()
    assert low < 0.05 and high > 0.09995  # chance and every trial in view
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "sgd: 6 trials, no trial beats chance" in legend.replace("\n", " ")
    stars = [ln for ln in ax.get_lines() if ln.get_marker() == "*"]
    assert [ln.get_gid() for ln in stars] == ["group:adam"]  # no star for the search at chance


# -- 8. ticks and sizes ------------------------------------------------------------------------------
def test_epoch_axes_have_whole_epochs_only(tmp_path: Path) -> None:
    figures = _figures(write_issue_sweep(tmp_path / "s", widths=(32,)), "delta_cos_agop")
    for name in ("comparison", "losses", "effective_rank", "alignment"):
        for ax in figures[name].axes:
            if ax.get_xlabel() == "epoch":
                ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
                assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)


def test_alignment_figure_fits_a_screen(tmp_path: Path) -> None:
    """Depth 5: one row per layer, three columns, about 1,300 px wide (it was 2450 x 749)."""
    sweep = tmp_path / "s"
    for opt in ("sgd", "adam"):
        write_fake_run(sweep / f"optimizer={opt}", opt, 1, [f"optimizer={opt}"], depth=5, new_keys=True)
    fig = _figures(sweep, "delta_cos_agop")["alignment"]
    (png,) = save_figure(fig, tmp_path / "alignment", ("png",))  # as aggregate writes it
    width, height = Image.open(png).size
    assert 1100 <= width <= 1400 and height <= 1700
    assert [ax.get_title() for ax in fig.axes[:3]] == ["layer 0: alpha*", "layer 0: corr at alpha*",
                                                       "layer 0: ||W - W0|| / ||W0||"]
    assert len(fig.axes) == 15


def test_feature_images_have_colour_bars(tmp_path: Path) -> None:
    figures = _figures(write_issue_sweep(tmp_path / "s", widths=(32,)), "delta_cos_agop")
    fig = figures["features"]
    images = [ax for ax in fig.axes if ax.get_images()]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(images) == 2 * 4 and len(bars) == len(images)


def test_legend_handles_say_which_line_is_which(tmp_path: Path) -> None:
    figures = _figures(write_issue_sweep(tmp_path / "s", widths=(32,)), "delta_cos_agop")
    handles = [h for h in figures["comparison"].legends[0].legend_handles if isinstance(h, Line2D)]
    assert {re.sub(r" lr=.*", "", h.get_label()) for h in handles} >= {"adam", "sgd"}
