"""The shared look of every figure (per run and aggregate) and the helpers that draw it.

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot; :func:`save_figure`
writes it atomically (temporary file, then rename) under :data:`STYLE`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from agop_sweep.atomic import write_atomic
from agop_sweep.nfa import METRICS

DPI = 100
SWITCH_GID = "schedule-switch"
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "figure.titlesize": 13,
    "axes.spines.top": False,
    "pdf.fonttype": 42,  # embedded TrueType: the PDF text stays selectable and editable
}
TRAIN_COLOR, VAL_COLOR, CORR_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c"
SWITCH_COLOR = "0.35"
# Width of one panel, in inches, in the one-panel-per-layer figures.
PANEL_WIDTH = 4.9


@contextlib.contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def save_figure(
    fig: Figure, stem: str | os.PathLike[str], formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf atomically (temporary file, then rename)."""
    paths = []
    with style():
        for fmt in formats:
            path = Path(f"{os.fspath(stem)}.{fmt}")
            write_atomic(path, lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=DPI))
            paths.append(path)
            # The first save placed the axes; the next formats reuse those positions instead of
            # solving the constrained layout again (about half of the drawing time).
            fig.set_layout_engine("none")
    return paths


# -- metrics -------------------------------------------------------------------------------------
# Per-layer keys of a layer entry, besides its ``metrics``, that can be plotted like them.
LAYER_KEYS = ("weight_change", "alpha_star", "alpha_corr")
ALPHA_ANSATZ = 0.5  # the exponent the ansatz predicts (raw NFM ~ AGOP^(1/2))
ALPHA_RANGE = (0.0, 2.0)


def is_correlation(metric: str) -> bool:
    return metric in METRICS or metric == "alpha_corr" or metric.startswith("top_eigvec_cos")


def metric_limits(metric: str, values: np.ndarray) -> tuple[float | None, float | None]:
    """The y range of ``metric``: correlations 0..1 (-1..1 when one is negative), alpha_star
    0..2, weight_change from 0 up; (None, None): automatic."""
    if metric == "alpha_star":
        return ALPHA_RANGE
    if metric == "weight_change":
        return 0.0, None
    if is_correlation(metric):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        return (0.0, 1.0) if not v.size or v.min() >= 0 else (-1.0, 1.0)
    return None, None


def apply_metric_limits(ax: Axes, metric: str, values: np.ndarray) -> None:
    """:func:`metric_limits` on ``ax`` (after drawing: an open end stays automatic), and for
    alpha_star a dotted line at the ansatz's prediction."""
    low, high = metric_limits(metric, values)
    if low is not None:
        ax.set_ylim(bottom=low)
    if high is not None:
        ax.set_ylim(top=high)
    if metric == "alpha_star":
        ax.axhline(ALPHA_ANSATZ, color="0.3", ls=":", lw=1.3, zorder=1)


def alpha_handle() -> Line2D:
    return Line2D([], [], color="0.3", ls=":", lw=1.3, label=f"ansatz: alpha = {ALPHA_ANSATZ:g}")


# -- axes ----------------------------------------------------------------------------------------
def use_log(*series: np.ndarray) -> bool:
    """Log scale when every value is positive and they span more than a factor of 4."""
    v = np.concatenate([np.asarray(s, dtype=float).ravel() for s in series]) if series else np.array([])
    v = v[np.isfinite(v)]
    return bool(v.size) and bool((v > 0).all()) and v.max() / v.min() > 4


def log_axis(ax: Axes) -> None:
    """Log-scale y with plain numbers at 1, 2, 5 x 10^k (0.02, not 2 x 10^-2)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels: one row up to 3, 2 x 2 for 4, then 3 or 4 columns."""
    cols = n if n <= 3 else 2 if n == 4 else 3 if n <= 9 else 4
    return math.ceil(n / cols), cols


def layer_grid(n_layers: int, row_height: float, extra_height: float) -> tuple[Figure, list[Axes], Axes]:
    """A figure with one panel per layer and one more after them (an overview or a legend),
    on :func:`grid_shape`'s grid; the grid's remaining panels are hidden.

    Returns the figure, the layer panels and the extra panel.
    """
    rows, cols = grid_shape(n_layers + 1)
    fig = Figure(figsize=(PANEL_WIDTH * cols, row_height * rows + extra_height), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_layers + 1:]:
        ax.set_visible(False)
    return fig, list(axes[:n_layers]), axes[n_layers]


def layer_colors(n_layers: int) -> np.ndarray:
    """One colour per layer, dark (layer 0) to light."""
    return matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(n_layers, 1)))


# -- the schedule switch -----------------------------------------------------------------------
def schedule_switch(checkpoints: Sequence[int] | None) -> int | None:
    """The last epoch of the initial every-epoch stretch 0, 1, ..., k of the analysis schedule,
    when sparser checkpoints follow it; None for a uniform schedule."""
    if not checkpoints:
        return None
    eps = sorted({int(e) for e in checkpoints})
    k = 0
    while k + 1 < len(eps) and eps[k + 1] == eps[k] + 1:
        k += 1
    if k == 0 or k == len(eps) - 1:  # no every-epoch stretch, or nothing after it
        return None
    return eps[k]


def draw_switch(ax: Axes, epoch: int | None, label: bool = True) -> None:
    """The dashed vertical line where analysis goes from every epoch to milestones."""
    if epoch is None:
        return
    ax.axvline(epoch, color=SWITCH_COLOR, linestyle="--", linewidth=1.1, gid=SWITCH_GID, zorder=1)
    if label:
        ax.text(epoch, 0.99, " milestones \u2192", transform=ax.get_xaxis_transform(), ha="left",
                va="top", fontsize=8, color="0.3", gid=SWITCH_GID)


def switch_handle(epoch: int) -> Line2D:
    """The legend entry of :func:`draw_switch`'s line."""
    return Line2D([], [], color=SWITCH_COLOR, ls="--", lw=1.1,
                  label=f"analysis every epoch up to {epoch}, then milestones")


# -- images --------------------------------------------------------------------------------------
def show_image(ax: Axes, image: np.ndarray, signed: bool, title: str | None = None) -> None:
    """One image at its own colour scale (magnitudes differ by orders between matrices);
    signed images use a diverging map centred at 0."""
    finite = image[np.isfinite(image)]
    if signed:
        m = float(np.abs(finite).max()) if finite.size else 1.0
        ax.imshow(image, cmap="RdBu_r", vmin=-m or -1, vmax=m or 1, interpolation="nearest")
    else:
        ax.imshow(image, cmap="magma", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def blank_panel(ax: Axes, text: str, shape: tuple[int, ...] | None = None) -> None:
    """An empty panel with a note; with ``shape``, as large as the images beside it."""
    if shape is not None:
        ax.imshow(np.zeros(shape), cmap="Greys", vmin=0, vmax=1)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
