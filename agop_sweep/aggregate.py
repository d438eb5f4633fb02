"""Merge runs into one table, comparison figures and a report.

    python -m agop_sweep.aggregate DIR [DIR ...] [--out OUT] [--metric M] [--by COLUMN]
    agop-aggregate DIR [DIR ...]                                  # the same

Every directory below the DIRs that holds a ``results.json`` is a run (single runs and
multirun sweeps alike); its ``.hydra/overrides.yaml`` gives the columns that tell runs apart.
Writes into OUT (default: the first DIR): ``runs.csv`` (one row per run), ``metrics.parquet``
(or ``metrics.csv`` without pyarrow; one row per run x epoch x layer x metric), the figures
``comparison``, ``losses``, ``final_correlation``, ``effective_rank``, ``features`` (.png and
.pdf) and ``report.md``. Runs that are still running, diverged or failed are included with
their status and drawn as far as they go; a results.json that cannot be read is skipped with
a warning.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from agop_sweep.atomic import write_atomic
from agop_sweep.errors import UserError
from agop_sweep.features import FILENAME as FEATURES_FILE
from agop_sweep.nfa import VARIANTS
from agop_sweep.results import FILENAME as RESULTS_FILE
from agop_sweep.results import read_results

log = logging.getLogger(__name__)

RUN_COLUMNS = ("run", "status", "optimizer", "lr", "seed", "dataset", "width", "depth")
EPOCH_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")
SPECTRA = ("agop", "nfm_raw", "nfm_delta")
# Directories inside a run that never hold another run.
SKIP_DIRS = {".hydra", "models", "plots", ".submitit", "__pycache__"}
FIGURES = ("comparison", "losses", "final_correlation", "effective_rank", "features")
DEFAULT_METRIC = "delta_cos_agop"


class AggregateError(UserError):
    """Nothing to aggregate, or an option that does not fit the runs (one-line message)."""


@dataclass
class Run:
    name: str
    path: Path
    results: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, Any]:
        return self.results.get("run") or {}

    def setting(self, key: str) -> Any:
        """The value of an override key in this run: the override itself, else the run's
        resolved config (a config group by its ``name``), else None."""
        if key in self.overrides:
            return self.overrides[key]
        node: Any = self.results.get("config") or {}
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node = node.get("name")
        return node if isinstance(node, (bool, int, float, str)) else None

    def base(self) -> dict[str, Any]:
        """The columns every row of this run carries."""
        info = self.info
        return {"run": self.name, "status": self.results.get("status"),
                **{k: info.get(k) for k in RUN_COLUMNS[2:]}}


# -- finding and reading runs ----------------------------------------------------------------
def parse_overrides(items: Sequence[Any]) -> dict[str, Any]:
    """``key=value`` task overrides (as in .hydra/overrides.yaml) as a dict of scalars.

    ``+key``/``++key`` count as ``key``; deletions (``~key``) and Hydra's own keys are left
    out; values are read as YAML scalars (``0.1`` is a number), anything else stays text.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        if not isinstance(item, str) or "=" not in item or item.startswith("~"):
            continue
        key, raw = item.split("=", 1)
        key = key.lstrip("+").split("@", 1)[0]
        if key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out[key] = value if isinstance(value, (bool, int, float, str)) else raw
    return out


