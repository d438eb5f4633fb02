"""The learning-rate search part of the aggregate: the runs that an ``hparams_search`` preset
launched (their overrides name it), one search per optimizer (and per other setting that
changes the experiment and varies, the learning rate and seed aside).

Each trial's value is the objective the search minimised (:meth:`RunRecord.objective`: the
final val loss, +inf for a diverged run). The figure ``lr_search`` draws every trial's val loss
against its lr (log axis), one line with markers per search, a star at its best lr and the
diverged trials as crosses along the top edge, and the chance level of each search: the val
loss of the constant predictor that outputs 1/c for each of the c classes, (c - 1) / c^2 for
MSE against one-hot targets (0.09 for 10 classes) and ln c for cross-entropy, whatever the
class frequencies. The report section lists the best lr of each search, says plainly when
every trial of a search diverged, and flags a search in which no trial beats chance: its
"best lr" is then not a result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from agop_sweep.aggregate.discover import Run, experiment_columns
from agop_sweep.aggregate.groups import group_colors, group_gid, line_labels, line_order
from agop_sweep.aggregate.layout import legend_below, new_figure, wrap
from agop_sweep.figures.style import log_axis, use_log
from agop_sweep.store.record import RunRecord, Status

FIGURE = "lr_search"
SEARCH_KEY = "hparams_search"
# Keys that never split a search into two: what it varies (lr) and what it averages (seed).
SEARCH_KEYS = (SEARCH_KEY, "optimizer.lr", "lr", "seed")
CAPTION = "final val loss against lr, one line per learning-rate search"
CHANCE_GID = "chance"
# digits and SVHN have 10 classes; only the synthetic data's config names its number.
DEFAULT_CLASSES = 10


def chance_loss(loss: str, n_classes: int) -> float:
    """The loss of the constant predictor 1/c per class: (c - 1) / c^2 for MSE against one-hot
    targets (mean over all entries), ln c for cross-entropy; the same for any class balance."""
    c = max(int(n_classes), 2)
    return math.log(c) if loss == "ce" else (c - 1) / c**2


def record_chance(record: RunRecord) -> float:
    classes = record.setting("data.n_classes")
    return chance_loss(record.loss_name(), classes if isinstance(classes, int) else DEFAULT_CLASSES)


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
    chance: float = math.nan  # the val loss of a constant predictor (see chance_loss)
    optimizer: str | None = None

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

    @property
    def beats_chance(self) -> bool:
        """Whether some completed trial's val loss is below the chance level."""
        best = self.best
        return best is not None and (not math.isfinite(self.chance) or best.value < self.chance)


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
    labels = line_labels(sub, "optimizer", keys, texts, exclude=SEARCH_KEYS)
    out = {label: Search(label) for label in line_order(sub, "optimizer", keys, labels, exclude=SEARCH_KEYS)}
    for r in mine:
        lr = r.record.run.get("lr")
        search = out[labels[r.name]]
        search.chance, search.optimizer = record_chance(r.record), r.record.run.get("optimizer")
        if isinstance(lr, (int, float)) and lr > 0:
            search.trials.append(Trial(r.name, float(lr), r.record.objective(), r.status))
    for s in out.values():
        s.trials.sort(key=lambda t: t.lr)
    return [s for s in out.values() if s.trials]


# -- the figure ------------------------------------------------------------------------------------
def _handle(color: object, s: Search) -> Line2D:
    best = s.best
    note = (f"best lr {best.lr:.3g} (val loss {best.value:.4g})" if best is not None
            else "every trial diverged" if s.all_diverged else "no completed trial")
    if best is not None and not s.beats_chance:
        note = f"no trial beats chance ({s.chance:.4g}); lowest val loss {best.value:.4g} at lr {best.lr:.3g}"
    n = len(s.trials)
    text = f"{s.label}: {n} trial{'s' if n > 1 else ''}, {note}"
    return Line2D([], [], color=color, marker="o", ms=4, lw=1.5, label=wrap(text))


def _chance_lines(ax: Axes, found: Sequence[Search], colors: dict[str, object]) -> list[Line2D]:
    """A dashed line at each search's chance level (one grey line when they share it); its
    legend entries."""
    levels = sorted({round(s.chance, 12) for s in found if math.isfinite(s.chance)})
    if len(levels) == 1:
        ax.axhline(levels[0], color="0.35", ls="--", lw=1.2, zorder=1, gid=CHANCE_GID)
        return [Line2D([], [], color="0.35", ls="--", lw=1.2,
                       label=f"chance: val loss {levels[0]:.4g} of the constant predictor 1/c")]
    for s in found:
        if math.isfinite(s.chance):
            ax.axhline(s.chance, color=colors[s.label], ls="--", lw=1.2, zorder=1, gid=CHANCE_GID)
    return [Line2D([], [], color="0.35", ls="--", lw=1.2,
                   label="chance of each search (its colour): the constant predictor 1/c")] if levels else []


