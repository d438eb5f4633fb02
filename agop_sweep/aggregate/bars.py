"""final_correlation: grouped bars, per layer one bar per group at the runs' last analysed
epoch, each bar wide enough for its value label (upright for a few groups, turned for many).
For an alpha_star, each run's value is marked on its bar, and the grid's ends are censored
values: never averaged with others without a ``*`` in the label."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from agop_sweep.aggregate.groups import Groups, group_gid
from agop_sweep.aggregate.layout import layers_of, legend_below, new_figure, wrap
from agop_sweep.aggregate.tables import final_values
from agop_sweep.figures.style import (
    ABOVE,
    ALPHA_ANSATZ,
    ANSATZ_GID,
    BELOW,
    DPI,
    alpha_handle,
    alpha_mean_text,
    ansatz_applies,
    censored_handle,
    companion,
    is_alpha_star,
    metric_label,
    metric_limits,
)

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


def _bar_text(values: pd.DataFrame, partner: pd.Series | None, alpha: bool) -> str:
    """A bar's label: the mean over its runs; for an alpha_star as far as values at the grid's
    ends allow (:func:`~agop_sweep.figures.style.alpha_mean_text`: ``\u2265 2``, a bound such
    as ``\u2265 1.23``), with the mean correlation at the exponent below it in parentheses."""
    v = values["value"].to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return "n/a"
    if not alpha:
        return f"{v.mean():.2f}"
    text = alpha_mean_text(v.tolist()).replace(" ", "")
    if partner is not None and np.isfinite(partner.to_numpy(dtype=float)).any():
        text += f"\n({np.nanmean(partner.to_numpy(dtype=float)):.2f})"
    return text


def _label_bars(ax: Axes, x: np.ndarray, texts: list[str], top: np.ndarray, present: np.ndarray,
                turned: bool) -> None:
    """Each bar's text above it and its whisker; none where the group has no such layer."""
    for xi, text, t, here in zip(x, texts, top, present, strict=True):
        if not here:
            continue
        y = max(0.0, float(t)) if np.isfinite(t) else 0.0
        ax.annotate(text, (xi, y), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=8, rotation=90 if turned else 0, linespacing=1.0)


def _run_points(ax: Axes, x: np.ndarray, finals: pd.DataFrame, layers: list[int], gid: str) -> None:
    """Each run's value on its bar: a dot, or a triangle at an end of the alpha_star grid, so
    that a mean of 0 and 2 is never read as a 1."""
    for xi, l in zip(x, layers, strict=True):
        mine = finals[finals["layer"] == l]
        for side, marker in (("", "o"), (ABOVE, "^"), (BELOW, "v")):
            values = mine.loc[mine["censored"] == side, "value"].to_numpy(dtype=float)
            if values.size:
                ax.plot([xi] * values.size, values, ls="none", marker=marker, ms=3.5 if side == "" else 6,
                        color="0.15", mfc="none" if side else "0.15", zorder=4, gid=gid)


def _set_ylim(ax: Axes, finals: pd.DataFrame, tops: list[float], metric: str, label_px: float,
              axes_px: float, kind: str | None) -> None:
    """Room above the highest bar for its label; correlations on 0..1 (or -1..1), alpha_star
    on 0..2 (with the ansatz's 0.5 dotted where it applies), weight_change from 0."""
    values = finals["value"].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    low = min(0.0, float(finite.min()) if finite.size else 0.0)
    if is_alpha_star(metric):
        low -= 0.05  # room for the triangles of runs at the grid's bottom
    top = metric_limits(metric, values)[1] or 0.0
    high = max([t for t in tops if np.isfinite(t)] + [top])
    if ansatz_applies(metric, kind):
        ax.axhline(ALPHA_ANSATZ, color="0.3", ls=":", lw=1.3, zorder=1, gid=ANSATZ_GID)
    high = high if high > low else low + 1.0
    share = min(0.5, (label_px + 10) / axes_px)  # of the axes' height kept free above
    ax.set_ylim(low, low + (high - low) / (1 - share))


