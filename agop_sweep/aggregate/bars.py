"""final_correlation: grouped bars, per layer one bar per group at the runs' last analysed
epoch, each bar wide enough for its value label (upright for a few groups, turned for many)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from agop_sweep.aggregate.groups import Groups
from agop_sweep.aggregate.layout import layers_of, legend_below, new_figure, wrap
from agop_sweep.aggregate.tables import final_values
from agop_sweep.figures.style import ALPHA_ANSATZ, DPI, alpha_handle, metric_limits

UPRIGHT_SLOT = 34  # pixels per bar when value labels stand upright (a few groups)
TURNED_SLOT = 18  # pixels per bar when they are turned by 90 degrees
MIN_PLOT_WIDTH = 560  # pixels
MAX_PLOT_WIDTH = 2400  # pixels; past it the bars get thin and lose their value labels
HEIGHT = 4.8  # inches, without the legend
LABEL_PX = {True: 30, False: 16}  # room above a bar for its label: turned, upright


def _bar_stats(finals: pd.DataFrame, runs: list[str],
               layers: list[int]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per layer, the mean over ``runs``, with several runs the whiskers' lengths down to the
    min and up to the max (never negative, though a mean of equal values may round past
    them), and whether any run has the layer."""
    mine = finals[finals["run"].isin(runs)]
    stats = mine.groupby("layer")["value"].agg(["mean", "min", "max", "size"]).reindex(layers)
    mean = stats["mean"].to_numpy(dtype=float)
    present = stats["size"].fillna(0).to_numpy() > 0
    if len(runs) < 2:
        return mean, None, present
    lo, hi = stats["min"].to_numpy(dtype=float), stats["max"].to_numpy(dtype=float)
    return mean, np.clip(np.vstack([mean - lo, hi - mean]), 0.0, None), present


def _label_bars(ax: Axes, x: np.ndarray, mean: np.ndarray, top: np.ndarray, present: np.ndarray,
                turned: bool) -> None:
    """The mean above each bar and its whisker ("n/a" where undefined); none where the
    group has no such layer."""
    for xi, m, t, here in zip(x, mean, top, present, strict=True):
        if not here:
            continue
        y = max(0.0, float(t)) if np.isfinite(t) else 0.0
        ax.annotate("n/a" if not np.isfinite(m) else f"{m:.2f}", (xi, y), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8,
                    rotation=90 if turned else 0)


def _set_ylim(ax: Axes, finals: pd.DataFrame, tops: list[float], metric: str, label_px: float,
              axes_px: float) -> None:
    """Room above the highest bar for its label; correlations on 0..1 (or -1..1), alpha_star
    on 0..2 (with the ansatz's 0.5 dotted), weight_change from 0."""
    values = finals["value"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min()) if finite.size else 0.0)
    top = metric_limits(metric, values)[1] or 0.0
    high = max([t for t in tops if np.isfinite(t)] + [top])
    if metric == "alpha_star":
        ax.axhline(ALPHA_ANSATZ, color="0.3", ls=":", lw=1.3, zorder=1)
    high = high if high > low else low + 1.0
    share = min(0.5, (label_px + 10) / axes_px)  # of the axes' height kept free above
    ax.set_ylim(low, low + (high - low) / (1 - share))


def final_correlation_figure(df: pd.DataFrame, groups: Groups, metric: str) -> Figure:
    """Grouped bars: per layer, ``metric`` at each run's last analysed epoch, one bar per group
    (mean over its runs; whiskers: min-max); the legend below."""
    finals = final_values(df, metric)
    layers = layers_of(df)
    n = max(len(groups.order), 1)
    turned = n > 3
    slot = TURNED_SLOT if turned else UPRIGHT_SLOT
    plot_px = max(MIN_PLOT_WIDTH, len(layers) * n * slot / 0.8)
    labelled = plot_px <= MAX_PLOT_WIDTH
    plot_px = min(plot_px, MAX_PLOT_WIDTH)
    fig = new_figure(plot_px / DPI + 1.4, HEIGHT)
    ax = fig.subplots()
    width = 0.8 / n
    tops: list[float] = []
    for i, g in enumerate(groups.order):
        mean, err, present = _bar_stats(finals, groups.members[g], layers)
        x = np.arange(len(layers)) + (i - (n - 1) / 2) * width
        ax.bar(x, np.nan_to_num(mean), width * 0.92, yerr=err, capsize=3 if not turned else 1.5,
               color=groups.colors[g], label=groups.legend_label(g),
               error_kw={"elinewidth": 1, "ecolor": "0.25"})
        top = mean if err is None else mean + err[1]
        tops += list(top[present])
        if labelled:
            _label_bars(ax, x, mean, top, present, turned)
    ax.set_xticks(np.arange(len(layers)), [f"layer {l}" for l in layers])
    ax.set_ylabel(metric)
    _set_ylim(ax, finals, tops, metric, LABEL_PX[turned] if labelled else 0, (HEIGHT - 1.2) * DPI)
    ax.grid(axis="y", alpha=0.25)
    handles = [Patch(color=groups.colors[g], label=wrap(groups.legend_label(g))) for g in groups.order]
    handles += [alpha_handle()] if metric == "alpha_star" else []
    legend_below(fig, handles, title="bars: mean over runs; whiskers: min-max")
    epochs = sorted(set(finals["epoch"].astype(int)))
    at = f"epoch {epochs[0]}" if len(epochs) == 1 else "each run's last analysed epoch"
    fig.suptitle(f"{metric} at {at}", fontsize=13)
    return fig
