"""The learning-rate search part of the aggregate: the runs that an ``hparams_search`` preset
launched (their overrides name it), one search per optimizer (and per other setting that
changes the experiment and varies, the learning rate and seed aside).

Each trial's value is the objective the search minimised (:meth:`RunRecord.objective`: the
final val loss, +inf for a diverged run). The figure ``lr_search`` draws every trial's val loss
against its lr (log axis), one line with markers per search, a star at its best lr and the
diverged trials as crosses along the top edge; the report section lists the best lr of each
search and says plainly when every trial of a search diverged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from agop_sweep.aggregate.discover import Run, experiment_columns
from agop_sweep.aggregate.groups import line_labels, line_order
from agop_sweep.aggregate.layout import legend_below, new_figure, wrap
from agop_sweep.figures.style import log_axis, use_log
from agop_sweep.record import Status

FIGURE = "lr_search"
SEARCH_KEY = "hparams_search"
# Keys that never split a search into two: what it varies (lr) and what it averages (seed).
SEARCH_KEYS = (SEARCH_KEY, "optimizer.lr", "lr", "seed")
CAPTION = "final val loss against lr, one line per learning-rate search"


@dataclass
class Trial:
    run: str
    lr: float
    value: float  # the objective: final val loss, +inf when diverged
    status: str

    @property
    def finite(self) -> bool:
        return self.status == Status.COMPLETED and math.isfinite(self.value)


@dataclass
class Search:
    """The trials of one search (one line of the figure), ordered by lr."""

    label: str
    trials: list[Trial] = field(default_factory=list)

    @property
    def best(self) -> Trial | None:
        done = [t for t in self.trials if t.finite]
        return min(done, key=lambda t: t.value) if done else None

    @property
    def diverged(self) -> list[Trial]:
        return [t for t in self.trials if t.status == Status.DIVERGED]

    @property
    def all_diverged(self) -> bool:
        return bool(self.trials) and len(self.diverged) == len(self.trials)


def is_search_run(run: Run) -> bool:
    return SEARCH_KEY in run.overrides


def searches(runs: Sequence[Run], table: pd.DataFrame) -> list[Search]:
    """The learning-rate searches among ``runs`` (none when no run came from a search)."""
    mine = [r for r in runs if is_search_run(r)]
    if not mine:
        return []
    names = {r.name for r in mine}
    sub = table[table["run"].isin(names)].reset_index(drop=True)
    keys = [k for k in experiment_columns(mine) if k not in SEARCH_KEYS]
    texts = {r.name: r.texts for r in mine}
    labels = line_labels(sub, "optimizer", keys, texts)
    out = {label: Search(label) for label in line_order(sub, "optimizer", keys, labels)}
    for r in mine:
        lr = r.record.run.get("lr")
        if isinstance(lr, (int, float)) and lr > 0:
            out[labels[r.name]].trials.append(Trial(r.name, float(lr), r.record.objective(), r.status))
    for s in out.values():
        s.trials.sort(key=lambda t: t.lr)
    return [s for s in out.values() if s.trials]


# -- the figure ------------------------------------------------------------------------------------
def _handle(color: object, s: Search) -> Line2D:
    best = s.best
    note = (f"best lr {best.lr:.3g} (val loss {best.value:.4g})" if best is not None
            else "every trial diverged" if s.all_diverged else "no completed trial")
    n = len(s.trials)
    text = f"{s.label}: {n} trial{'s' if n > 1 else ''}, {note}"
    return Line2D([], [], color=color, marker="o", ms=4, lw=1.5, label=wrap(text))


def lr_search_figure(found: Sequence[Search]) -> Figure | None:
    """Every trial's final val loss against its lr, one line per search (None without one)."""
    if not found:
        return None
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    colors = list(matplotlib.colormaps["tab10"].colors)
    handles = []
    finite_values = []
    for i, s in enumerate(found):
        color = colors[i % len(colors)]
        done = [t for t in s.trials if t.finite]
        finite_values += [t.value for t in done]
        ax.plot([t.lr for t in done], [t.value for t in done], color=color, marker="o", ms=4, lw=1.5)
        if s.best is not None:
            ax.plot([s.best.lr], [s.best.value], color=color, marker="*", ms=13, mec="black", mew=0.6,
                    ls="none", zorder=5)
        if s.diverged:  # no finite loss: crosses along the top edge, at their lr
            ax.plot([t.lr for t in s.diverged], [0.97] * len(s.diverged), color=color, marker="x", ms=7,
                    mew=1.6, ls="none", transform=ax.get_xaxis_transform(), clip_on=False)
        handles.append(_handle(color, s))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("final val loss")
    if use_log(pd.Series(finite_values, dtype=float).to_numpy()):
        log_axis(ax)
    if not finite_values:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "every trial diverged:\nno finite val loss", transform=ax.transAxes,
                ha="center", va="center", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    if any(s.best is not None for s in found):
        handles.append(Line2D([], [], color="0.3", marker="*", ms=11, ls="none", label="best lr of a search"))
    if any(s.diverged for s in found):
        handles.append(Line2D([], [], color="0.3", marker="x", ms=7, mew=1.6, ls="none",
                              label="diverged (val loss not finite), at its lr"))
    fig.suptitle("Learning-rate search: final val loss against lr")
    legend_below(fig, handles, title=None)
    return fig


