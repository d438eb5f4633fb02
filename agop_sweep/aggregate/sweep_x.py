"""sweep_<key>: against a numeric swept key (``--x optimizer.lr``), the final value of the
metric per layer (one panel per layer) and the final val accuracy (one more panel); one line
per value of the ``--by`` column, the mean over its runs (seeds) with a min-max band."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from agop_sweep.aggregate.discover import AggregateError, Run, value_key
from agop_sweep.aggregate.layout import grid_figure, layers_of, legend_below
from agop_sweep.aggregate.tables import final_values
from agop_sweep.figures.style import alpha_handle, apply_metric_limits

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


def _panel(ax: Axes, stats: pd.DataFrame, colors: dict[str, str], lines: list[str]) -> None:
    for line in lines:
        mine = stats[(stats["line"] == line) & stats["mean"].notna()]
        if mine.empty:
            continue
        x = mine["x"].to_numpy(dtype=float)
        ax.plot(x, mine["mean"], color=colors[line], marker="o", ms=4, lw=1.6, label=line)
        if (mine["size"] > 1).any():
            ax.fill_between(x, mine["min"], mine["max"], color=colors[line], alpha=0.18, lw=0)


def _points(runs: dict[str, float], lines: dict[str, str], values: pd.DataFrame) -> pd.DataFrame:
    """Rows line, x, value of the runs that have an x value."""
    values = values[values["run"].isin(runs)]
    return pd.DataFrame({"line": values["run"].map(lines), "x": values["run"].map(runs),
                         "value": values["value"].to_numpy(dtype=float)})


def sweep_figure(df: pd.DataFrame, table: pd.DataFrame, xs: dict[str, float], metric: str, by: str,
                 key: str) -> Figure:
    """One panel per layer (the final ``metric``) and one for the final val accuracy, against
    ``key`` (``xs``: per run); one line per ``by`` value."""
    lines = {r: str(v) for r, v in zip(table["run"], table[by], strict=True)}
    order = sorted(dict.fromkeys(lines[r] for r in xs), key=value_key)
    colors = {line: f"C{i % 10}" for i, line in enumerate(order)}
    finals = final_values(df, metric)
    layers = layers_of(finals)
    fig, axes = grid_figure(len(layers) + 1)
    x_all = np.array(sorted(set(xs.values())))
    log_x = bool(x_all.size) and x_all.min() > 0 and x_all.max() / x_all.min() > LOG_SPAN
    for ax, l in zip(axes, layers, strict=False):
        _panel(ax, _stats(_points(xs, lines, finals[finals["layer"] == l])), colors, order)
        apply_metric_limits(ax, metric, finals["value"].to_numpy(dtype=float))
        ax.set_title(f"layer {l}: final {metric}")
        ax.set_ylabel(metric)
    acc = table[["run", "final_val_acc"]].rename(columns={"final_val_acc": "value"})
    _panel(axes[-1], _stats(_points(xs, lines, acc)), colors, order)
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
    handles = [Line2D([], [], color=colors[g], marker="o", ms=4, lw=2, label=f"{by}={g}") for g in order]
    legend_below(fig, [*handles, *([alpha_handle()] if metric == "alpha_star" else [])],
                 title="lines: mean over runs (seeds); band: min-max")
    fig.suptitle(f"final {metric} and val accuracy against {key}", fontsize=13)
    return fig
