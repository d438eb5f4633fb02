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
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from agop_sweep.analyze.names import ALPHAS, CORR_KINDS, METRICS, NFM_KINDS, metric_kinds
from agop_sweep.store.atomic import write_atomic

if TYPE_CHECKING:
    from agop_sweep.store.record import RunRecord

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
ALPHA_ANSATZ = 0.5  # the exponent the ansatz predicts, for the raw NFM: W^T W ~ AGOP^(1/2)
ALPHA_RANGE = (ALPHAS[0], ALPHAS[-1])  # the grid alpha_star searches; its ends are censored
EDGE_TOLERANCE = 1e-9
# The NFM and correlation kinds an exponent is for (a layer entry's ``alphas`` keys), and the
# per-kind names that can be plotted: alpha_star_<kind>, alpha_corr_<kind>.
ALPHA_KINDS = tuple(f"{n}_{c}" for n in NFM_KINDS for c in CORR_KINDS)
ALPHA_KEYS = tuple(f"alpha_{part}_{kind}" for kind in ALPHA_KINDS for part in ("star", "corr"))
NFM_TEXT = {"raw": "raw NFM W\u1d40W", "delta": "delta NFM"}
CORR_TEXT = {"cos": "cosine", "pearson": "Pearson"}
ABOVE, BELOW = "above", "below"  # a censored alpha_star: the best exponent may lie past the grid


def alpha_parts(metric: str) -> tuple[str, str | None] | None:
    """``("star" | "corr", kind or None)`` of an exponent metric (``alpha_star`` -> ("star",
    None), ``alpha_corr_raw_cos`` -> ("corr", "raw_cos")); None for any other metric."""
    for part in ("star", "corr"):
        name = f"alpha_{part}"
        if metric == name:
            return part, None
        if metric.startswith(name + "_") and metric[len(name) + 1:] in ALPHA_KINDS:
            return part, metric[len(name) + 1:]
    return None


def is_alpha_star(metric: str) -> bool:
    return (alpha_parts(metric) or ("", None))[0] == "star"


def primary_kind(primary: str) -> str | None:
    """The NFM and correlation kind (``delta_cos``) of a correlation variant, whose
    ``alpha_star`` a run records; None for a name that is not one."""
    return "_".join(metric_kinds(primary)) if primary in METRICS else None


def metric_kind(metric: str, kind: str | None = None) -> str | None:
    """The kind an exponent metric is for: in its name, else ``kind`` (that of the runs'
    ``analysis.primary`` for plain ``alpha_star``/``alpha_corr``)."""
    parts = alpha_parts(metric)
    return None if parts is None else parts[1] or kind


def kind_text(kind: str | None) -> str:
    """``delta NFM, cosine`` for ``delta_cos``; ``kind unknown`` for None (runs that differ)."""
    if kind is None:
        return "NFM and correlation of each run's analysis.primary"
    nfm, corr = kind.split("_")
    return f"{NFM_TEXT[nfm]}, {CORR_TEXT[corr]}"


def metric_label(metric: str, kind: str | None = None) -> str:
    """An axis label that says which NFM and correlation an exponent is for."""
    parts = alpha_parts(metric)
    if parts is None:
        return metric
    name = "alpha*" if parts[0] == "star" else "corr at alpha*"
    return f"{name} ({kind_text(metric_kind(metric, kind))})"


def ansatz_applies(metric: str, kind: str | None = None) -> bool:
    """The ansatz's 1/2 is a prediction for the raw NFM's exponent only."""
    found = metric_kind(metric, kind)
    return is_alpha_star(metric) and found is not None and found.startswith("raw_")


def companion(metric: str) -> str | None:
    """The alpha_corr that goes with an alpha_star metric (the correlation at that exponent)."""
    parts = alpha_parts(metric)
    if parts is None or parts[0] != "star":
        return None
    return "alpha_corr" + ("" if parts[1] is None else f"_{parts[1]}")


