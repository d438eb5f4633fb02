"""A run's own figures: plots/training_analysis.{png,pdf} and plots/features.{png,pdf}.

:func:`save_run_figures` draws both from a :class:`~agop_sweep.store.record.RunRecord` (the trainer
and ``analyze`` call it; ``python -m agop_sweep.figures RUN_DIR`` redraws them by hand).
"""

from __future__ import annotations

import logging
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D

from agop_sweep.config.presets import run_preset_line
from agop_sweep.figures.style import (
    CORR_COLOR,
    DPI,
    TRAIN_COLOR,
    VAL_COLOR,
    alpha_handle,
    ansatz_applies,
    apply_metric_limits,
    blank_panel,
    censored_handle,
    draw_switch,
    edge,
    epoch_ticks,
    is_alpha_star,
    is_correlation,
    layer_colors,
    layer_grid,
    layer_values,
    log_axis,
    mark_censored,
    metric_label,
    primary_kind,
    save_figure,
    schedule_switch,
    show_image,
    style,
    switch_handle,
    use_log,
)
from agop_sweep.store.features import FILENAME as FEATURES_FILE
from agop_sweep.store.features import FeaturesError, load_features, nearest_epochs, orient, to_image
from agop_sweep.store.record import RunRecord, Status
from agop_sweep.store.schema import format_number

if TYPE_CHECKING:
    from agop_sweep.store.features import FeatureLog

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
# Epochs whose layer-0 features the per-run figure shows; the middle one is the schedule
# switch when there is one (epoch 20 in the paper's schedule).
FEATURE_EPOCH_DEFAULT_MIDDLE = 20
DIAGONAL_ROWS = (
    ("nfm_diag", "NFM  diag W\u1d40W"),
    ("nfm_delta_diag", "\u0394NFM  diag (W\u2212W\u2080)\u1d40(W\u2212W\u2080)"),
    ("agop_diag", "AGOP diag"),
)
EIGVEC_ROWS = (("nfm_eigvecs", "NFM"), ("nfm_delta_eigvecs", "\u0394NFM"), ("agop_eigvecs", "AGOP"))


def run_title(record: RunRecord) -> str:
    r = record.run
    lr = r.get("lr")
    lr_text = f"{lr:g}" if isinstance(lr, (int, float)) else "?"
    if record.is_cnn():
        fc = record.setting("model.fc") or []
        arch = f"cnn {record.setting('model.channels')}" + (f" fc {fc}" if fc else "")
    else:
        arch = f"width {r.get('width', '?')}  \u00b7  depth {r.get('depth', '?')}"
    return f"{r.get('optimizer', '?')}  lr={lr_text}  \u00b7  {r.get('dataset', '?')}  \u00b7  {arch}"


def _diverged_epoch(record: RunRecord) -> int | None:
    return record.diverged_epoch if record.status == Status.DIVERGED else None


# -- plots/training_analysis ---------------------------------------------------------------
@dataclass(frozen=True)
class _Curves:
    """What the training-analysis panels draw: losses per epoch, correlations per analysis."""

    epochs: np.ndarray  # (E,)
    train: np.ndarray  # (E,)
    val: np.ndarray  # (E,)
    analysed: np.ndarray  # (A,)
    corr: np.ndarray  # (A, L)
    metric: str
    switch: int | None
    xmax: float
    kind: str | None = None  # the NFM and correlation kind of plain alpha_star: the primary's

    @classmethod
    def of(cls, record: RunRecord, metric: str | None = None) -> _Curves:
        epochs, train = record.epoch_metric("train_loss")
        _, val = record.epoch_metric("val_loss")
        order = np.argsort(epochs, kind="stable")
        analysed, corr = layer_values(record, metric)
        last_epoch = record.setting("schedule.epochs")
        xmax = max([*epochs.tolist(), *analysed.tolist(), float(last_epoch or 0), 1.0])
        return cls(epochs[order], train[order], val[order], analysed, corr, metric or record.primary_metric(),
                   schedule_switch(record.checkpoint_epochs()), xmax, primary_kind(record.primary_metric()))

    @property
    def censored(self) -> bool:
        """Whether an alpha_star sits at an end of its grid somewhere."""
        return is_alpha_star(self.metric) and any(edge(v) for v in self.corr.ravel())

    @property
    def label(self) -> str:
        return metric_label(self.metric, self.kind)

    def set_ylim(self, ax: Axes) -> None:
        """Correlations 0 to 1 (a Pearson variant may dip below: -1 to 1), alpha_star 0 to 2
        with the ansatz's 0.5 dotted where it applies (the raw NFM), weight_change from 0."""
        apply_metric_limits(ax, self.metric, self.corr, self.kind)

    def mark(self, ax: Axes, layer: int, color: object) -> None:
        """Hollow triangles at alpha_star values at an end of the grid (censored)."""
        if self.censored:
            values = self.corr[:, layer]
            mark_censored(ax, self.analysed, values, values[:, None], color)

    def set_xlim(self, ax: Axes) -> None:
        ax.set_xlim(-0.02 * self.xmax, 1.02 * self.xmax)