# -- the report ------------------------------------------------------------------------------------
def _cell(value: float | None, fmt: str = ".4g") -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


def _summary_rows(found: Sequence[Search]) -> list[str]:
    rows = ["| search | trials | completed | diverged | other | best lr | best val loss |",
            "|---|---|---|---|---|---|---|"]
    for s in found:
        n_done = sum(t.status == Status.COMPLETED for t in s.trials)
        other = len(s.trials) - n_done - len(s.diverged)
        best = s.best
        none = "none: all diverged" if s.all_diverged else "none"
        lr = f"**{best.lr:.4g}**" if best is not None else none
        rows.append(f"| {s.label} | {len(s.trials)} | {n_done} | {len(s.diverged)} | {other} | {lr} | "
                    f"{_cell(best.value if best else None)} |")
    return rows


def _trial_rows(found: Sequence[Search]) -> list[str]:
    rows = ["| search | lr | status | final val loss |", "|---|---|---|---|"]
    for s in found:
        for t in s.trials:
            value = _cell(t.value) or ("inf" if t.status == Status.DIVERGED else "")
            rows.append(f"| {s.label} | {t.lr:.4g} | {t.status} | {value} |")
    return rows


def report_section(found: Sequence[Search], figure: bool) -> list[str]:
    """The report's learning-rate search section (empty without a search)."""
    if not found:
        return []
    n = sum(len(s.trials) for s in found)
    parts = ["## Learning-rate search", "",
             f"{n} trials of {len(found)} search{'es' if len(found) > 1 else ''} (`{SEARCH_KEY}`); each "
             "trial's value is the final val loss, which the search minimised (a diverged trial counts "
             "as +inf).", ""]
    dead = [s for s in found if s.all_diverged]
    if dead and len(dead) == len(found):
        parts += ["**Every trial diverged**: no val loss was finite, so there is no best learning rate; "
                  "search lower learning rates.", ""]
    elif dead:
        parts += [f"**Every trial diverged** in {s.label} ({len(s.trials)} of {len(s.trials)}): it has no "
                  "best learning rate; search lower learning rates there." for s in dead]
        parts.append("")
    parts += [*_summary_rows(found), ""]
    if figure:
        parts += [f"![{CAPTION}]({FIGURE}.png) ([PDF]({FIGURE}.pdf))", ""]
    parts += ["Trials by lr:", "", *_trial_rows(found), ""]
    return parts
