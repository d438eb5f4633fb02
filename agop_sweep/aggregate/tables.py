"""The tidy tables: ``metrics`` (one row per run x epoch x layer x metric) and ``runs`` (one
row per run), with one dtype per column (numbers stay numbers)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from agop_sweep.aggregate.discover import RUN_COLUMNS, Run, override_columns
from agop_sweep.aggregate.discover import is_missing as _missing
from agop_sweep.figures.style import LAYER_KEYS, alpha_keys_of, companion, edge, is_alpha_star, layer_values
from agop_sweep.store.record import RunRecord, number

EPOCH_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")
SPECTRA = ("agop", "nfm_raw", "nfm_delta")
# The spectral summaries of a layer entry: metric name -> path into the entry.
SPECTRA_FIELDS = {
    **{name: path for s in SPECTRA for name, path in (
        (f"{s}_effective_rank", f"spectra.{s}.effective_rank"),
        (f"{s}_top1_share", f"spectra.{s}.top5_share.0"))},
    **{f"top_eigvec_cos_{kind}": f"spectra.top_eigvec_cos.{kind}" for kind in ("raw", "delta")},
}
TIME_COLUMNS = ("wall_seconds", "train_seconds", "analysis_seconds")
LONG_COLUMNS = ["epoch", "layer", "metric", "value"]
# After them: whether an alpha_star sits at an end of its grid (style.ABOVE / BELOW, else "").
CENSORED = "censored"


def _long(epochs: np.ndarray, values: np.ndarray, metric: str) -> pd.DataFrame:
    """Rows (epoch, layer, metric, value) of one metric: per epoch (E,) with no layer, or
    per analysed epoch and layer (A, L)."""
    if values.ndim == 1:
        layers = pd.array([pd.NA] * len(epochs), dtype="Int64")
    else:
        layers = pd.array(np.tile(np.arange(values.shape[1]), len(epochs)), dtype="Int64")
        epochs = np.repeat(epochs, values.shape[1])
    return pd.DataFrame({"epoch": epochs.astype("int64"), "layer": layers, "metric": metric,
                         "value": values.ravel()})


def _run_rows(record: RunRecord) -> pd.DataFrame:
    """A run's rows: the losses and accuracies by epoch, then every layer metric by epoch and
    layer (the spectral summaries when the run recorded spectra)."""
    per_epoch = [_long(*record.epoch_metric(m), m) for m in EPOCH_METRICS]
    names = [*record.metric_names(), *layer_keys(record), *alpha_keys_of(record)]
    per_layer = [_long(*layer_values(record, m), m) for m in names]
    spectra = {name: record.layer_field(path) for name, path in SPECTRA_FIELDS.items()}
    if any(np.isfinite(values).any() for _, values in spectra.values()):
        per_layer += [_long(epochs, values, name) for name, (epochs, values) in spectra.items()]
    parts = [pd.concat(per_epoch).sort_values("epoch", kind="stable")]
    if per_layer:
        parts.append(pd.concat(per_layer).sort_values(["epoch", "layer"], kind="stable"))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=LONG_COLUMNS)


def layer_keys(record: RunRecord) -> list[str]:
    """The per-layer keys (weight_change, alpha_star, alpha_corr) that any layer entry of the
    record has (older results have none)."""
    return [k for k in LAYER_KEYS if any(k in entry for _, entry in record.layer_entries())]


def _clean_column(values: list[Any]) -> pd.Series:
    """One type per column (a file format needs it): numbers stay numbers, else text."""
    present = [v for v in values if not _missing(v)]
    if present and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return pd.Series([v if v in present else None for v in values], dtype="Int64")
    if present and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in present):
        return pd.Series([v if v in present else math.nan for v in values], dtype=float)
    return pd.Series([None if _missing(v) else str(v) for v in values], dtype=object)


def tidy_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run x epoch x layer x metric; ``layer`` is empty for the losses and
    accuracies (one per epoch). Columns: the run's settings, every key overridden in any run
    (a run that did not override it has its config's value), epoch, layer, metric, value
    (NaN where the run recorded null)."""
    extra = override_columns(runs)
    frames = []
    for r in runs:
        frame = _run_rows(r.record)
        for k, v in {**r.base(), **{k: r.setting(k) for k in extra}}.items():
            frame.insert(len(frame.columns) - 4, k, [v] * len(frame))
        frames.append(frame)
    frames = [f for f in frames if len(f)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=[*RUN_COLUMNS, *extra, *LONG_COLUMNS])
    for col in [*RUN_COLUMNS, *extra]:
        df[col] = _clean_column(df[col].tolist())
    df["epoch"] = df["epoch"].astype("int64")
    df["layer"] = df["layer"].astype("Int64")
    df["value"] = df["value"].astype(float)
    df[CENSORED] = censored_column(df)
    return df