def _layer_panel(ax: Axes, c: _Curves, layer: int, record: RunRecord, log_loss: bool) -> None:
    """Layer ``layer``: the losses (left axis) and its primary correlation (right axis)."""
    ax.plot(c.epochs, c.train, color=TRAIN_COLOR, lw=1.6, label="train loss")
    if np.isfinite(c.val).any():
        ax.plot(c.epochs, c.val, color=VAL_COLOR, lw=1.6, ls="-.", label="val loss")
    if log_loss:
        log_axis(ax)
    c.set_xlim(ax)
    epoch_ticks(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss" + (" (log)" if log_loss else ""))
    shape = record.layer_shape(layer)
    kind = record.layer_kind(layer) if record.is_cnn() else None
    ax.set_title(f"layer {layer}" + (f" {kind}" if kind else "") + (f"  {tuple(shape)}" if shape else ""))
    ax.grid(alpha=0.25)
    rax = ax.twinx()
    rax.plot(c.analysed, c.corr[:, layer], color=CORR_COLOR, marker="o", ms=4, lw=1.4, label=c.metric)
    c.mark(rax, layer, CORR_COLOR)
    c.set_ylim(rax)
    rax.set_ylabel(c.label, color=CORR_COLOR)
    rax.tick_params(axis="y", colors=CORR_COLOR)
    rax.spines["right"].set_color(CORR_COLOR)
    draw_switch(ax, c.switch)
    diverged = _diverged_epoch(record)
    if diverged is not None:
        ax.axvline(diverged, color="#d62728", ls=":", lw=1.5)
        ax.text(diverged, 0.02, " diverged", color="#d62728", fontsize=8,
                transform=ax.get_xaxis_transform(), ha="left", va="bottom")


def _overview_panel(ax: Axes, c: _Curves) -> None:
    """Every layer's correlation on one axis, with the layers' legend."""
    n_layers = c.corr.shape[1]
    colors = layer_colors(n_layers)
    for l in range(n_layers):
        ax.plot(c.analysed, c.corr[:, l], color=colors[l], marker="o", ms=3.5, lw=1.4, label=f"layer {l}")
        c.mark(ax, l, colors[l])
    c.set_ylim(ax)
    c.set_xlim(ax)
    epoch_ticks(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(c.metric)
    ax.set_title(f"all layers: {c.metric}")
    ax.grid(alpha=0.25)
    draw_switch(ax, c.switch, label=False)  # its legend may sit where the label would
    if n_layers:
        ax.legend(loc="best", ncols=2 if n_layers > 4 else 1, frameon=True, framealpha=0.85)


def training_analysis_figure(record: RunRecord, metric: str | None = None,
                             preset: str | None = None) -> Figure:
    """One panel per analysed layer (losses left, ``metric`` right: a name in ``metrics``, a
    per-layer key such as alpha_star or a per-kind one such as alpha_star_raw_cos; default the
    primary correlation) plus an overview panel with every layer's ``metric``; the title names
    the run and, with ``preset`` (see :mod:`agop_sweep.config.presets`), what its preset set."""
    c = _Curves.of(record, metric)
    n_layers = c.corr.shape[1]
    log_loss = use_log(c.train, c.val)
    fig, layer_axes, overview = layer_grid(n_layers, row_height=3.5, extra_height=1.2)
    for l, ax in enumerate(layer_axes):
        _layer_panel(ax, c, l, record, log_loss)
    _overview_panel(overview, c)
    handles = [
        Line2D([], [], color=TRAIN_COLOR, lw=1.6, label="train loss (left axis)"),
        Line2D([], [], color=VAL_COLOR, lw=1.6, ls="-.", label="val loss (left axis)"),
        Line2D([], [], color=CORR_COLOR, marker="o", ms=4, lw=1.4, label=f"{c.metric} (right axis)"),
    ]
    if ansatz_applies(c.metric, c.kind):
        handles.append(alpha_handle())
    if c.censored:
        handles.append(censored_handle())
    if c.switch is not None:
        handles.append(switch_handle(c.switch))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) if len(handles) <= 4 else 3,
               frameon=False)
    fig.suptitle(_title(record, preset) + "\n" + _run_subtitle(record, c.metric, c.kind), fontsize=12)
    return fig


def _title(record: RunRecord, preset: str | None) -> str:
    """The run's title and, below it, what its preset set (wrapped)."""
    if not preset:
        return run_title(record)
    return run_title(record) + "\n" + "\n".join(textwrap.wrap(preset, 120, break_on_hyphens=False))