def _read_overrides(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    try:
        return parse_overrides(yaml.safe_load(path.read_text()) or [])
    except (OSError, yaml.YAMLError) as e:
        log.warning("Ignoring %s: %s", path, e)
        return {}


def _read_config(run_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """The run's resolved config: from results.json, else from .hydra/config.yaml."""
    config = results.get("config")
    if isinstance(config, dict) and config:
        return config
    path = run_dir / ".hydra" / "config.yaml"
    try:
        loaded = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        loaded = None
    return loaded if isinstance(loaded, dict) else {}


def _check_shape(results: dict[str, Any]) -> None:
    """Raise ValueError unless the parts the aggregate reads have the right types."""
    if not isinstance(results["run"], dict):
        raise ValueError("'run' is not an object")
    for key in ("epochs", "analysis"):
        items = results[key]
        if not isinstance(items, list) or not all(isinstance(e, dict) and "epoch" in e for e in items):
            raise ValueError(f"{key!r} is not a list of epoch records")
    for a in results["analysis"]:
        if not all(isinstance(x, dict) and "layer" in x for x in a.get("layers", [])):
            raise ValueError("an analysis entry has malformed layers")


def find_runs(dirs: Sequence[Path]) -> tuple[list[Run], list[str]]:
    """Every run below ``dirs``, sorted by name, and a warning per results.json skipped.

    Raises AggregateError when a DIR is not a directory.
    """
    runs: list[Run] = []
    skipped: list[str] = []
    names: set[str] = set()
    for d in dirs:
        if not d.is_dir():
            raise AggregateError(f"{d} is not a directory")
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS)
            if RESULTS_FILE not in files:
                continue
            run_dir = Path(root)
            path = run_dir / RESULTS_FILE
            try:
                results = read_results(path)
                _check_shape(results)
            except (OSError, ValueError, KeyError, TypeError) as e:
                msg = f"skipping {path}: {e if isinstance(e, ValueError) else type(e).__name__}"
                log.warning("%s", msg)
                skipped.append(msg)
                continue
            results["config"] = _read_config(run_dir, results)
            rel = run_dir.relative_to(d).as_posix()
            name = d.resolve().name if rel == "." else rel
            if name in names:
                name = f"{d.resolve().name}/{name}"
            while name in names:
                name += "'"
            names.add(name)
            runs.append(Run(name, run_dir, results, _read_overrides(run_dir)))
    return sorted(runs, key=lambda r: r.name), skipped


# -- tables ------------------------------------------------------------------------------------
def _num(v: Any) -> float:
    """A finite number as float, anything else (null, text, inf) as NaN."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else math.nan


def _layer_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """Every number of one layer's analysis entry, flattened to metric names."""
    out = {k: _num(v) for k, v in (entry.get("metrics") or {}).items()}
    spectra = entry.get("spectra") or {}
    for name in SPECTRA:
        s = spectra.get(name)
        out[f"{name}_effective_rank"] = _num(s.get("effective_rank")) if isinstance(s, dict) else math.nan
        shares = s.get("top5_share") if isinstance(s, dict) else None
        out[f"{name}_top1_share"] = _num(shares[0]) if shares else math.nan
    cos = spectra.get("top_eigvec_cos") or {}
    if spectra:
        for kind in ("raw", "delta"):
            out[f"top_eigvec_cos_{kind}"] = _num(cos.get(kind))
    return out


def override_columns(runs: Sequence[Run]) -> list[str]:
    """Override keys of any run that do not repeat a standard column, in first-seen order."""
    keys: dict[str, None] = {}
    for r in runs:
        for k in r.overrides:
            if k not in RUN_COLUMNS:
                keys.setdefault(k)
    return list(keys)


def _clean_column(values: list[Any]) -> pd.Series:
    """One type per column (a file format needs it): numbers stay numbers, else text."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series([v if v in present else None for v in values], dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pd.Series([v if v in present else math.nan for v in values], dtype=float)
    return pd.Series([None if v is None else str(v) for v in values], dtype=object)


def tidy_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run x epoch x layer x metric; ``layer`` is empty for the losses and
    accuracies (one per epoch). Columns: the run's settings, every key overridden in any run
    (a run that did not override it has its config's value), epoch, layer, metric, value
    (NaN where the run recorded null)."""
    extra = override_columns(runs)
    frames = []
    for r in runs:
        rows: list[tuple[int, int | None, str, float]] = []
        for e in r.results["epochs"]:
            rows += [(e["epoch"], None, m, _num(e.get(m))) for m in EPOCH_METRICS]
        for a in r.results["analysis"]:
            for entry in a.get("layers", []):
                rows += [(a["epoch"], entry["layer"], m, v) for m, v in _layer_metrics(entry).items()]
        frame = pd.DataFrame(rows, columns=["epoch", "layer", "metric", "value"])
        for k, v in {**r.base(), **{k: r.setting(k) for k in extra}}.items():
            frame.insert(len(frame.columns) - 4, k, [v] * len(frame))
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=[*RUN_COLUMNS, *extra, "epoch", "layer", "metric", "value"])
    for col in [*RUN_COLUMNS, *extra]:
        df[col] = _clean_column(df[col].tolist())
    df["epoch"] = df["epoch"].astype("int64")
    df["layer"] = df["layer"].astype("Int64")
    df["value"] = df["value"].astype(float)
    return df