def edge(value: float) -> str:
    """:data:`ABOVE` for an alpha_star at the grid's top (the best exponent may be larger),
    :data:`BELOW` at its bottom, "" inside the grid or for a missing value."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    if value >= ALPHA_RANGE[1] - EDGE_TOLERANCE:
        return ABOVE
    if value <= ALPHA_RANGE[0] + EDGE_TOLERANCE:
        return BELOW
    return ""


def alpha_text(value: float, spec: str = ".2f") -> str:
    """An alpha_star as a reader should see it: ``\u2265 2`` and ``\u2264 0`` at the grid's ends."""
    side = edge(value)
    if side == ABOVE:
        return f"\u2265 {ALPHA_RANGE[1]:g}"
    if side == BELOW:
        return f"\u2264 {ALPHA_RANGE[0]:g}"
    return format(value, spec)


def alpha_mean_text(values: Sequence[float], spec: str = ".2f") -> str:
    """The mean of alpha_star values as far as censored ones allow: the mean when none is at
    an end of the grid; ``\u2265 2`` when all sit at the top; ``\u2265 m`` when some do (values
    at the top may be larger, so the mean is a lower bound), ``\u2264 m`` likewise at the
    bottom; ``\u2264 0 & \u2265 2`` (no bound at all) when runs sit at both ends."""
    v = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    if not v:
        return "n/a"
    sides = {edge(x) for x in v}
    mean = sum(v) / len(v)
    if sides == {ABOVE} or sides == {BELOW}:
        return alpha_text(v[0])
    if {ABOVE, BELOW} <= sides:
        return f"{alpha_text(ALPHA_RANGE[0])} & {alpha_text(ALPHA_RANGE[1])}"
    if ABOVE in sides:
        return f"\u2265 {mean:{spec}}"
    if BELOW in sides:
        return f"\u2264 {mean:{spec}}"
    return format(mean, spec)


def is_correlation(metric: str) -> bool:
    return metric in METRICS or (alpha_parts(metric) or ("", None))[0] == "corr" \
        or metric.startswith("top_eigvec_cos")


def metric_limits(metric: str, values: np.ndarray) -> tuple[float | None, float | None]:
    """The y range of ``metric``: correlations 0..1 (-1..1 when one is negative), alpha_star
    0..2, weight_change from 0 up; (None, None): automatic."""
    if is_alpha_star(metric):
        return ALPHA_RANGE
    if metric == "weight_change":
        return 0.0, None
    if is_correlation(metric):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        return (0.0, 1.0) if not v.size or v.min() >= 0 else (-1.0, 1.0)
    return None, None


def apply_metric_limits(ax: Axes, metric: str, values: np.ndarray, kind: str | None = None) -> None:
    """:func:`metric_limits` on ``ax`` (after drawing: an open end stays automatic), and a
    dotted line at the ansatz's 1/2 where it applies (an exponent for the raw NFM; ``kind``:
    that of plain ``alpha_star``)."""
    low, high = metric_limits(metric, values)
    if is_alpha_star(metric):  # a little room, so that values at the grid's ends stay visible
        low, high = low - 0.05, high + 0.05
    if low is not None:
        ax.set_ylim(bottom=low)
    if high is not None:
        ax.set_ylim(top=high)
    if ansatz_applies(metric, kind):
        ax.axhline(ALPHA_ANSATZ, color="0.3", ls=":", lw=1.3, zorder=1, gid=ANSATZ_GID)


ANSATZ_GID = "ansatz"


def alpha_handle() -> Line2D:
    return Line2D([], [], color="0.3", ls=":", lw=1.3,
                  label=f"ansatz: alpha = {ALPHA_ANSATZ:g} (for the raw NFM W\u1d40W)")


def censored_handle() -> Line2D:
    return Line2D([], [], color="0.3", marker="^", mfc="none", ms=7, ls="none",
                  label=f"\u25b2/\u25bc: includes alpha* at the grid's end (\u2265 {ALPHA_RANGE[1]:g} "
                        f"/ \u2264 {ALPHA_RANGE[0]:g}: censored, the best exponent may lie beyond)")


def _sides(runs: np.ndarray) -> list[set[str]]:
    """Per row of alpha_star values, the ends of the grid its values sit at."""
    return [{edge(v) for v in row} - {""} for row in runs]