def _run_subtitle(record: RunRecord, metric: str, kind: str | None = None) -> str:
    last = record.last_epoch()
    status = record.status
    diverged = _diverged_epoch(record)
    if diverged is not None:
        status += f" at epoch {diverged}"
    parts = [f"seed {record.run.get('seed', '?')}", status]
    if last is not None:
        train, val = (format_number(last.get(key), ".3g", "n/a") for key in ("train_acc", "val_acc"))
        parts.append(f"epoch {last['epoch']}: train acc {train}, val acc {val}")
    label = metric_label(metric, kind)
    if label != metric:  # an exponent: which NFM and correlation it is for
        parts.append(f"{metric} = {label}")
    else:
        parts.append(f"correlation = {metric}" if is_correlation(metric) else metric)
    return "  \u00b7  ".join(parts)


# -- plots/features -------------------------------------------------------------------------
def feature_epochs(record: RunRecord, available: Sequence[int]) -> list[int]:
    """The analysed epochs closest to 0, the schedule switch (20 by default) and the last."""
    if not len(available):
        return []
    middle = schedule_switch(record.checkpoint_epochs()) or FEATURE_EPOCH_DEFAULT_MIDDLE
    return nearest_epochs(available, [0, middle, int(max(available))])


def _diagonal_panels(sub: SubFigure, arrays: dict[str, np.ndarray], shown: list[int],
                     per_channel: bool, patches: bool = False) -> None:
    """One row per matrix diagonal, one column per (epoch, channel). ``patches``: layer 0 is a
    conv layer, whose inputs are C x k x k patches."""
    shape = tuple(int(s) for s in arrays["image_shape"])
    n_ch = shape[0] if per_channel else 1
    epochs = [int(e) for e in arrays["epochs"]]
    what = f"filter patch entries, {shape[0]} x {shape[1]} x {shape[2]}" if patches else "input pixels"
    sub.suptitle(f"layer-0 diagonals ({what})" + ("" if n_ch == 1 and shape[0] == 1 else
                 ", per channel" if per_channel else f", summed over {shape[0]} channels"), fontsize=11)
    axs = sub.subplots(len(DIAGONAL_ROWS), max(len(shown), 1) * n_ch, squeeze=False)
    for r, (key, label) in enumerate(DIAGONAL_ROWS):
        for j, e in enumerate(shown):
            diag = arrays[key][epochs.index(e)]
            img = to_image(diag, shape, per_channel=per_channel)
            for ch in range(n_ch):
                ax = axs[r, j * n_ch + ch]
                title = None
                if r == 0:
                    title = f"epoch {e}" + (f", ch {ch}" if per_channel else "")
                if key == "nfm_delta_diag" and not np.any(diag):
                    blank_panel(ax, "W = W\u2080", shape[1:])
                    ax.set_title(title or "", fontsize=9)
                else:
                    show_image(ax, img[ch] if per_channel else img, signed=False, title=title)
                if j == 0 and ch == 0:
                    ax.set_ylabel(label, fontsize=9)
    if not shown:
        blank_panel(axs[0, 0], "no analysed epoch yet")


