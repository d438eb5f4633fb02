"""sweep_<key>: against a numeric swept key (``--x optimizer.lr``), the final value of the
metric per layer (one panel per layer) and the final val accuracy (one more panel); one line
per group of the aggregate's other figures with the key itself left out of the grouping (the
``--by`` value and every other setting that splits lines, so a line never mixes optimizers),
the mean over its runs (seeds) with a min-max band."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from agop_sweep.aggregate.discover import AggregateError, Run
from agop_sweep.aggregate.groups import Groups, group_gid
from agop_sweep.aggregate.layout import grid_figure, layers_of, legend_below, wrap
from agop_sweep.aggregate.tables import final_values
from agop_sweep.figures.style import (
    alpha_handle,
    ansatz_applies,
    apply_metric_limits,
    censored_handle,
    is_alpha_star,
    mark_censored,
    metric_label,
)

LOG_SPAN = 10.0  # a log x axis when the values span more than this factor


def figure_name(key: str) -> str:
    return f"sweep_{key}"


def x_values(runs: Sequence[Run], key: str) -> dict[str, float]:
    """Per run that has ``key``, its (numeric) value. Raises AggregateError when no run has
    it or a value is not a number."""
    values = {r.name: r.setting(key) for r in runs}
    present = {n: v for n, v in values.items() if v is not None}
    if not present:
        raise AggregateError(f"--x {key} is not a setting of these runs")
    bad = sorted({str(v) for v in present.values()
                  if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v)})
    if bad:
        raise AggregateError(f"--x {key} is not numeric in these runs (values: {', '.join(bad[:5])})")
    return {n: float(v) for n, v in present.items()}


def _stats(points: pd.DataFrame) -> pd.DataFrame:
    """Per line and x: mean, min and max of ``value`` over the runs, x in numeric order."""
    stats = points.groupby(["line", "x"])["value"].agg(["mean", "min", "max", "size"]).reset_index()
    return stats.sort_values(["line", "x"], kind="stable")


def _panel(ax: Axes, stats: pd.DataFrame, groups: Groups, censored: pd.DataFrame | None = None) -> None:
    for line in groups.order:
        mine = stats[(stats["line"] == line) & stats["mean"].notna()]
        if mine.empty:
            continue
        x = mine["x"].to_numpy(dtype=float)
        color, gid = groups.colors[line], group_gid(line)
        ax.plot(x, mine["mean"], color=color, marker=groups.marker(line), ms=4, lw=1.6, label=line, gid=gid)
        if (mine["size"] > 1).any():
            ax.fill_between(x, mine["min"], mine["max"], color=color, alpha=0.18, lw=0, gid=gid)
        if censored is not None:  # the runs' own values at each x, for the triangles
            runs = censored[censored["line"] == line]
            values = [runs.loc[runs["x"] == xi, "value"].to_numpy(dtype=float) for xi in x]
            width = max((len(v) for v in values), default=0)
            padded = np.array([np.pad(v, (0, width - len(v)), constant_values=np.nan) for v in values])
            mark_censored(ax, x, mine["mean"].to_numpy(dtype=float), padded, color, gid)


def _points(runs: dict[str, float], lines: dict[str, str], values: pd.DataFrame) -> pd.DataFrame:
    """Rows line, x, value of the runs that have an x value."""
    values = values[values["run"].isin(runs)]
    return pd.DataFrame({"line": values["run"].map(lines), "x": values["run"].map(runs),
                         "value": values["value"].to_numpy(dtype=float)})


def sweep_figure(df: pd.DataFrame, table: pd.DataFrame, xs: dict[str, float], metric: str, groups: Groups,
                 key: str, kind: str | None = None) -> Figure:
    """One panel per layer (the final ``metric``) and one for the final val accuracy, against
    ``key`` (``xs``: per run); one line per group (``groups``: made with ``key`` left out)."""
    lines = {r: g for g in groups.order for r in groups.members[g]}
    finals = final_values(df, metric)
    layers = layers_of(finals)
    fig, axes = grid_figure(len(layers) + 1)
    x_all = np.array(sorted(set(xs.values())))
    log_x = bool(x_all.size) and x_all.min() > 0 and x_all.max() / x_all.min() > LOG_SPAN
    alpha = is_alpha_star(metric) and bool((finals["censored"] != "").any())
    for ax, l in zip(axes, layers, strict=False):
        points = _points(xs, lines, finals[finals["layer"] == l])
        _panel(ax, _stats(points), groups, points if alpha else None)
        apply_metric_limits(ax, metric, finals["value"].to_numpy(dtype=float), kind)
        ax.set_title(f"layer {l}: final {metric}")
        ax.set_ylabel(metric_label(metric, kind))
    acc = table[["run", "final_val_acc"]].rename(columns={"final_val_acc": "value"})
    _panel(axes[-1], _stats(_points(xs, lines, acc)), groups)
    axes[-1].set_title("final val accuracy")
    axes[-1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel(key)
        ax.grid(alpha=0.25)
        if log_x:  # ticks at the swept values, as plain numbers: no crowded minor labels
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(x_all))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    shown = [g for g in groups.order if any(r in xs for r in groups.members[g])]
    handles = [Line2D([], [], color=groups.colors[g], marker=groups.marker(g), ms=4, lw=2,
                      label=wrap(groups.legend_label(g))) for g in shown]
    extra = [alpha_handle()] if ansatz_applies(metric, kind) else []
    extra += [censored_handle()] if alpha else []
    legend_below(fig, [*handles, *extra], title="lines: mean over runs (seeds); band: min-max")
    fig.suptitle(f"final {metric} and val accuracy against {key}", fontsize=13)
    return fig
