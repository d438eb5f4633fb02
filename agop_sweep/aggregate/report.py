"""report.md: what was aggregated (every launched job, by how it ended), the figures with
captions, the runs table, the failed runs with their errors and the interrupted runs with the
command that resumes each."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from agop_sweep.aggregate.discover import INTERRUPTED, Run, experiment_columns, last_written
from agop_sweep.aggregate.lr_search import FIGURE as LR_SEARCH_FIGURE
from agop_sweep.aggregate.lr_search import report_section as lr_search_section
from agop_sweep.aggregate.lr_search import searches
from agop_sweep.record import Status

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
        "alignment": "alignment exponent alpha_star (0.5: the ansatz) and weight change per layer "
                     "over epochs",
        **sweep,
    }


def _runs_section(runs: Sequence[Run], table: pd.DataFrame, metric: str) -> list[str]:
    extra = [c for c in experiment_columns(runs) if table[c].nunique(dropna=False) > 1]
    corr_cols = [c for c in table.columns if c.startswith("corr_layer")]
    show = ["run", "status", "optimizer", "lr", "seed", *[c for c in extra if c not in ("optimizer", "seed")],
            "last_epoch", "final_train_loss", "final_val_loss", "final_val_acc", *corr_cols, "wall_seconds"]
    show = list(dict.fromkeys(c for c in show if c in table.columns))
    shown = table[show].copy()
    shown["run"] = shown["run"].map(short_names(list(table["run"])))
    return ["## Runs", "", f"`corr_layer<l>`: `{metric}` at the run's last analysed epoch; run names "
            "without the overrides that all runs share.", "", _markdown_table(shown), ""]


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
    parts += lr_search_section(searches(runs, table), LR_SEARCH_FIGURE in what.figures)
    for name in what.figures:
        if name in captions:
            parts += [f"## {captions[name]}", "", f"![{captions[name]}]({name}.png) ([PDF]({name}.pdf))", ""]
    parts += _ended_sections(runs)
    parts += _runs_section(runs, table, what.metric)
    if what.skipped:
        parts += ["## Skipped", "", *[f"- {s}" for s in what.skipped], ""]
    return "\n".join(parts)
