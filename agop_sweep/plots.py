"""Per-run figures: plots/training_analysis.{png,pdf} and plots/features.{png,pdf}.

Every figure is built by a function that returns a :class:`matplotlib.figure.Figure`
(no pyplot: no global state, safe in worker processes), so tests inspect the objects and
:func:`save_figure` writes the files atomically. Redraw a run's figures by hand with

    python -m agop_sweep.plots RUN_DIR [--per-channel]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from agop_sweep.atomic import write_atomic
from agop_sweep.features import FILENAME as FEATURES_FILE
from agop_sweep.features import load_features, nearest_epochs, orient, to_image

if TYPE_CHECKING:
    from agop_sweep.features import FeatureLog

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
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
# Epochs whose layer-0 features the per-run figure shows; the middle one is the schedule
# switch when there is one (epoch 20 in the paper's schedule).
FEATURE_EPOCH_DEFAULT_MIDDLE = 20


@contextlib.contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


# -- helpers shared with the aggregate -----------------------------------------------------
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
    ax.axvline(epoch, color="0.35", linestyle="--", linewidth=1.1, gid=SWITCH_GID, zorder=1)
    if label:
        ax.text(epoch, 0.99, " milestones \u2192", transform=ax.get_xaxis_transform(), ha="left",
                va="top", fontsize=8, color="0.3", gid=SWITCH_GID)


def values(records: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """``key`` of every record as floats, NaN where missing or null."""
    out = np.full(len(records), np.nan)
    for i, r in enumerate(records):
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[i] = v
    return out


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


def run_title(results: dict[str, Any]) -> str:
    r = results.get("run", {})
    lr = r.get("lr")
    lr_text = f"{lr:g}" if isinstance(lr, (int, float)) else "?"
    return (f"{r.get('optimizer', '?')}  lr={lr_text}  \u00b7  {r.get('dataset', '?')}  \u00b7  "
            f"width {r.get('width', '?')}  \u00b7  depth {r.get('depth', '?')}")


def primary_metric(results: dict[str, Any]) -> str:
    analysis = (results.get("config") or {}).get("analysis") or {}
    return str(analysis.get("primary", "delta_cos_agop"))


def checkpoints_of(results: dict[str, Any]) -> list[int] | None:
    schedule = (results.get("config") or {}).get("schedule") or {}
    return schedule.get("checkpoints")


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "n/a" if not isinstance(v, (int, float)) or not math.isfinite(v) else format(v, spec)


# -- plots/training_analysis ---------------------------------------------------------------
def layer_correlations(results: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Analysed epochs (A,) and the primary correlation per layer (A, L), NaN where null."""
    analysis = results.get("analysis") or []
    n_layers = max((len(a.get("layers", [])) for a in analysis), default=0)
    epochs = np.array([a["epoch"] for a in analysis], dtype=float)
    corr = np.full((len(analysis), n_layers), np.nan)
    for i, a in enumerate(analysis):
        for entry in a.get("layers", []):
            v = entry.get("corr")
            if isinstance(v, (int, float)) and math.isfinite(v):
                corr[i, entry["layer"]] = v
    return epochs, corr


def _corr_limits(corr: np.ndarray) -> tuple[float, float]:
    """0 to 1, the range of every cosine between PSD matrices; a Pearson variant may dip below."""
    low = np.nanmin(corr) if np.isfinite(corr).any() else 0.0
    return (0.0, 1.0) if low >= 0 else (-1.0, 1.0)


