"""The comparison figures: one line (or bar) per group, the mean over its runs with a min-max
band, drawn from the tidy metrics table in the look of :mod:`agop_sweep.figures.style`.

Every figure sizes itself to its panels and lines and puts its legend below the panels
(:mod:`~agop_sweep.aggregate.layout`). Losses of different loss functions never share an axis.
The grouped bars live in :mod:`~agop_sweep.aggregate.bars`, the feature images in
:mod:`~agop_sweep.aggregate.feature_grid`; both are importable from here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from agop_sweep.aggregate.bars import final_correlation_figure
from agop_sweep.aggregate.feature_grid import DELTA_NFM, features_comparison_figure
from agop_sweep.aggregate.groups import Groups, group_gid
from agop_sweep.aggregate.layout import (
    LEGEND_TITLE,
    grid_figure,
    group_handles,
    is_correlation,
    layers_of,
    legend_below,
)
from agop_sweep.figures.style import (
    alpha_handle,
    ansatz_applies,
    apply_metric_limits,
    both_ends,
    censored_handle,
    draw_switch,
    is_alpha_star,
    log_axis,
    mark_censored,
    metric_kind,
    metric_label,
    primary_kind,
    switch_handle,
    use_log,
)

__all__ = ["comparison_figure", "effective_rank_figure", "features_comparison_figure",
           "final_correlation_figure", "is_correlation", "layers_of", "losses_figure"]

LOSS_NAMES = {"mse": "MSE", "ce": "cross-entropy"}
LOSS_PANEL = (5.2, 3.0)  # inches


def _series(df: pd.DataFrame, runs: list[str], metric: str, layer: int | None) -> pd.DataFrame:
    """Epoch x run matrix of ``metric`` (of ``layer``, or run-level when None)."""
    sel = df[df["run"].isin(runs) & (df["metric"] == metric)]
    sel = sel[sel["layer"].isna()] if layer is None else sel[sel["layer"] == layer]
    if sel.empty:
        return pd.DataFrame()
    return sel.pivot_table(index="epoch", columns="run", values="value", aggfunc="first", dropna=False)


def _draw_group(ax: Axes, m: pd.DataFrame, color: Any, label: str, marker: str | None = "o",
                ls: str = "-", censor: bool = False, group: str | None = None) -> bool:
    """Mean line over the runs (columns) and, with several runs, their min-max band; with
    ``censor`` (an alpha_star), hollow triangles where the mean includes a run at an end of
    the grid. Every artist carries the gid of ``group`` (default: ``label``)."""
    if m.empty or not np.isfinite(m.to_numpy(dtype=float)).any():
        return False
    x = m.index.to_numpy(dtype=float)
    arr = m.to_numpy(dtype=float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs stay NaN
        mean, lo, hi = np.nanmean(arr, 1), np.nanmin(arr, 1), np.nanmax(arr, 1)
    ok = np.isfinite(mean)
    gid = group_gid(label if group is None else group)
    if censor:  # alpha_star values at both ends of the grid: their mean bounds nothing
        mean = np.where(both_ends(arr), np.nan, mean)
        mark_censored(ax, x[ok], mean[ok], arr[ok], color, gid)
    every = max(1, int(ok.sum()) // 12)  # at most about a dozen markers on a long line
    ax.plot(x[ok], mean[ok], color=color, marker=marker, ms=3.5, lw=1.6, ls=ls, label=label, markevery=every,
            gid=gid)  # NaN (no bound) leaves a gap
    if arr.shape[1] > 1:
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18, lw=0, gid=gid)
    return True


def any_censored(df: pd.DataFrame, metric: str) -> bool:
    """Whether any value of an alpha_star ``metric`` sits at an end of its grid."""
    return bool(is_alpha_star(metric) and "censored" in df.columns
                and (df.loc[df["metric"] == metric, "censored"] != "").any())


def _epoch_axis(ax: Axes) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no 0.5, 2.5 on short runs
    ax.grid(alpha=0.25)


def _epoch_panel(ax: Axes, title: str, ylabel: str, switch: int | None) -> None:
    ax.set_title(title)
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    draw_switch(ax, switch)


def _extras(switch: int | None) -> list[Any]:
    return [] if switch is None else [switch_handle(switch)]


def comparison_figure(df: pd.DataFrame, groups: Groups, metric: str, switch: int | None,
                      kind: str | None = None) -> Figure:
    """Per layer, ``metric`` over epochs, one line per group; the legend below the panels.
    ``kind``: the NFM and correlation kind of plain ``alpha_star`` (the runs' primary's)."""
    layers = layers_of(df)
    fig, axes = grid_figure(len(layers))
    values = df.loc[df["metric"] == metric, "value"]
    censor = any_censored(df, metric)
    for ax, l in zip(axes, layers, strict=True):
        for g in groups.order:
            _draw_group(ax, _series(df, groups.members[g], metric, l), groups.colors[g], g, groups.marker(g),
                        censor=censor)
        apply_metric_limits(ax, metric, values.to_numpy(dtype=float), kind)
        _epoch_panel(ax, f"layer {l}", metric_label(metric, kind), switch)
    extra = [alpha_handle()] if ansatz_applies(metric, kind) else []
    extra += [censored_handle()] if censor else []
    legend_below(fig, [*group_handles(groups), *extra, *_extras(switch)])
    fig.suptitle(f"{metric} per layer over training", fontsize=13)
    return fig


def effective_rank_figure(df: pd.DataFrame, groups: Groups, metric: str, switch: int | None) -> Figure:
    """Per layer, the effective rank of the AGOP (solid) and of the NFM the metric compares
    with (dashed) over epochs, one colour per group."""
    nfm = "nfm_delta" if metric.startswith("delta") else "nfm_raw"
    layers = layers_of(df)
    fig, axes = grid_figure(len(layers))
    log_y = use_log(df.loc[df["metric"].isin(["agop_effective_rank", f"{nfm}_effective_rank"]), "value"])
    for ax, l in zip(axes, layers, strict=True):
        for g in groups.order:
            for name, ls in (("agop", "-"), (nfm, "--")):
                _draw_group(ax, _series(df, groups.members[g], f"{name}_effective_rank", l),
                            groups.colors[g], g, marker=groups.marker(g) if ls == "-" else None, ls=ls)
        if log_y:
            log_axis(ax)
        _epoch_panel(ax, f"layer {l}", "effective rank", switch)
    extra = [Line2D([], [], color="0.2", lw=1.6, marker="o", ms=4, label="AGOP"),
             Line2D([], [], color="0.2", lw=1.6, ls="--",
                    label=f"NFM {DELTA_NFM}" if nfm == "nfm_delta" else "NFM W\u1d40W")]
    legend_below(fig, [*group_handles(groups), *extra, *_extras(switch)],
                 title=f"{LEGEND_TITLE}; effective rank = exp(entropy of the normalised eigenvalues)")
    fig.suptitle("effective rank per layer over training", fontsize=13)
    return fig


def _lines_panel(ax: Axes, df: pd.DataFrame, groups: Groups, lines: Sequence[str], metric: str) -> None:
    """``metric`` (one value per epoch) of ``lines`` over epochs; a note where none has values."""
    many = groups.shaded  # shades of one optimizer's colour: markers tell the lines apart
    drawn = False
    for g in lines:
        drawn |= _draw_group(ax, _series(df, groups.members[g], metric, None), groups.colors[g],
                             groups.legend_label(g), marker=groups.marker(g) if many else None, group=g)
    if not drawn:
        ax.text(0.5, 0.5, "no values (no validation set?)", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    _epoch_axis(ax)


def losses_figure(df: pd.DataFrame, groups: Groups, switch: int | None) -> Figure:
    """Train and val loss, one row per loss function (MSE and cross-entropy never share an
    axis), and below them train and val accuracy, per group over epochs."""
    losses = groups.losses() or ["mse"]
    fig, axes = grid_figure(2 * (len(losses) + 1), *LOSS_PANEL, shape=(len(losses) + 1, 2))
    rows = [axes[i:i + 2] for i in range(0, len(axes), 2)]
    for row, loss in zip(rows, losses, strict=False):
        lines = [g for g in groups.order if groups.loss_of(g) == loss]
        runs = [r for g in lines for r in groups.members[g]]
        for ax, metric in zip(row, ("train_loss", "val_loss"), strict=True):
            _lines_panel(ax, df, groups, lines, metric)
            ax.set_title(metric.replace("_", " ") + (f" ({loss})" if len(losses) > 1 else ""))
            ax.set_ylabel(f"{LOSS_NAMES.get(loss, loss)} loss")
            if use_log(df.loc[(df["metric"] == metric) & df["run"].isin(runs), "value"].to_numpy()):
                log_axis(ax)
    for ax, metric in zip(rows[-1], ("train_acc", "val_acc"), strict=True):
        _lines_panel(ax, df, groups, groups.order, metric)
        ax.set_title(metric.replace("_", " "))
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.0)
    legend_below(fig, group_handles(groups, marker=groups.shaded))
    fig.suptitle("loss and accuracy (mean over runs, band: min-max)", fontsize=13)
    return fig


# -- alignment ------------------------------------------------------------------------------------
# alignment: per layer (one row each), the alignment exponent alpha* (the ansatz's 1/2 dotted
# where it applies: for the raw NFM), the correlation at alpha* and the relative weight change
# over training, one line per group (mean over its runs, band: min-max; hollow triangles where a
# mean includes an alpha* at an end of its grid). Runs without these keys (older results) are
# left out; with none, no figure.
#
# The exponent shown is that of the plotted metric's NFM and correlation kinds when the runs
# recorded every kind (a layer entry's ``alphas``), else that of their ``analysis.primary``.
ALIGNMENT_PANEL = (4.3, 2.7)  # inches: three columns stay about 1,300 px wide at any depth
TITLES = {"star": "alpha*", "corr": "corr at alpha*", "weight_change": "||W - W0|| / ||W0||"}


def alignment_columns(df: pd.DataFrame, metric: str, kind: str | None) -> tuple[list[str], str | None]:
    """The three metrics of a row (alpha_star, alpha_corr, weight_change; per kind when the
    runs recorded the plotted metric's kind) and the kind the exponent is for."""
    wanted = metric_kind(metric) or primary_kind(metric)
    names = set(df["metric"])
    if wanted is not None and f"alpha_star_{wanted}" in names:
        return [f"alpha_star_{wanted}", f"alpha_corr_{wanted}", "weight_change"], wanted
    return ["alpha_star", "alpha_corr", "weight_change"], kind


def alignment_figure(df: pd.DataFrame, groups: Groups, switch: int | None, metric: str = "",
                     kind: str | None = None) -> Figure | None:
    """One row per layer: alpha*, the correlation at alpha* and weight_change over epochs;
    None when no run recorded any of them. ``metric``: the plotted metric (whose kind picks
    the exponent); ``kind``: that of the runs' ``analysis.primary`` (plain alpha_star)."""
    columns, kind = alignment_columns(df, metric, kind)
    sub = df[df["metric"].isin(columns) & df["layer"].notna()]
    if not sub["value"].notna().any():
        return None
    runs = set(sub.loc[sub["value"].notna(), "run"])
    shown = [g for g in groups.order if runs.intersection(groups.members[g])]
    layers = layers_of(sub)
    fig, axes = grid_figure(3 * len(layers), *ALIGNMENT_PANEL, shape=(len(layers), 3))
    censor = any_censored(sub, columns[0])
    for row, l in enumerate(layers):
        for col, name in enumerate(columns):
            ax = axes[3 * row + col]
            for g in shown:
                _draw_group(ax, _series(sub, groups.members[g], name, l), groups.colors[g], g,
                            groups.marker(g), censor=censor and col == 0)
            apply_metric_limits(ax, name, sub.loc[sub["metric"] == name, "value"].to_numpy(dtype=float), kind)
            title = TITLES["weight_change" if col == 2 else ("star", "corr")[col]]
            _epoch_panel(ax, f"layer {l}: {title}", metric_label(name, kind) if col < 2 else title, switch)
    epochs = sub.loc[sub["value"].notna(), "epoch"]
    pad = max(0.3, 0.02 * float(epochs.max() - epochs.min()))
    for ax in axes:  # one epoch axis for every panel: alpha* starts a step later (null at W = W0)
        ax.set_xlim(epochs.min() - pad, epochs.max() + pad)
    handles = [h for h, g in zip(group_handles(groups), groups.order, strict=True) if g in shown]
    extra = [alpha_handle()] if ansatz_applies(columns[0], kind) else []
    extra += [censored_handle()] if censor else []
    legend_below(fig, [*handles, *extra, *([] if switch is None else [switch_handle(switch)])])
    fig.suptitle(f"{metric_label(columns[0], kind)}, the correlation there, and the relative weight change "
                 "per layer over training", fontsize=12)
    return fig