def lr_search_figure(found: Sequence[Search]) -> Figure | None:
    """Every trial's final val loss against its lr, one line per search, and the chance level
    (the y axis always shows it: trials that all sit at chance never look like a trend);
    None without a search."""
    if not found:
        return None
    fig = new_figure(6.4, 4.0)
    ax = fig.subplots()
    colors, _ = group_colors([s.label for s in found], {s.label: s.optimizer for s in found})
    handles = []
    finite_values = []
    for s in found:
        color, gid = colors[s.label], group_gid(s.label)
        done = [t for t in s.trials if t.finite]
        finite_values += [t.value for t in done]
        ax.plot([t.lr for t in done], [t.value for t in done], color=color, marker="o", ms=4, lw=1.5, gid=gid,
                label=s.label)
        if s.best is not None:
            ax.plot([s.best.lr], [s.best.value], color=color, marker="*" if s.beats_chance else "o",
                    ms=13 if s.beats_chance else 4, mec="black", mew=0.6, ls="none", zorder=5, gid=gid)
        if s.diverged:  # no finite loss: crosses along the top edge, at their lr
            ax.plot([t.lr for t in s.diverged], [0.97] * len(s.diverged), color=color, marker="x", ms=7,
                    mew=1.6, ls="none", transform=ax.get_xaxis_transform(), clip_on=False, gid=gid)
        handles.append(_handle(color, s))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("final val loss")
    chances = [s.chance for s in found if math.isfinite(s.chance)]
    if finite_values and use_log(pd.Series(finite_values + chances, dtype=float).to_numpy()):
        log_axis(ax)
    if not finite_values:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "every trial diverged:\nno finite val loss", transform=ax.transAxes,
                ha="center", va="center", fontsize=11)
    else:
        handles += _chance_lines(ax, found, colors)
        _include(ax, [*finite_values, *chances])
    ax.grid(True, which="major", alpha=0.3)
    if any(s.best is not None and s.beats_chance for s in found):
        handles.append(Line2D([], [], color="0.3", marker="*", ms=11, ls="none", label="best lr of a search"))
    if any(s.diverged for s in found):
        handles.append(Line2D([], [], color="0.3", marker="x", ms=7, mew=1.6, ls="none",
                              label="diverged (val loss not finite), at its lr"))
    fig.suptitle("Learning-rate search: final val loss against lr")
    legend_below(fig, handles, title=None)
    return fig


def _include(ax: Axes, values: list[float]) -> None:
    """A y range that holds every value and the chance level, with a margin."""
    low, high = min(values), max(values)
    if ax.get_yscale() == "log":
        ax.set_ylim(low / 1.15, high * 1.15)
    else:
        pad = 0.08 * (high - low) or 0.05 * abs(high) or 0.05
        ax.set_ylim(low - pad, high + pad)


# -- the report ------------------------------------------------------------------------------------
def _cell(value: float | None, fmt: str = ".4g") -> str:
    return "" if value is None or not math.isfinite(value) else format(value, fmt)


def _summary_rows(found: Sequence[Search]) -> list[str]:
    rows = ["| search | trials | completed | diverged | other | best lr | best val loss | chance |",
            "|---|---|---|---|---|---|---|---|"]
    for s in found:
        n_done = sum(t.status == Status.COMPLETED for t in s.trials)
        other = len(s.trials) - n_done - len(s.diverged)
        best = s.best
        none = "none: all diverged" if s.all_diverged else "none"
        lr = none if best is None else f"**{best.lr:.4g}**" if s.beats_chance else \
            f"none: no trial beats chance (lowest at {best.lr:.4g})"
        rows.append(f"| {s.label} | {len(s.trials)} | {n_done} | {len(s.diverged)} | {other} | {lr} | "
                    f"{_cell(best.value if best else None)} | {_cell(s.chance)} |")
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
             "as +inf). Chance: the val loss of the constant predictor 1/c per class ((c - 1) / c\u00b2 "
             "for MSE, ln c for cross-entropy).", ""]
    dead = [s for s in found if s.all_diverged]
    if dead and len(dead) == len(found):
        parts += ["**Every trial diverged**: no val loss was finite, so there is no best learning rate; "
                  "search lower learning rates.", ""]
    elif dead:
        parts += [f"**Every trial diverged** in {s.label} ({len(s.trials)} of {len(s.trials)}): it has no "
                  "best learning rate; search lower learning rates there." for s in dead]
        parts.append("")
    for s in found:
        if s.best is not None and not s.beats_chance:
            parts += [f"**No trial beats chance** in {s.label}: its lowest final val loss, "
                      f"{s.best.value:.4g} (lr {s.best.lr:.4g}), is not below {s.chance:.4g}, the val loss "
                      "of a constant predictor (1/c per class). None of its trials learnt anything, so it "
                      "has no best learning rate; search elsewhere, or train longer.", ""]
    parts += [*_summary_rows(found), ""]
    if figure:
        parts += [f"![{CAPTION}]({FIGURE}.png) ([PDF]({FIGURE}.pdf))", ""]
    parts += ["Trials by lr:", "", *_trial_rows(found), ""]
    return parts