def training_analysis_figure(results: dict[str, Any]) -> Figure:
    """One panel per analysed layer (losses left, primary correlation right) plus an
    overview panel with every layer's correlation; the title names the run."""
    epochs_rec = sorted(results.get("epochs") or [], key=lambda e: e["epoch"])
    ep = np.array([e["epoch"] for e in epochs_rec], dtype=float)
    train, val = values(epochs_rec, "train_loss"), values(epochs_rec, "val_loss")
    an_epochs, corr = layer_correlations(results)
    if not corr.size:  # nothing analysed (yet, or analysis=off): panels with the losses only
        corr = np.full((len(an_epochs), int(results.get("run", {}).get("depth") or 0)), np.nan)
    n_layers = corr.shape[1]
    metric = primary_metric(results)
    switch = schedule_switch(checkpoints_of(results))
    log_loss = use_log(train, val)
    ylim = _corr_limits(corr)
    last_epoch = (results.get("config") or {}).get("schedule", {}).get("epochs")
    xmax = max([*ep.tolist(), *an_epochs.tolist(), float(last_epoch or 0), 1.0])

    rows, cols = grid_shape(n_layers + 1)
    fig = Figure(figsize=(4.9 * cols, 3.5 * rows + 1.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    layer_colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(n_layers, 1)))
    for l in range(n_layers):
        ax = axes[l]
        ax.plot(ep, train, color=TRAIN_COLOR, lw=1.6, label="train loss")
        if np.isfinite(val).any():
            ax.plot(ep, val, color=VAL_COLOR, lw=1.6, ls="-.", label="val loss")
        if log_loss:
            log_axis(ax)
        ax.set_xlim(-0.02 * xmax, 1.02 * xmax)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss" + (" (log)" if log_loss else ""))
        ax.set_title(f"layer {l}" + (f"  {tuple(_shape(results, l))}" if _shape(results, l) else ""))
        ax.grid(alpha=0.25)
        rax = ax.twinx()
        rax.plot(an_epochs, corr[:, l], color=CORR_COLOR, marker="o", ms=4, lw=1.4, label=metric)
        rax.set_ylim(*ylim)
        rax.set_ylabel(metric, color=CORR_COLOR)
        rax.tick_params(axis="y", colors=CORR_COLOR)
        rax.spines["right"].set_color(CORR_COLOR)
        draw_switch(ax, switch)
        _mark_divergence(ax, results)

    # The overview panel: every layer's correlation on one axis, plus the shared legend.
    ov = axes[n_layers]
    for l in range(n_layers):
        ov.plot(an_epochs, corr[:, l], color=layer_colors[l], marker="o", ms=3.5, lw=1.4, label=f"layer {l}")
    ov.set_ylim(*ylim)
    ov.set_xlim(-0.02 * xmax, 1.02 * xmax)
    ov.set_xlabel("epoch")
    ov.set_ylabel(metric)
    ov.set_title(f"all layers: {metric}")
    ov.grid(alpha=0.25)
    draw_switch(ov, switch, label=False)  # its legend may sit where the label would
    handles = [
        Line2D([], [], color=TRAIN_COLOR, lw=1.6, label="train loss (left axis)"),
        Line2D([], [], color=VAL_COLOR, lw=1.6, ls="-.", label="val loss (left axis)"),
        Line2D([], [], color=CORR_COLOR, marker="o", ms=4, lw=1.4, label=f"{metric} (right axis)"),
    ]
    if switch is not None:
        handles.append(Line2D([], [], color="0.35", ls="--", lw=1.1,
                              label=f"analysis every epoch up to {switch}, then milestones"))
    if n_layers:
        ov.legend(loc="best", ncols=2 if n_layers > 4 else 1, frameon=True, framealpha=0.85)
    for ax in axes[n_layers + 1:]:
        ax.set_visible(False)
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(run_title(results) + "\n" + _run_subtitle(results, metric), fontsize=12)
    return fig


def _shape(results: dict[str, Any], layer: int) -> list[int] | None:
    for a in results.get("analysis") or []:
        for entry in a.get("layers", []):
            if entry.get("layer") == layer and entry.get("shape"):
                return entry["shape"]
    return None


def _run_subtitle(results: dict[str, Any], metric: str) -> str:
    r = results.get("run", {})
    epochs = results.get("epochs") or []
    last = max(epochs, key=lambda e: e["epoch"]) if epochs else {}
    status = results.get("status", "?")
    if status == "diverged" and "diverged_epoch" in results:
        status += f" at epoch {results['diverged_epoch']}"
    parts = [f"seed {r.get('seed', '?')}", status]
    if last:
        parts.append(f"epoch {last['epoch']}: train acc {_fmt(last.get('train_acc'))}, "
                     f"val acc {_fmt(last.get('val_acc'))}")
    parts.append(f"correlation = {metric}")
    return "  \u00b7  ".join(parts)


