"""report.md: what was aggregated (every launched job, by how it ended), the per-layer summary
(per layer and line, the final value of the plotted metric and the best line), the figures
with captions, the runs table, the failed runs with their errors and the interrupted runs with
the command that resumes each."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from agop_sweep.aggregate.discover import INTERRUPTED, Run, experiment_columns, last_written
from agop_sweep.aggregate.groups import Groups
from agop_sweep.aggregate.lr_search import FIGURE as LR_SEARCH_FIGURE
from agop_sweep.aggregate.lr_search import report_section as lr_search_section
from agop_sweep.aggregate.lr_search import searches
from agop_sweep.aggregate.tables import layer_columns
from agop_sweep.figures.style import (
    alpha_mean_text,
    alpha_text,
    is_alpha_star,
    is_correlation,
    kind_text,
    metric_kind,
)
from agop_sweep.store.record import Status

FIGURES = ("comparison", "losses", "final_correlation", "effective_rank", "features")
# The order in which the counts name the statuses (any other after them, by name).
STATUS_ORDER = (Status.COMPLETED.value, Status.RUNNING.value, INTERRUPTED, Status.DIVERGED.value,
                Status.FAILED.value)


@dataclass
class ReportInput:
    """What the report describes besides the runs and their table."""

    metric: str
    by: str
    figures: list[str]
    metrics_file: str
    skipped: list[str]
    x: str | None = None
    groups: Groups | None = None
    kind: str | None = None  # the NFM and correlation kind of plain alpha_star


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


def status_counts(table: pd.DataFrame) -> str:
    """``5 completed, 1 diverged``: how many runs ended how (completed, running, interrupted,
    diverged, failed; only those that occur)."""
    counts = Counter(table["status"])
    order = [*STATUS_ORDER, *sorted(set(counts) - set(STATUS_ORDER))]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts[s])


def _markdown_table(table: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _captions(metric: str, by: str, x: str | None = None) -> dict[str, str]:
    sweep = {} if x is None else {
        f"sweep_{x}": f"final {metric} per layer and final val accuracy against {x}, one line per {by}"}
    return {
        "comparison": f"{metric} per layer over epochs, one line per {by}",
        "losses": "train and val loss and accuracy",
        "final_correlation": f"{metric} per layer at the last analysed epoch",
        "effective_rank": "effective rank of the AGOP and the NFM per layer",
        "features": "layer-0 NFM and AGOP diagonals and top eigenvectors, one row per line",
        "alignment": "alignment exponent alpha* (the ansatz predicts 0.5 for the raw NFM), the correlation "
                     "at alpha* and the weight change per layer over epochs",
        **sweep,
    }


def _alpha_cell(value: Any, corr: Any = None) -> str:
    """An alpha_star with its correlation: ``0.62 (0.45)``, ``\u2265 2 (0.33)`` at the grid's end."""
    if not _finite(value):
        return ""
    return alpha_text(float(value)) + (f" ({float(corr):.2f})" if _finite(corr) else "")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _runs_section(runs: Sequence[Run], table: pd.DataFrame, metric: str) -> list[str]:
    extra = [c for c in experiment_columns(runs) if table[c].nunique(dropna=False) > 1]
    corr_cols = layer_columns(table, "corr_layer")
    show = ["run", "status", "optimizer", "lr", "seed", *[c for c in extra if c not in ("optimizer", "seed")],
            "last_epoch", "final_train_loss", "final_val_loss", "final_val_acc", *corr_cols, "wall_seconds"]
    show = list(dict.fromkeys(c for c in show if c in table.columns))
    shown = table[show].copy().astype(object)
    note = f"`corr_layer<l>`: `{metric}` at the run's last analysed epoch"
    if is_alpha_star(metric):
        for c in corr_cols:
            partner = table.get(f"alpha_{c}", pd.Series([None] * len(table)))
            shown[c] = [_alpha_cell(v, p) for v, p in zip(table[c], partner, strict=True)]
        note += (", with the correlation at that exponent in parentheses; \u2265 2 and \u2264 0 are the "
                 "ends of the grid searched (censored: the best exponent may lie beyond)")
    shown["run"] = shown["run"].map(short_names(list(table["run"])))
    return ["## Runs", "", f"{note}; run names without the overrides that all runs share.", "",
            _markdown_table(shown), ""]