def final_correlation_figure(df: pd.DataFrame, groups: Groups, metric: str,
                             kind: str | None = None) -> Figure:
    """Grouped bars: per layer, ``metric`` at each run's last analysed epoch, one bar per group
    (mean over its runs; whiskers: min-max); the legend below. For an alpha_star each run's
    value is marked on its bar, values at the grid's ends as triangles, and the label says
    when a mean includes them; ``kind``: the NFM and correlation kind of plain alpha_star."""
    finals = final_values(df, metric)
    partner = companion(metric)
    partners = final_values(df, partner) if partner is not None else None
    alpha = is_alpha_star(metric)
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
        runs = groups.members[g]
        mean, err, present = _bar_stats(finals, runs, layers)
        x = np.arange(len(layers)) + (i - (n - 1) / 2) * width
        mine = finals[finals["run"].isin(runs)]
        # A bar whose mean includes a censored alpha_star is hatched: its height is a bound.
        hatch = ["//" if alpha and (mine.loc[mine["layer"] == l, "censored"] != "").any() else None
                 for l in layers]
        bars = ax.bar(x, np.nan_to_num(mean), width * 0.92, yerr=err, capsize=3 if not turned else 1.5,
                      color=groups.colors[g], label=groups.legend_label(g), gid=group_gid(g),
                      error_kw={"elinewidth": 1, "ecolor": "0.25", "gid": group_gid(g)})
        for patch, h, l in zip(bars.patches, hatch, layers, strict=True):
            if h:
                patch.set_hatch(h)
                patch.set_edgecolor("0.2")
            if alpha and {ABOVE, BELOW} <= set(mine.loc[mine["layer"] == l, "censored"]):
                patch.set_visible(False)  # runs at both ends: the mean bounds nothing
        top = mean if err is None else mean + err[1]
        tops += list(top[present])
        if alpha:
            _run_points(ax, x, mine, layers, group_gid(g))
        if labelled:
            theirs = None if partners is None or turned else partners[partners["run"].isin(runs)]
            texts = [_bar_text(mine[mine["layer"] == l], None if theirs is None else
                               theirs.loc[theirs["layer"] == l, "value"], alpha) for l in layers]
            _label_bars(ax, x, texts, top, present, turned)
    ax.set_xticks(np.arange(len(layers)), [f"layer {l}" for l in layers])
    ax.set_ylabel(metric_label(metric, kind))
    two_lines = alpha and partners is not None and not turned
    label_px = (LABEL_PX[turned] + (12 if two_lines else 0)) if labelled else 0
    _set_ylim(ax, finals, tops, metric, label_px, (HEIGHT - 1.2) * DPI, kind)
    ax.grid(axis="y", alpha=0.25)
    handles = [Patch(color=groups.colors[g], label=wrap(groups.legend_label(g))) for g in groups.order]
    handles += [alpha_handle()] if ansatz_applies(metric, kind) else []
    censored = alpha and bool((finals["censored"] != "").any())
    handles += [censored_handle()] if censored else []
    title = "bars: mean over runs; whiskers: min-max"
    if alpha:
        title += "; points: each run" + ("; in parentheses: the correlation at alpha*" if two_lines else "")
        title += ("; hatched: the mean includes an alpha* at an end of the grid, so it is only a bound "
                  "(\u2265 m, \u2264 m); no bar: runs at both ends (\u2264 0 & \u2265 2)") if censored else ""
    legend_below(fig, handles, title=wrap(title, 90))
    epochs = sorted(set(finals["epoch"].astype(int)))
    at = f"epoch {epochs[0]}" if len(epochs) == 1 else "each run's last analysed epoch"
    fig.suptitle(f"{metric} at {at}", fontsize=13)
    return fig