def censored_column(df: pd.DataFrame) -> pd.Series:
    """Per row, ``above``/``below`` for an alpha_star at an end of its grid, else ""."""
    alpha = df["metric"].map(is_alpha_star).astype(bool) if len(df) else pd.Series([], dtype=bool)
    out = pd.Series("", index=df.index, dtype=object)
    out[alpha] = df.loc[alpha, "value"].map(edge)
    return out


def final_values(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run and layer, ``metric`` at the run's last analysed epoch: run, layer, epoch, value
    and censored (see :func:`censored_column`)."""
    columns = ["run", "layer", "epoch", "value", CENSORED]
    sub = df[(df["metric"] == metric) & df["layer"].notna()]
    if sub.empty:
        return pd.DataFrame(columns=columns)
    last = sub.groupby("run")["epoch"].transform("max")
    sub = sub[sub["epoch"] == last]
    if CENSORED not in sub.columns:
        sub = sub.assign(**{CENSORED: censored_column(sub)})
    return sub[columns].reset_index(drop=True)


def _wall_seconds(timing: dict[str, float]) -> float:
    """Finish minus start when the run recorded both, else its total time."""
    started, finished = number(timing.get("started_at")), number(timing.get("finished_at"))
    if math.isfinite(started) and math.isfinite(finished):
        return finished - started
    return number(timing.get("total_seconds"))


def _alpha_columns(mine: pd.DataFrame, partner: pd.DataFrame) -> dict[str, Any]:
    """For an alpha_star metric: per layer, the correlation at that exponent and whether the
    exponent is censored (at an end of the grid)."""
    corr = dict(zip(partner["layer"], partner["value"], strict=True))
    return {**{f"alpha_corr_layer{int(l)}": corr.get(l, math.nan) for l in mine["layer"]},
            **{f"censored_layer{int(l)}": c for l, c in zip(mine["layer"], mine[CENSORED], strict=True)}}


def _run_row(r: Run, extra: Sequence[str], finals: pd.DataFrame, metric: str,
             partners: pd.DataFrame | None) -> dict[str, Any]:
    last = r.record.last_epoch()
    timing = r.record.timing
    mine = finals[finals["run"] == r.name]
    alpha = {} if partners is None else _alpha_columns(mine, partners[partners["run"] == r.name])
    return {
        **r.base(),
        **{k: r.setting(k) for k in extra},
        "last_epoch": None if last is None else last["epoch"],
        **{f"final_{m}": math.nan if last is None else number(last.get(m)) for m in EPOCH_METRICS},
        "last_analysed_epoch": int(mine["epoch"].max()) if len(mine) else None,
        "corr_metric": metric,
        **{f"corr_layer{int(l)}": v for l, v in zip(mine["layer"], mine["value"], strict=True)},
        **alpha,
        "wall_seconds": _wall_seconds(timing),
        "train_seconds": number(timing.get("train_seconds")),
        "analysis_seconds": number(timing.get("analysis_seconds")),
        "error": r.record.error,
    }


def layer_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    """``<prefix><l>`` columns in layer order."""
    return sorted((c for c in table.columns if c.startswith(prefix) and c[len(prefix):].isdigit()),
                  key=lambda c: int(c[len(prefix):]))


PER_LAYER = ("corr_layer", "alpha_corr_layer", "censored_layer")


def runs_table(runs: Sequence[Run], df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per run: settings, overrides, final losses and accuracies, the final
    ``metric`` per layer (``corr_layer<l>``, named in ``corr_metric``; for an alpha_star also
    ``alpha_corr_layer<l>``, the correlation at that exponent, and ``censored_layer<l>``,
    ``above``/``below`` at an end of the grid), times."""
    extra = override_columns(runs)
    finals = final_values(df, metric)
    partner = companion(metric)
    partners = final_values(df, partner) if partner is not None else None
    table = pd.DataFrame([_run_row(r, extra, finals, metric, partners) for r in runs])
    per_layer = [c for prefix in PER_LAYER for c in layer_columns(table, prefix)]
    order = [c for c in table.columns if c not in (*per_layer, *TIME_COLUMNS, "error")]
    table = table[[*order, *per_layer, *TIME_COLUMNS, "error"]]
    for col in [*RUN_COLUMNS, *extra, "last_epoch", "last_analysed_epoch"]:
        table[col] = _clean_column(table[col].tolist())
    return table