def final_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run and layer, ``metric`` at the run's last analysed epoch: run, layer, epoch, value."""
    sub = df[(df["metric"] == metric) & df["layer"].notna()]
    if sub.empty:
        return pd.DataFrame(columns=["run", "layer", "epoch", "value"])
    last = sub.groupby("run")["epoch"].transform("max")
    return sub[sub["epoch"] == last][["run", "layer", "epoch", "value"]].reset_index(drop=True)


def runs_table(runs: Sequence[Run], df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per run: settings, overrides, final losses and accuracies, the final
    ``metric`` per layer (``corr_layer<l>``, named in ``corr_metric``), times."""
    extra = override_columns(runs)
    finals = final_values(df, metric)
    rows = []
    for r in runs:
        epochs = sorted(r.results["epochs"], key=lambda e: e["epoch"])
        last = epochs[-1] if epochs else {}
        timing = r.results.get("timing") or {}
        started, finished = _num(timing.get("started_at")), _num(timing.get("finished_at"))
        wall = finished - started if math.isfinite(started) and math.isfinite(finished) else _num(
            timing.get("total_seconds"))
        mine = finals[finals["run"] == r.name]
        row: dict[str, Any] = {
            **r.base(),
            **{k: r.setting(k) for k in extra},
            "last_epoch": last.get("epoch"),
            **{f"final_{m}": _num(last.get(m)) for m in EPOCH_METRICS},
            "last_analysed_epoch": int(mine["epoch"].max()) if len(mine) else None,
            "corr_metric": metric,
            **{f"corr_layer{int(l)}": v for l, v in zip(mine["layer"], mine["value"], strict=True)},
            "wall_seconds": wall,
            "train_seconds": _num(timing.get("train_seconds")),
            "analysis_seconds": _num(timing.get("analysis_seconds")),
            "error": r.results.get("error"),
        }
        rows.append(row)
    table = pd.DataFrame(rows)
    corr_cols = sorted((c for c in table.columns if c.startswith("corr_layer")), key=lambda c: int(c[10:]))
    order = [c for c in table.columns if not c.startswith("corr_layer") and c not in
             ("wall_seconds", "train_seconds", "analysis_seconds", "error")]
    table = table[[*order, *corr_cols, "wall_seconds", "train_seconds", "analysis_seconds", "error"]]
    for col in [*RUN_COLUMNS, *extra, "last_epoch", "last_analysed_epoch"]:
        table[col] = _clean_column(table[col].tolist())
    return table


# -- grouping ------------------------------------------------------------------------------------
def line_labels(table: pd.DataFrame, by: str, overrides: Sequence[str]) -> dict[str, str]:
    """Run name -> the label of the line it belongs to.

    Runs share a line when they agree on ``by`` and on every other override that takes
    several values among the runs of one ``by`` value, except ``seed``: the seeds of a
    setting make its mean and band.
    """
    splitting = [c for c in overrides if c not in (by, "seed")
                 and (table.groupby(by, dropna=False)[c].nunique(dropna=False) > 1).any()]

    def text(col: str, v: Any) -> str:
        value = f"{v:g}" if isinstance(v, float) else str(v)
        return value if col == "optimizer" else f"{col}={value}"

    return {row["run"]: ", ".join([text(by, row[by])] + [text(c, row[c]) for c in splitting])
            for _, row in table.iterrows()}


def _sort_key(table: pd.DataFrame, by: str, labels: dict[str, str]) -> list[str]:
    """Line labels ordered by the ``by`` value (numbers numerically), then by label."""
    first = {}
    for _, row in table.iterrows():
        first.setdefault(labels[row["run"]], row[by])

    def key(label: str) -> tuple[int, float, str]:
        v = first[label]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return (0, float(v), label)
        return (1, 0.0, f"{v}|{label}")

    return sorted(first, key=key)


@dataclass
class Groups:
    """The lines of every comparison figure: label -> runs, with one colour per label."""

    order: list[str]
    members: dict[str, list[str]]
    colors: dict[str, Any]
    status: dict[str, str]

    def legend_label(self, label: str) -> str:
        return label + self.status[label]


def make_groups(table: pd.DataFrame, by: str, overrides: Sequence[str]) -> Groups:
    import matplotlib

    labels = line_labels(table, by, overrides)
    order = _sort_key(table, by, labels)
    members = {g: [r for r in table["run"] if labels[r] == g] for g in order}
    palette = matplotlib.colormaps["tab10"].colors
    colors = {g: palette[i % len(palette)] for i, g in enumerate(order)}
    status = {}
    indexed = table.set_index("run")
    for g in order:
        st = Counter(indexed.loc[members[g], "status"])
        lrs = {v for v in indexed.loc[members[g], "lr"] if isinstance(v, (int, float)) and math.isfinite(v)}
        n = len(members[g])
        notes = [f"{c} {s}" for s, c in sorted(st.items()) if s != "completed"]
        # The learning rate tells lines apart at a glance unless the label already has it.
        lr = f" lr={next(iter(lrs)):g}" if len(lrs) == 1 and by != "lr" and "lr=" not in g else ""
        status[g] = f"{lr} ({n} run{'s' if n > 1 else ''}" + "".join(f", {x}" for x in notes) + ")"
    return Groups(order, members, colors, status)


def _series(df: pd.DataFrame, runs: list[str], metric: str, layer: int | None) -> pd.DataFrame:
    """Epoch x run matrix of ``metric`` (of ``layer``, or run-level when None)."""
    sel = df[df["run"].isin(runs) & (df["metric"] == metric)]
    sel = sel[sel["layer"].isna()] if layer is None else sel[sel["layer"] == layer]
    if sel.empty:
        return pd.DataFrame()
    return sel.pivot_table(index="epoch", columns="run", values="value", aggfunc="first", dropna=False)


def _draw_group(ax: Any, m: pd.DataFrame, color: Any, label: str, marker: str | None = "o",
                ls: str = "-") -> bool:
    """Mean line over the runs (columns) and, with several runs, their min-max band."""
    if m.empty or not np.isfinite(m.to_numpy(dtype=float)).any():
        return False
    x = m.index.to_numpy(dtype=float)
    arr = m.to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN epochs stay NaN
            mean, lo, hi = np.nanmean(arr, 1), np.nanmin(arr, 1), np.nanmax(arr, 1)
    ok = np.isfinite(mean)
    ax.plot(x[ok], mean[ok], color=color, marker=marker, ms=3.5, lw=1.6, ls=ls, label=label)
    if arr.shape[1] > 1:
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.18, lw=0)
    return True


# -- figures -------------------------------------------------------------------------------------
def _is_correlation(metric: str) -> bool:
    return metric in VARIANTS or metric.startswith("top_eigvec_cos")


def _layers(df: pd.DataFrame) -> list[int]:
    return sorted(int(v) for v in df["layer"].dropna().unique())


def _legend_panel(ax: Any, groups: Groups, extra: Sequence[Any] = (), note: str = "") -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=groups.colors[g], lw=2, marker="o", ms=4, label=groups.legend_label(g))
               for g in groups.order]
    ax.axis("off")
    ax.legend(handles=[*handles, *extra], loc="upper left", frameon=False, fontsize=10,
              title="lines: mean over runs; band: min-max", title_fontsize=9, alignment="left")
    if note:
        ax.text(0.0, 0.0, note, transform=ax.transAxes, fontsize=9, va="bottom", ha="left", color="0.25",
                wrap=True)


def comparison_figure(df: pd.DataFrame, groups: Groups, metric: str, switch: int | None) -> Any:
    """Per layer, ``metric`` over epochs, one line per group; the last panel is the legend."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from agop_sweep.plots import DPI, draw_switch, grid_shape

    layers = _layers(df)
    rows, cols = grid_shape(len(layers) + 1)
    fig = Figure(figsize=(4.9 * cols, 3.4 * rows + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for i, l in enumerate(layers):
        ax = axes[i]
        for g in groups.order:
            _draw_group(ax, _series(df, groups.members[g], metric, l), groups.colors[g], g)
        if _is_correlation(metric):
            ax.set_ylim(0 if (df.loc[df["metric"] == metric, "value"].min() >= 0) else -1, 1)
        ax.set_title(f"layer {l}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.25)
        draw_switch(ax, switch)
    extra = []
    if switch is not None:
        extra.append(Line2D([], [], color="0.35", ls="--", lw=1.1,
                            label=f"analysis every epoch up to {switch}, then milestones"))
    _legend_panel(axes[len(layers)], groups, extra)
    for ax in axes[len(layers) + 1:]:
        ax.set_visible(False)
    fig.suptitle(f"{metric} per layer over training", fontsize=13)
    return fig


def losses_figure(df: pd.DataFrame, groups: Groups, switch: int | None) -> Any:
    """Train and val loss (top) and accuracy (bottom) per group over epochs."""
    from matplotlib.figure import Figure

    from agop_sweep.plots import DPI, log_axis, use_log

    fig = Figure(figsize=(13, 8), dpi=DPI, layout="constrained")
    axes = fig.subplots(2, 2, squeeze=False)
    for ax, metric in zip(axes.ravel(), ("train_loss", "val_loss", "train_acc", "val_acc"), strict=True):
        drawn = False
        for g in groups.order:
            drawn |= _draw_group(ax, _series(df, groups.members[g], metric, None), groups.colors[g],
                                 groups.legend_label(g), marker=None)
        if not drawn:
            ax.text(0.5, 0.5, "no values (no validation set?)", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
        vals = df.loc[df["metric"] == metric, "value"].to_numpy()
        if metric.endswith("loss") and use_log(vals):
            log_axis(ax)
        if metric.endswith("acc"):
            ax.set_ylim(0, 1.0)
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.25)
    axes[0, 0].legend(loc="best", fontsize=9)
    fig.suptitle("loss and accuracy (mean over runs, band: min-max)", fontsize=13)
    return fig


def final_correlation_figure(df: pd.DataFrame, groups: Groups, metric: str) -> Any:
    """Grouped bars: per layer, ``metric`` at each run's last analysed epoch, one bar per group
    (mean over its runs; whiskers: min-max)."""
    from matplotlib.figure import Figure

    from agop_sweep.plots import DPI

    finals = final_values(df, metric)
    layers = _layers(df)
    n = max(len(groups.order), 1)
    width = 0.8 / n
    size = (min(14.0, max(8.0, 0.55 * len(layers) * n + 3)), 5.2)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for i, g in enumerate(groups.order):
        sub = finals[finals["run"].isin(groups.members[g])]
        stats = sub.groupby("layer")["value"].agg(["mean", "min", "max"]).reindex(layers)
        x = np.arange(len(layers)) + (i - (n - 1) / 2) * width
        mean = stats["mean"].to_numpy(dtype=float)
        err = None
        if len(groups.members[g]) > 1:
            lo, hi = stats["min"].to_numpy(dtype=float), stats["max"].to_numpy(dtype=float)
            err = np.vstack([mean - lo, hi - mean])
        bars = ax.bar(x, np.nan_to_num(mean), width * 0.92, yerr=err, capsize=3, color=groups.colors[g],
                      label=groups.legend_label(g), error_kw={"elinewidth": 1, "ecolor": "0.25"})
        ax.bar_label(bars, labels=["n/a" if not np.isfinite(v) else f"{v:.2f}" for v in mean],
                     padding=2, fontsize=8)
    ax.set_xticks(np.arange(len(layers)), [f"layer {l}" for l in layers])
    ax.set_ylabel(metric)
    if _is_correlation(metric):
        ax.set_ylim(min(0.0, float(np.nanmin(finals["value"])) if len(finals) else 0.0) , 1.08)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    epochs = sorted(set(finals["epoch"].astype(int)))
    at = f"epoch {epochs[0]}" if len(epochs) == 1 else "each run's last analysed epoch"
    fig.suptitle(f"{metric} at {at}", fontsize=13)
    return fig


def effective_rank_figure(df: pd.DataFrame, groups: Groups, metric: str, switch: int | None) -> Any:
    """Per layer, the effective rank of the AGOP (solid) and of the NFM the metric compares
    with (dashed) over epochs, one colour per group."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from agop_sweep.plots import DPI, draw_switch, grid_shape, log_axis, use_log

    nfm = "nfm_delta" if metric.startswith("delta") else "nfm_raw"
    layers = _layers(df)
    rows, cols = grid_shape(len(layers) + 1)
    fig = Figure(figsize=(4.9 * cols, 3.4 * rows + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    log_y = use_log(df.loc[df["metric"].isin(["agop_effective_rank", f"{nfm}_effective_rank"]), "value"])
    for i, l in enumerate(layers):
        ax = axes[i]
        for g in groups.order:
            for name, ls in (("agop", "-"), (nfm, "--")):
                _draw_group(ax, _series(df, groups.members[g], f"{name}_effective_rank", l),
                            groups.colors[g], g, marker="o" if ls == "-" else None, ls=ls)
        if log_y:
            log_axis(ax)
        ax.set_title(f"layer {l}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("effective rank")
        ax.grid(alpha=0.25)
        draw_switch(ax, switch)
    extra = [Line2D([], [], color="0.2", lw=1.6, marker="o", ms=4, label="AGOP"),
             Line2D([], [], color="0.2", lw=1.6, ls="--", label="NFM (W\u2212W\u2080)\u1d40(W\u2212W\u2080)"
                    if nfm == "nfm_delta" else "NFM W\u1d40W")]
    _legend_panel(axes[len(layers)], groups, extra,
                  note="effective rank = exp(entropy of the normalised eigenvalues)")
    for ax in axes[len(layers) + 1:]:
        ax.set_visible(False)
    fig.suptitle("effective rank per layer over training", fontsize=13)
    return fig


def features_comparison_figure(runs: Sequence[Run], groups: Groups, metric: str) -> Any | None:
    """Rows = groups (the lowest-seed run of each), columns = layer-0 NFM diagonal, AGOP
    diagonal, top NFM and top AGOP eigenvector as images, at the last analysed epoch.
    None when no run saved features."""
    from matplotlib.figure import Figure

    from agop_sweep.features import load_features, orient, to_image
    from agop_sweep.plots import DPI, _blank, _show

    by_name = {r.name: r for r in runs}
    chosen: list[tuple[str, Run, dict[str, np.ndarray]]] = []
    for g in groups.order:
        candidates = sorted((by_name[n] for n in groups.members[g]),
                            key=lambda r: (_num(r.info.get("seed")), r.name))
        for r in candidates:
            path = r.path / FEATURES_FILE
            if not path.exists():
                continue
            try:
                arrays = load_features(path)
            except Exception as e:  # a half-copied or foreign file: draw the others
                log.warning("skipping %s: %s", path, e)
                continue
            chosen.append((g, r, arrays))
            break
    if not chosen:
        return None
    nfm_key = "nfm_delta_diag" if metric.startswith("delta") else "nfm_diag"
    nfm_title = ("NFM diag (W\u2212W\u2080)\u1d40(W\u2212W\u2080)" if nfm_key == "nfm_delta_diag"
                 else "NFM diag W\u1d40W")
    # The delta NFM's eigenvectors when the run saved them and the metric compares the delta.
    vec_key = "nfm_eigvecs"
    if nfm_key == "nfm_delta_diag" and all("nfm_delta_eigvecs" in a for _, _, a in chosen):
        vec_key = "nfm_delta_eigvecs"
    vec_title = "top eigenvector, " + ("\u0394NFM" if vec_key == "nfm_delta_eigvecs" else "NFM W\u1d40W")
    columns = (nfm_title, "AGOP diag", vec_title, "top eigenvector, AGOP")
    fig = Figure(figsize=(11, 2.7 * len(chosen) + 0.9), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(chosen), 4, squeeze=False)
    for i, (g, r, arrays) in enumerate(chosen):
        shape = tuple(int(s) for s in arrays["image_shape"])
        last = len(arrays["epochs"]) - 1
        epoch = int(arrays["epochs"][last])
        images = [
            (to_image(arrays[nfm_key][last], shape), False),
            (to_image(arrays["agop_diag"][last], shape), False),
            (to_image(orient(arrays[vec_key][0]), shape), True) if vec_key in arrays else None,
            (to_image(orient(arrays["agop_eigvecs"][0]), shape), True) if "agop_eigvecs" in arrays else None,
        ]
        for j, item in enumerate(images):
            ax = axes[i, j]
            if item is None or not np.any(item[0]):
                _blank(ax, "n/a", shape[1:])
            else:
                _show(ax, item[0], signed=item[1])
            if i == 0:
                ax.set_title(columns[j], fontsize=10)
        seed = r.info.get("seed")
        axes[i, 0].set_ylabel(f"{g}\nseed {seed}, epoch {epoch}", fontsize=10)
    summed = any(int(a["image_shape"][0]) > 1 for _, _, a in chosen)
    fig.suptitle("layer-0 features at the last analysed epoch" + (" (summed over channels)" if summed else "")
                 + "; each image on its own colour scale", fontsize=12)
    return fig


# -- the command ------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    data = text.encode()
    write_atomic(path, lambda f: f.write(data))


def short_names(names: Sequence[str]) -> dict[str, str]:
    """Run names without the ``key=value`` parts that all of them share (Hydra names sweep
    jobs after all their overrides, most of which are the same across a sweep)."""
    split = {n: n.split(",") for n in names}
    common = set.intersection(*(set(p) for p in split.values())) if len(names) > 1 else set()
    out = {}
    for n, parts in split.items():
        kept = [p for p in parts if p not in common]
        out[n] = ",".join(kept) if kept else n
    return out


def _markdown_table(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _report(runs: Sequence[Run], table: pd.DataFrame, metric: str, by: str, figures: list[str],
            metrics_file: str, skipped: list[str]) -> str:
    statuses = Counter(table["status"])
    extra = [c for c in override_columns(runs) if table[c].nunique(dropna=False) > 1]
    corr_cols = [c for c in table.columns if c.startswith("corr_layer")]
    show = ["run", "status", "optimizer", "lr", "seed", *[c for c in extra if c not in ("optimizer", "seed")],
            "last_epoch", "final_train_loss", "final_val_loss", "final_val_acc", *corr_cols, "wall_seconds"]
    show = list(dict.fromkeys(c for c in show if c in table.columns))
    captions = {
        "comparison": f"{metric} per layer over epochs, one line per {by}",
        "losses": "train and val loss and accuracy",
        "final_correlation": f"{metric} per layer at the last analysed epoch",
        "effective_rank": "effective rank of the AGOP and the NFM per layer",
        "features": "layer-0 NFM and AGOP diagonals and top eigenvectors, one row per line",
    }
    parts = [
        "# agop_sweep: aggregate report",
        "",
        f"{len(runs)} runs ({', '.join(f'{c} {s}' for s, c in sorted(statuses.items()))}); "
        f"lines by `{by}`, mean over seeds with a min-max band; correlation `{metric}`.",
        "",
        "Files: [runs.csv](runs.csv) (one row per run), "
        f"[{metrics_file}]({metrics_file}) (one row per run x epoch x layer x metric).",
        "",
    ]
    for name in figures:
        parts += [f"## {captions[name]}", "", f"![{captions[name]}]({name}.png) ([PDF]({name}.pdf))", ""]
    shown = table[show].copy()
    shown["run"] = shown["run"].map(short_names(list(table["run"])))
    parts += ["## Runs", "", f"`corr_layer<l>`: `{metric}` at the run's last analysed epoch; run names "
              "without the overrides that all runs share.", "", _markdown_table(shown), ""]
    if skipped:
        parts += ["## Skipped", "", *[f"- {s}" for s in skipped], ""]
    return "\n".join(parts)


def _default_metric(runs: Sequence[Run]) -> str:
    primaries = Counter(((r.results.get("config") or {}).get("analysis") or {}).get("primary", DEFAULT_METRIC)
                        for r in runs)
    if len(primaries) > 1:
        log.warning("runs differ in analysis.primary (%s); plotting %s (choose with --metric)",
                    dict(primaries), primaries.most_common(1)[0][0])
    return primaries.most_common(1)[0][0] if primaries else DEFAULT_METRIC


def _switch(runs: Sequence[Run]) -> int | None:
    from agop_sweep.plots import checkpoints_of, schedule_switch

    switches = Counter(schedule_switch(checkpoints_of(r.results)) for r in runs)
    return switches.most_common(1)[0][0] if switches else None


def _metrics_format(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "csv"
    return "parquet"


@dataclass
class Summary:
    out: Path
    runs: int
    skipped: list[str]
    files: list[Path]
    table: pd.DataFrame
    metrics: pd.DataFrame


def aggregate(dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None,
              metric: str | None = None, by: str = "optimizer", fmt: str = "auto",
              figures: bool = True) -> Summary:
    """Find the runs below ``dirs`` and write the tables, figures and report into ``out``.

    ``figures=False`` writes the tables and the report only (fast, for large sweeps).

    Raises AggregateError (one line) when there is nothing to aggregate or an option does
    not fit the runs.
    """
    from agop_sweep.plots import save_figure, style

    paths = [Path(d) for d in dirs]
    if not paths:
        raise AggregateError("give at least one directory")
    runs, skipped = find_runs(paths)
    if not runs:
        why = f" ({len(skipped)} unreadable results.json skipped)" if skipped else ""
        raise AggregateError(f"no runs (results.json) found below {', '.join(map(str, paths))}{why}")
    out_dir = Path(out) if out is not None else paths[0]
    metric = metric or _default_metric(runs)
    df = tidy_table(runs)
    layer_metrics = sorted(set(df.loc[df["layer"].notna(), "metric"]))
    if metric not in layer_metrics and layer_metrics:
        raise AggregateError(
            f"--metric {metric} is not in these runs; choose one of {', '.join(layer_metrics)}")
    table = runs_table(runs, df, metric)
    if by not in table.columns:
        options = [*RUN_COLUMNS[1:], *override_columns(runs)]
        raise AggregateError(f"--by {by} is not a column of these runs; choose one of {', '.join(options)}")

    fmt = _metrics_format(fmt)
    metrics_file = f"metrics.{fmt}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AggregateError(f"cannot create the output directory {out_dir}: {e.strerror}") from None
    written = [out_dir / "runs.csv", out_dir / metrics_file]
    csv = table.to_csv(index=False).encode()
    write_atomic(written[0], lambda f: f.write(csv))
    if fmt == "parquet":
        write_atomic(written[1], lambda f: df.to_parquet(f, index=False))
    else:
        data = df.to_csv(index=False).encode()
        write_atomic(written[1], lambda f: f.write(data))

    groups = make_groups(table, by, override_columns(runs))
    switch = _switch(runs)
    drawn: list[str] = []
    analysed = bool(_layers(df))
    ranks = bool(df.loc[df["metric"].str.endswith("_effective_rank"), "value"].notna().any())
    with style():
        builders = {
            "comparison": lambda: comparison_figure(df, groups, metric, switch) if analysed else None,
            "losses": lambda: losses_figure(df, groups, switch),
            "final_correlation": lambda: final_correlation_figure(df, groups, metric) if analysed else None,
            "effective_rank": lambda: effective_rank_figure(df, groups, metric, switch) if ranks else None,
            "features": lambda: features_comparison_figure(runs, groups, metric),
        }
        for name, build in builders.items() if figures else ():
            fig = build()
            if fig is None:
                log.info("No data for %s; figure left out", name)
                continue
            written += save_figure(fig, out_dir / name)
            drawn.append(name)
    report = out_dir / "report.md"
    _write_text(report, _report(runs, table, metric, by, drawn, metrics_file, skipped))
    written.append(report)
    return Summary(out_dir, len(runs), skipped, written, table, df)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="agop-aggregate",
        description="Merge agop_sweep runs (single runs and sweeps) into tables, figures and a report.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="directories searched for runs")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the first DIR)")
    parser.add_argument("--metric", default=None,
                        help=f"the correlation to plot: one of {', '.join(VARIANTS)} or a spectra metric "
                             "(default: the runs' analysis.primary)")
    parser.add_argument("--by", default="optimizer",
                        help="the column whose values make the lines (default: optimizer), e.g. lr, "
                             "optimizer.lr, model.width")
    parser.add_argument("--format", dest="fmt", choices=("auto", "parquet", "csv"), default="auto",
                        help="format of the tidy metrics table (auto: parquet when pyarrow is installed)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="write the tables and the report only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="agop-aggregate: %(levelname)s: %(message)s")
    try:
        summary = aggregate(args.dirs, args.out, args.metric, args.by, args.fmt, args.figures)
    except UserError as e:
        print(f"agop-aggregate: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        print(f"agop-aggregate: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None
    statuses = Counter(summary.table["status"])
    print(f"Aggregated {summary.runs} runs ({', '.join(f'{c} {s}' for s, c in sorted(statuses.items()))}) "
          f"into {summary.out}: " + ", ".join(p.name for p in summary.files))


if __name__ == "__main__":
    main()