# -- the per-layer summary ------------------------------------------------------------------------
def _spread(values: list[float], fmt: Any) -> str:
    """``0.62 (0.60\u20130.64)``: the mean and, with several runs, the min-max range."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return fmt(mean)
    return f"{fmt(mean)} ({fmt(min(values))}\u2013{fmt(max(values))})"


def _alpha_summary(values: list[float], corrs: list[float]) -> str:
    """A line's alpha_star over its runs, as far as values at the grid's ends allow (see
    :func:`~agop_sweep.figures.style.alpha_mean_text`), the range, the mean correlation."""
    cell = alpha_mean_text(values)
    if len(values) > 1 and len({alpha_text(v) for v in values}) > 1 and "&" not in cell:
        cell += f" ({alpha_text(min(values))}\u2013{alpha_text(max(values))})"
    return cell + (f"; corr {sum(corrs) / len(corrs):.2f}" if corrs else "")


def _column(table: pd.DataFrame, runs: list[str], column: str) -> list[float]:
    if column not in table.columns:
        return []
    values = table.loc[table["run"].isin(runs), column]
    return [float(v) for v in values if _finite(v)]


def _best_lines(cells: dict[str, list[float]]) -> set[str]:
    """The lines whose mean is the highest (ties: all of them)."""
    means = {g: sum(v) / len(v) for g, v in cells.items() if v}
    top = max(means.values(), default=None)
    return {g for g, m in means.items() if top is not None and abs(m - top) <= 1e-12}


def summary_section(table: pd.DataFrame, groups: Groups, metric: str, kind: str | None) -> list[str]:
    """Per layer and line, the final ``metric`` (mean and min-max over the line's runs) with
    the best line per layer in bold (for a correlation: the highest), and the final val
    accuracy: the direct answer to "which optimizer aligns best, per layer"."""
    layers = [int(c[len("corr_layer"):]) for c in layer_columns(table, "corr_layer")]
    if not layers:
        return []
    alpha = is_alpha_star(metric)
    ranked = is_correlation(metric)
    fmt = (lambda v: f"{v:.3g}") if metric == "weight_change" else (lambda v: f"{v:.2f}")
    rows = []
    best = {l: _best_lines({g: _column(table, groups.members[g], f"corr_layer{l}") for g in groups.order})
            for l in layers} if ranked else {}
    for g in groups.order:
        runs = groups.members[g]
        cells = []
        for l in layers:
            values = _column(table, runs, f"corr_layer{l}")
            if not values:
                cells.append("n/a")
                continue
            text = _alpha_summary(values, _column(table, runs, f"alpha_corr_layer{l}")) if alpha \
                else _spread(values, fmt)
            cells.append(f"**{text}**" if g in best.get(l, ()) else text)
        acc = _column(table, runs, "final_val_acc")
        acc_text = _spread(acc, lambda v: f"{v:.3f}") if acc else "n/a"
        label = g.replace("|", "\\|")
        rows.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + f" | {acc_text} |")
    header = ["| line | runs | " + " | ".join(f"layer {l}" for l in layers) + " | final val acc |",
              "|---|---|" + "---|" * len(layers) + "---|"]
    what = f"`{metric}`" + (f" ({kind_text(metric_kind(metric, kind))})" if alpha else "")
    note = (f"Per layer and line (the lines of the figures): {what} at each run's last analysed epoch, "
            "the mean over the line's runs (seeds) and, in parentheses, their min\u2013max; the final val "
            "accuracy likewise. ")
    if ranked:
        note += "**Bold**: the highest mean of each layer."
    elif alpha:
        note += ("No line is marked best: a larger exponent is not a better alignment. `corr`: the mean "
                 "correlation at alpha*. \u2265 2 and \u2264 0 are the ends of the grid searched (censored: "
                 "the best exponent may lie beyond), never averaged as values: where some runs sit at the "
                 "top, the mean is a lower bound (\u2265 m), at the bottom an upper bound (\u2264 m), and "
                 "with runs at both ends there is none (\u2264 0 & \u2265 2).")
    else:
        note += "No line is marked best for this metric."
    return [f"## Per layer: final {metric}", "", note, "", *header, *rows, ""]


def _when(seconds: float | None) -> str:
    return "unknown" if seconds is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _ended_sections(runs: Sequence[Run]) -> list[str]:
    """The runs that did not complete: failed (their error), diverged (the epoch), and
    interrupted (when they last wrote progress, and the command that resumes each)."""
    parts: list[str] = []
    failed = [r for r in runs if r.status == Status.FAILED]
    if failed:
        parts += ["## Failed runs", "", *[f"- `{r.name}`: {r.record.error or 'no error recorded'}"
                                          for r in failed], ""]
    diverged = [r for r in runs if r.status == Status.DIVERGED]
    if diverged:
        epochs = {r.name: r.record.diverged_epoch for r in diverged}
        parts += ["## Diverged runs", "", *[f"- `{name}`: loss not finite at epoch {'?' if e is None else e}"
                                            for name, e in epochs.items()], ""]
    interrupted = [r for r in runs if r.status == INTERRUPTED]
    if interrupted:
        parts += ["## Interrupted runs", "", "results.json says running, but the run's process is gone "
                  "(or wrote nothing for a long time). Resume each with:", ""]
        for r in interrupted:
            last = r.record.last_epoch()
            parts += [f"- `{r.name}`: last epoch {last['epoch'] if last else 'none'}, progress last written "
                      f"{_when(last_written(r.record))}", "", "  ```", f"  {r.resume_command()}", "  ```", ""]
    return parts


def report(runs: Sequence[Run], table: pd.DataFrame, what: ReportInput) -> str:
    """The markdown text of report.md."""
    captions = _captions(what.metric, what.by, what.x)
    parts = [
        "# agop_sweep: aggregate report",
        "",
        f"{len(runs)} runs launched: {status_counts(table)}.",
        "",
        f"Lines by `{what.by}` and every other setting that changes the experiment and varies; "
        f"mean over seeds with a min-max band; correlation `{what.metric}`.",
        "",
        "Files: [runs.csv](runs.csv) (one row per run), "
        f"[{what.metrics_file}]({what.metrics_file}) (one row per run x epoch x layer x metric).",
        "",
    ]
    if what.groups is not None:
        parts += summary_section(table, what.groups, what.metric, what.kind)
    parts += lr_search_section(searches(runs, table), LR_SEARCH_FIGURE in what.figures)
    for name in what.figures:
        if name in captions:
            parts += [f"## {captions[name]}", "", f"![{captions[name]}]({name}.png) ([PDF]({name}.pdf))", ""]
    parts += _ended_sections(runs)
    parts += _runs_section(runs, table, what.metric)
    if what.skipped:
        parts += ["## Skipped", "", *[f"- {s}" for s in what.skipped], ""]
    return "\n".join(parts)