def both_ends(runs: np.ndarray) -> np.ndarray:
    """Per row of alpha_star values (n, k): whether some sit at the grid's top and some at its
    bottom, so that their mean bounds nothing (a line leaves such points out)."""
    runs = np.asarray(runs, dtype=float).reshape(len(runs), -1)
    return np.array([{ABOVE, BELOW} <= sides for sides in _sides(runs)], dtype=bool)


def mark_censored(ax: Axes, x: np.ndarray, y: np.ndarray, runs: np.ndarray, color: Any,
                  gid: str | None = None) -> bool:
    """Hollow triangles where the runs' alpha_star values (``runs``: (n, k), one row per
    point ``(x, y)``) include one at the grid's top (up) or bottom (down): at the point, whose
    mean is then only a bound, or at the grid's ends when values sit at both (no mean is
    drawn there). Whether any was drawn."""
    runs = np.asarray(runs, dtype=float).reshape(len(x), -1)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    sides = _sides(runs)
    drawn = False
    for side, marker, end in ((ABOVE, "^", ALPHA_RANGE[1]), (BELOW, "v", ALPHA_RANGE[0])):
        hit = np.array([side in s for s in sides], dtype=bool)
        if not hit.any():
            continue
        both = np.array([{ABOVE, BELOW} <= s for s in sides], dtype=bool)
        at = np.where(both, end, y)
        ax.plot(x[hit], at[hit], ls="none", marker=marker, ms=8, mfc="none", mec=color, mew=1.4, zorder=4,
                gid=gid, clip_on=False)
        drawn = True
    return drawn


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


def epoch_ticks(ax: Axes) -> None:
    """Whole epochs only on the x axis (a 3-epoch run gets no 0.5, 2.5)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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
def show_image(ax: Axes, image: np.ndarray, signed: bool, title: str | None = None,
               colorbar: bool = True) -> None:
    """One image at its own colour scale (magnitudes differ by orders between matrices), with
    a slim colour bar that gives that scale; signed images use a diverging map centred at 0."""
    finite = image[np.isfinite(image)]
    if signed:
        m = float(np.abs(finite).max()) if finite.size else 1.0
        shown = ax.imshow(image, cmap="RdBu_r", vmin=-m or -1, vmax=m or 1, interpolation="nearest")
    else:
        shown = ax.imshow(image, cmap="magma", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if colorbar:
        bar = ax.get_figure().colorbar(shown, ax=ax, fraction=0.046, pad=0.03, aspect=15)
        bar.ax.yaxis.set_major_locator(MaxNLocator(3))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
        bar.ax.tick_params(labelsize=7, length=2, pad=1)
        bar.outline.set_linewidth(0.5)


def blank_panel(ax: Axes, text: str, shape: tuple[int, ...] | None = None) -> None:
    """An empty panel with a note; with ``shape``, as large as the images beside it."""
    if shape is not None:
        ax.imshow(np.zeros(shape), cmap="Greys", vmin=0, vmax=1)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# -- reading a record ----------------------------------------------------------------------------
def layer_values(record: RunRecord, metric: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Analysed epochs (A,) and ``metric`` per layer (A, L): a correlation variant, a layer key
    (alpha_star, ...), a per-kind exponent (``alpha_star_raw_cos``, from the layer entries'
    ``alphas``), or None: the primary."""
    parts = None if metric is None else alpha_parts(metric)
    if parts is not None and parts[1] is not None:
        return record.layer_field(f"alphas.{parts[1]}.alpha_{parts[0]}")
    return record.layer_metric(metric)


def alpha_keys_of(record: RunRecord) -> list[str]:
    """The per-kind exponent names (:data:`ALPHA_KEYS`) that the record's layers hold."""
    kinds = {k for _, entry in record.layer_entries()
             if isinstance(entry.get("alphas"), dict) for k in entry["alphas"]}
    return [key for key in ALPHA_KEYS if alpha_parts(key)[1] in kinds]  # type: ignore[index]