def _mark_divergence(ax: Axes, results: dict[str, Any]) -> None:
    if results.get("status") == "diverged" and isinstance(results.get("diverged_epoch"), int):
        ax.axvline(results["diverged_epoch"], color="#d62728", ls=":", lw=1.5)
        ax.text(results["diverged_epoch"], 0.02, " diverged", color="#d62728", fontsize=8,
                transform=ax.get_xaxis_transform(), ha="left", va="bottom")


# -- plots/features -------------------------------------------------------------------------
def _show(ax: Axes, image: np.ndarray, signed: bool, title: str | None = None) -> None:
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


def _blank(ax: Axes, text: str, shape: tuple[int, int] | None = None) -> None:
    """An empty panel with a note; with ``shape``, as large as the images beside it."""
    if shape is not None:
        ax.imshow(np.zeros(shape), cmap="Greys", vmin=0, vmax=1)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def feature_epochs(results: dict[str, Any], available: Sequence[int]) -> list[int]:
    """The analysed epochs closest to 0, the schedule switch (20 by default) and the last."""
    if not len(available):
        return []
    middle = schedule_switch(checkpoints_of(results)) or FEATURE_EPOCH_DEFAULT_MIDDLE
    return nearest_epochs(available, [0, middle, int(max(available))])


DIAGONAL_ROWS = (
    ("nfm_diag", "NFM  diag W\u1d40W"),
    ("nfm_delta_diag", "\u0394NFM  diag (W\u2212W\u2080)\u1d40(W\u2212W\u2080)"),
    ("agop_diag", "AGOP diag"),
)


def features_figure(results: dict[str, Any], arrays: dict[str, np.ndarray], per_channel: bool = False,
                    n_eigvecs: int = 4) -> Figure:
    """Layer-0 features in the input's shape: the NFM, delta-NFM and AGOP diagonals at three
    epochs (left), the top NFM and AGOP eigenvectors (right, top), and every layer's
    eigenvalue spectra at the last analysed epoch (right, bottom).

    ``arrays`` is a features.npz as a dict (see :mod:`agop_sweep.features`). Each image has
    its own colour scale; ``per_channel`` shows colour channels separately instead of summed.
    """
    shape = tuple(int(s) for s in arrays["image_shape"])
    n_ch = shape[0] if per_channel else 1
    epochs = [int(e) for e in arrays["epochs"]]
    shown = feature_epochs(results, epochs)
    eig_epoch = int(arrays["eigvec_epoch"]) if "eigvec_epoch" in arrays else None
    k = min(n_eigvecs, arrays["nfm_eigvecs"].shape[0]) if "nfm_eigvecs" in arrays else 0

    n_diag_cols = max(len(shown), 1) * n_ch
    fig = Figure(figsize=(min(16.0, 1.3 * (n_diag_cols + k) + 6), 8.4), dpi=DPI, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[n_diag_cols, max(k, 3) + 1.5], wspace=0.03)

    # Diagonals: one row per matrix, one column per (epoch, channel).
    left.suptitle("layer-0 diagonals (input pixels)" + ("" if n_ch == 1 and shape[0] == 1 else
                  ", per channel" if per_channel else f", summed over {shape[0]} channels"), fontsize=11)
    axs = left.subplots(len(DIAGONAL_ROWS), n_diag_cols, squeeze=False)
    for r, (key, label) in enumerate(DIAGONAL_ROWS):
        for j, e in enumerate(shown):
            diag = arrays[key][epochs.index(e)]
            img = to_image(diag, shape, per_channel=per_channel)
            for c in range(n_ch):
                ax = axs[r, j * n_ch + c]
                title = None
                if r == 0:
                    title = f"epoch {e}" + (f", ch {c}" if per_channel else "")
                if key == "nfm_delta_diag" and not np.any(diag):
                    _blank(ax, "W = W\u2080", shape[1:])
                    ax.set_title(title or "", fontsize=9)
                else:
                    _show(ax, img[c] if per_channel else img, signed=False, title=title)
                if j == 0 and c == 0:
                    ax.set_ylabel(label, fontsize=9)
    if not shown:
        _blank(axs[0, 0], "no analysed epoch yet")

    # Eigenvectors and spectra on the right.
    top, bottom = right.subfigures(2, 1, height_ratios=[1.1, 1.0])
    top.suptitle(f"top eigenvectors, layer 0, epoch {eig_epoch}"
                 + ("" if shape[0] == 1 else " (summed over channels)"), fontsize=11)
    eig_rows = [(key, label) for key, label in (("nfm_eigvecs", "NFM"), ("nfm_delta_eigvecs", "\u0394NFM"),
                                                  ("agop_eigvecs", "AGOP")) if key in arrays]
    if k:
        eaxs = top.subplots(len(eig_rows), k, squeeze=False)
        for r, (key, label) in enumerate(eig_rows):
            for i in range(k):
                vec = arrays[key][i]
                if not np.any(vec):
                    _blank(eaxs[r, i], "none", shape[1:])
                else:
                    _show(eaxs[r, i], to_image(orient(vec), shape), signed=True,
                          title=f"#{i + 1}" if r == 0 else None)
                if i == 0:
                    eaxs[r, i].set_ylabel(label, fontsize=9)
    else:
        _blank(top.subplots(), "no eigenvectors saved")

    sax = bottom.subplots(1, 2)
    n_layers = sum(1 for name in arrays if name.startswith("eigvals_agop_"))
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, max(n_layers, 1)))
    for ax, short, label in ((sax[0], "agop", "AGOP"), (sax[1], "nfm", "NFM W\u1d40W")):
        for l in range(n_layers):
            ev = np.sort(np.asarray(arrays.get(f"eigvals_{short}_{l}", []), dtype=float))[::-1]
            # Below 1e-12 of the largest are rounding noise of a rank-deficient matrix.
            ev = ev[ev > 1e-12 * ev[0]] if ev.size and ev[0] > 0 else ev[:0]
            if ev.size:
                share = ev / ev.sum()
                ax.loglog(np.arange(1, share.size + 1), share, color=colors[l], lw=1.4, label=f"layer {l}")
        ax.set_title(f"{label} spectrum, epoch {eig_epoch}", fontsize=10)
        ax.set_xlabel("eigenvalue index")
        ax.grid(alpha=0.25, which="major")
    for ax in sax:
        ax.set_ylabel("eigenvalue / trace")
    if n_layers:
        sax[1].legend(loc="lower left", fontsize=8)
    fig.suptitle(run_title(results), fontsize=12)
    return fig


