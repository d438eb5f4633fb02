"""alignment: alpha_star (top row, the ansatz's 0.5 dotted) and weight_change (bottom row) per
layer over training, one line per group (mean over its runs, band: min-max). Runs without
these keys (older results) are left out; with none, no figure."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from agop_sweep.aggregate.figures import _draw_group, _epoch_panel, _series
from agop_sweep.aggregate.groups import Groups
from agop_sweep.aggregate.layout import grid_figure, group_handles, layers_of, legend_below
from agop_sweep.figures.style import alpha_handle, apply_metric_limits, switch_handle

ROWS = ("alpha_star", "weight_change")
LABELS = {"alpha_star": "alpha* (argmax corr(NFM, AGOP^a))", "weight_change": "||W - W0|| / ||W0||"}


def alignment_figure(df: pd.DataFrame, groups: Groups, switch: int | None) -> Figure | None:
    """Two rows of one panel per layer (alpha_star, weight_change over epochs); None when no
    run recorded either key."""
    sub = df[df["metric"].isin(ROWS) & df["layer"].notna()]
    if not sub["value"].notna().any():
        return None
    runs = set(sub.loc[sub["value"].notna(), "run"])
    shown = [g for g in groups.order if runs.intersection(groups.members[g])]
    layers = layers_of(sub)
    fig, axes = grid_figure(2 * len(layers), shape=(2, len(layers)))
    for row, metric in enumerate(ROWS):
        values = sub.loc[sub["metric"] == metric, "value"].to_numpy(dtype=float)
        for ax, l in zip(axes[row * len(layers):(row + 1) * len(layers)], layers, strict=True):
            for g in shown:
                _draw_group(ax, _series(sub, groups.members[g], metric, l), groups.colors[g], g,
                            groups.marker(g))
            apply_metric_limits(ax, metric, values)
            _epoch_panel(ax, f"layer {l}: {metric}", LABELS[metric], switch)
    handles = [h for h, g in zip(group_handles(groups), groups.order, strict=True) if g in shown]
    legend_below(fig, [*handles, alpha_handle(), *([] if switch is None else [switch_handle(switch)])])
    fig.suptitle("alignment exponent alpha* and relative weight change per layer over training", fontsize=13)
    return fig
