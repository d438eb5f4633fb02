"""alignment: per layer (one row each), the alignment exponent alpha* (the ansatz's 1/2 dotted
where it applies: for the raw NFM), the correlation at alpha* and the relative weight change
over training, one line per group (mean over its runs, band: min-max; hollow triangles where a
mean includes an alpha* at an end of its grid). Runs without these keys (older results) are
left out; with none, no figure.

The exponent shown is that of the plotted metric's NFM and correlation kinds when the runs
recorded every kind (a layer entry's ``alphas``), else that of their ``analysis.primary``.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from agop_sweep.aggregate.figures import _draw_group, _epoch_panel, _series, any_censored
from agop_sweep.aggregate.groups import Groups
from agop_sweep.aggregate.layout import grid_figure, group_handles, layers_of, legend_below
from agop_sweep.figures.style import (
    alpha_handle,
    ansatz_applies,
    apply_metric_limits,
    censored_handle,
    metric_kind,
    metric_label,
    primary_kind,
    switch_handle,
)

PANEL = (4.3, 2.7)  # inches: three columns stay about 1,300 px wide at any depth
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
    fig, axes = grid_figure(3 * len(layers), *PANEL, shape=(len(layers), 3))
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