# -- entry points -------------------------------------------------------------------------
def _image_shape(results: dict[str, Any]) -> tuple[int, ...] | None:
    shape = ((results.get("config") or {}).get("data") or {}).get("image_shape")
    return tuple(int(s) for s in shape) if shape else None


def feature_arrays(
    results: dict[str, Any], run_dir: Path, features: FeatureLog | None
) -> dict[str, np.ndarray] | None:
    """The run's features, from the live log when given, else from features.npz."""
    shape = _image_shape(results)
    if features is not None and len(features) and shape is not None:
        return features.arrays(shape)
    path = run_dir / FEATURES_FILE
    if path.exists():
        return load_features(path)
    return None


def save_run_figures(results: dict[str, Any], run_dir: str | os.PathLike[str],
                     features: FeatureLog | None = None, per_channel: bool = False,
                     formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Draw plots/training_analysis and, when layer-0 features exist, plots/features, in
    each of ``formats``."""
    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    written = []
    with style():
        fig = training_analysis_figure(results)
        written += save_figure(fig, out / "training_analysis", formats)
        arrays = feature_arrays(results, run_dir, features)
        if arrays is not None and len(arrays.get("epochs", [])):
            fig = features_figure(results, arrays, per_channel=per_channel)
            written += save_figure(fig, out / "features", formats)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agop_sweep.plots",
                                     description="Redraw the figures of one run from its files.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--per-channel", action="store_true",
                        help="show each colour channel of the feature images separately")
    args = parser.parse_args(argv)
    from agop_sweep.results import read_results

    try:
        results = read_results(args.run_dir / "results.json")
    except (OSError, ValueError) as e:
        print(f"agop_sweep.plots: error: cannot read {args.run_dir / 'results.json'}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    for path in save_run_figures(results, args.run_dir, per_channel=args.per_channel):
        print(path)


if __name__ == "__main__":
    main()