def _colour_patch(ax: Axes, vec: np.ndarray, shape: tuple[int, ...], title: str | None) -> None:
    """A (3, k, k) eigenvector as a k x k colour patch: each channel is R, G or B, grey at 0,
    full colour at the largest magnitude (the conv-NFA papers' pictures of filters)."""
    img = vec.reshape(shape).transpose(1, 2, 0)
    m = float(np.abs(img).max()) or 1.0
    ax.imshow(np.clip(0.5 + img / (2 * m), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _eigvec_panels(sub: SubFigure, arrays: dict[str, np.ndarray], k: int, eig_epoch: int | None,
                   patches: bool = False) -> None:
    """The top ``k`` eigenvectors of the NFMs and the AGOP as images, one row per matrix;
    ``patches`` (layer 0 a conv layer): as k x k patches, in colour for 3 channels."""
    shape = tuple(int(s) for s in arrays["image_shape"])
    colour = patches and shape[0] == 3
    note = " as RGB filter patches" if colour else "" if shape[0] == 1 else " (summed over channels)"
    sub.suptitle(f"top eigenvectors, layer 0, epoch {eig_epoch}{note}", fontsize=11)
    if not k:
        blank_panel(sub.subplots(), "no eigenvectors saved")
        return
    rows = [(key, label) for key, label in EIGVEC_ROWS if key in arrays]
    axs = sub.subplots(len(rows), k, squeeze=False)
    for r, (key, label) in enumerate(rows):
        for i in range(k):
            vec = arrays[key][i]
            if not np.any(vec):
                blank_panel(axs[r, i], "none", shape[1:])
            elif colour:
                _colour_patch(axs[r, i], orient(vec), shape, f"#{i + 1}" if r == 0 else None)
            else:
                show_image(axs[r, i], to_image(orient(vec), shape), signed=True,
                           title=f"#{i + 1}" if r == 0 else None)
            if i == 0:
                axs[r, i].set_ylabel(label, fontsize=9)


def _spectra_panels(sub: SubFigure, arrays: dict[str, np.ndarray], eig_epoch: int | None) -> None:
    """Every layer's AGOP and NFM eigenvalue shares, log-log."""
    axs = sub.subplots(1, 2)
    n_layers = sum(1 for name in arrays if name.startswith("eigvals_agop_"))
    colors = layer_colors(n_layers)
    for ax, short, label in ((axs[0], "agop", "AGOP"), (axs[1], "nfm", "NFM W\u1d40W")):
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
    for ax in axs:
        ax.set_ylabel("eigenvalue / trace")
    if n_layers:
        axs[1].legend(loc="lower left", fontsize=8)


def features_figure(record: RunRecord, arrays: dict[str, np.ndarray], per_channel: bool = False,
                    n_eigvecs: int = 4, preset: str | None = None) -> Figure:
    """Layer-0 features in the input's shape: the NFM, delta-NFM and AGOP diagonals at three
    epochs (left), the top NFM and AGOP eigenvectors (right, top), and every layer's
    eigenvalue spectra at the last analysed epoch (right, bottom).

    ``arrays`` is a features.npz as a dict (see :mod:`agop_sweep.store.features`). Each image has
    its own colour scale, given by its colour bar; ``per_channel`` shows colour channels
    separately instead of summed; ``preset``: what the run's preset set, for the title. For a
    CNN, layer 0 is the first conv layer: its diagonals are C x k x k images, one per channel,
    and its eigenvectors k x k patches.
    """
    patches = record.is_cnn()
    per_channel = per_channel or patches
    n_ch = int(arrays["image_shape"][0]) if per_channel else 1
    shown = feature_epochs(record, [int(e) for e in arrays["epochs"]])
    eig_epoch = int(arrays["eigvec_epoch"]) if "eigvec_epoch" in arrays else None
    k = min(n_eigvecs, arrays["nfm_eigvecs"].shape[0]) if "nfm_eigvecs" in arrays else 0

    n_diag_cols = max(len(shown), 1) * n_ch
    # Each image has its own colour bar: 1.6 inches a column.
    fig = Figure(figsize=(min(18.0, 1.6 * (n_diag_cols + k) + 6), 8.6), dpi=DPI, layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[n_diag_cols, max(k, 3) + 1.5], wspace=0.03)
    _diagonal_panels(left, arrays, shown, per_channel, patches)
    top, bottom = right.subfigures(2, 1, height_ratios=[1.1, 1.0])
    _eigvec_panels(top, arrays, k, eig_epoch, patches)
    _spectra_panels(bottom, arrays, eig_epoch)
    fig.suptitle(_title(record, preset), fontsize=12)
    return fig


# -- entry point ----------------------------------------------------------------------------
def feature_arrays(
    record: RunRecord, run_dir: Path, features: FeatureLog | None, strict: bool = False
) -> dict[str, np.ndarray] | None:
    """The run's features, from the live log when given, else from features.npz. A
    features.npz that is not one (garbage, another program's) raises FeaturesError with
    ``strict``; else it is named in a warning and left out."""
    shape = record.first_layer_shape()
    if features is not None and len(features) and shape is not None:
        return features.arrays(shape)
    path = run_dir / FEATURES_FILE
    if not path.exists():
        return None
    try:
        return load_features(path)
    except FeaturesError as e:
        if strict:
            raise
        log.warning("%s; the features figure is left out", e)
        return None


def save_run_figures(record: RunRecord, run_dir: str | os.PathLike[str],
                     features: FeatureLog | None = None, per_channel: bool = False,
                     formats: Sequence[str] = ("png", "pdf"), metric: str | None = None,
                     strict: bool = False) -> list[Path]:
    """Draw plots/training_analysis (of ``metric``, default the primary) and, when layer-0
    features exist, plots/features, in each of ``formats``. ``strict``: a features.npz that
    cannot be read raises FeaturesError before anything is drawn (else: a warning)."""
    run_dir = Path(run_dir)
    out = run_dir / PLOTS_DIR
    written = []
    preset = run_preset_line(run_dir, record.config)
    arrays = feature_arrays(record, run_dir, features, strict)  # first: a refusal draws nothing
    with style():
        fig = training_analysis_figure(record, metric, preset)
        written += save_figure(fig, out / "training_analysis", formats)
        if arrays is not None and len(arrays.get("epochs", [])):
            fig = features_figure(record, arrays, per_channel=per_channel, preset=preset)
            written += save_figure(fig, out / "features", formats)
    return written
