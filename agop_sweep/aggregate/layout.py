"""Sizes and legends of the aggregate figures, so that a mixed set of runs stays readable.

A figure's size follows its panels (layers, loss functions) and its lines: panels keep their
size however many lines there are, and the legend sits below the panels, outside them, in as
many columns as the figure's width holds. The figure widens (up to :data:`MAX_WIDTH`) rather
than stack more than :data:`MAX_ROWS` rows; labels longer than :data:`WRAP` characters wrap.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.lines import Line2D

from agop_sweep.aggregate.groups import Groups
from agop_sweep.figures.style import DPI, PANEL_WIDTH, grid_shape, is_correlation

__all__ = ["grid_figure", "group_handles", "is_correlation", "layers_of", "legend_below", "new_figure",
           "panel_grid", "wrap"]

LEGEND_TITLE = "lines: mean over runs; band: min-max"
WRAP = 56  # characters per line of a legend label
MAX_ROWS = 10  # legend rows before the figure widens
MAX_WIDTH = 18.0  # inches
MAX_COLUMNS = 8
PANEL_HEIGHT = 3.2  # inches, of a panel with an epoch axis
TITLE_HEIGHT = 0.5  # inches, for the figure's title


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure with an Agg canvas (its renderer measures text)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def wrap(text: str, width: int = WRAP) -> str:
    """``text`` broken at spaces into lines of at most ``width`` characters (a longer word
    stays whole)."""
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def layers_of(df: pd.DataFrame) -> list[int]:
    return sorted(int(v) for v in df["layer"].dropna().unique())


def group_handles(groups: Groups, marker: bool = True) -> list[Line2D]:
    """One legend entry per line: its colour (and marker), its label with its runs' note."""
    return [Line2D([], [], color=groups.colors[g], lw=2, marker=groups.marker(g) if marker else None, ms=4,
                   label=wrap(groups.legend_label(g))) for g in groups.order]


def panel_grid(fig: Figure, n: int, shape: tuple[int, int] | None = None) -> list[Any]:
    """``n`` panels on a ``shape`` grid (default :func:`grid_shape`'s); its other cells stay empty."""
    rows, cols = shape or grid_shape(n)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    return list(axes[:n])


def grid_figure(n_panels: int, panel_width: float = PANEL_WIDTH, panel_height: float = PANEL_HEIGHT,
                shape: tuple[int, int] | None = None) -> tuple[Figure, list[Any]]:
    """A figure of ``n_panels`` panels of the given size (inches) on a ``shape`` grid, room for
    a title above; the legend adds its own height (:func:`legend_below`)."""
    rows, cols = shape or grid_shape(n_panels)
    fig = new_figure(panel_width * cols, panel_height * rows + TITLE_HEIGHT)
    return fig, panel_grid(fig, n_panels, (rows, cols))


def _legend(fig: Figure, handles: Sequence[Any], title: str | None, ncols: int) -> Legend:
    return fig.legend(handles=list(handles), loc="outside lower center", ncols=ncols, frameon=False,
                      fontsize=9, title=title, title_fontsize=9, alignment="left")


def _fitting_legend(fig: Figure, handles: Sequence[Any], title: str | None) -> tuple[Legend, float, int]:
    """The legend with the most columns (balanced over its rows) that fits the figure's
    width, its height in pixels and its number of columns."""
    renderer = fig.canvas.get_renderer()
    room = fig.get_figwidth() * DPI - 20
    n = max(len(handles), 1)
    for most in range(min(n, MAX_COLUMNS), 0, -1):
        ncols = math.ceil(n / math.ceil(n / most))  # as many rows, balanced
        legend = _legend(fig, handles, title, ncols)
        box = legend.get_window_extent(renderer)
        if box.width <= room or ncols == 1:
            return legend, box.height, ncols
        legend.remove()
    raise AssertionError("unreachable: one column always returns")


def legend_below(fig: Figure, handles: Sequence[Any], title: str | None = LEGEND_TITLE) -> Legend:
    """The figure's legend below its panels, outside them; the figure grows by its height
    (and widens, up to :data:`MAX_WIDTH`, rather than stack more than :data:`MAX_ROWS` rows)."""
    height = fig.get_figheight()
    legend, px, ncols = _fitting_legend(fig, handles, title)
    if math.ceil(len(handles) / ncols) > MAX_ROWS and fig.get_figwidth() < MAX_WIDTH:
        column = legend.get_window_extent(fig.canvas.get_renderer()).width / ncols
        wanted = math.ceil(len(handles) / MAX_ROWS) * column / DPI + 0.4
        legend.remove()
        fig.set_figwidth(min(MAX_WIDTH, max(fig.get_figwidth(), wanted)))
        legend, px, ncols = _fitting_legend(fig, handles, title)
    fig.set_figheight(height + px / DPI + 0.15)
    return legend
