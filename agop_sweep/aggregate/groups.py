"""Grouping runs into the lines of the comparison figures: one line per value of ``by`` and of
every other setting that changes the experiment and varies; the seeds of a setting make its
mean and band.

Every setting that differs between runs splits lines, unless it is ``by`` itself, ``seed``
(averaged over) or a run-control key such as ``data.root`` or ``trainer.plots`` (see
:func:`~agop_sweep.aggregate.discover.is_run_control`):

- the optimizer, the loss function and every override split lines when they take several
  values among the runs of one ``by`` value;
- the dataset, width, depth and learning rate that results.json records for every run (the
  standard columns) split them when they tell apart runs that agree on everything above, so
  that an optimizer's default learning rate adds nothing to a label that names the optimizer.

A standard column and the override that sets it (``lr`` and ``optimizer.lr``, ``width`` and
``model.width``, ``dataset`` and ``data``, ``depth`` and ``model.depth``) are one setting. Labels
show the values as the overrides wrote them (``off``, ``1e-5``), a setting's config value where
a run did not override it.

Colours (:func:`group_colors`) follow the optimizer, so that a line has one colour in every
figure of an aggregate and an optimizer the same colour in every aggregate.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

from agop_sweep.aggregate.discover import is_missing as _missing
from agop_sweep.aggregate.discover import is_run_control, value_key

# Columns never split lines: the seeds of a setting are averaged over.
AVERAGED = ("seed",)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
Texts = Mapping[str, Mapping[str, str]]  # run -> override key -> value as written
# Settings every run carries that split lines whenever they vary within one ``by`` value.
ALWAYS = ("optimizer", "loss")
# Standard columns that split lines only when they tell apart runs that agree on the rest.
DERIVED = ("dataset", "width", "depth", "lr")
# A standard column and the override key that sets it name one setting.
ALIASES = {"lr": "optimizer.lr", "dataset": "data", "width": "model.width", "depth": "model.depth",
           "seed": "seed", "optimizer": "optimizer", "loss": "loss"}
# One colour per optimizer, the same in every aggregate (tab10's first four), and the
# sequential map of its hue for an optimizer with several lines.
OPTIMIZER_COLORS = {"sgd": 0, "adam": 1, "muon": 2, "muon_seed": 3}
FAMILY_MAPS = ("Blues", "Oranges", "Greens", "Reds", "Purples", "YlOrBr", "RdPu", "Greys", "YlGn", "GnBu")
SHADES = (0.45, 0.95)  # the span of a family's map used for its lines, light to dark
UNKNOWN_COLOR = "0.45"


def same_setting(a: str, b: str) -> bool:
    """Whether column names ``a`` and ``b`` name one setting (``lr`` and ``optimizer.lr``)."""
    return a == b or ALIASES.get(a) == b or ALIASES.get(b) == a


def _excluded(column: str, by: str, exclude: Sequence[str]) -> bool:
    return (is_run_control(column) or any(same_setting(column, k) for k in (by, *AVERAGED, *exclude)))


def _refines(table: pd.DataFrame, columns: Sequence[str], column: str) -> bool:
    """Whether ``column`` takes several values among runs that agree on ``columns``."""
    seen: dict[tuple[Any, ...], set[Any]] = {}
    for _, row in table.iterrows():
        seen.setdefault(tuple(value_key(row[c]) for c in columns), set()).add(value_key(row[column]))
    return any(len(values) > 1 for values in seen.values())


def splitting_columns(table: pd.DataFrame, by: str, overrides: Sequence[str],
                      exclude: Sequence[str] = ()) -> list[str]:
    """The settings besides ``by``, ``seed`` and ``exclude`` that split ``by``'s lines: the
    optimizer, the loss and the overrides that change the experiment when they take several
    values among the runs of one ``by`` value, then the standard columns (dataset, width, depth,
    lr) that tell apart runs agreeing on all of those (see the module docstring)."""
    present = [c for c in dict.fromkeys([*ALWAYS[:1], *overrides, *ALWAYS[1:]])
               if c in table.columns and not _excluded(c, by, exclude)]
    kept = [c for c in present if _refines(table, [by], c)]
    covered = [by, *overrides, *exclude]
    for c in DERIVED:
        if c not in table.columns or _excluded(c, by, exclude) or any(same_setting(c, o) for o in covered):
            continue
        if _refines(table, [by, *kept], c):
            kept.append(c)
    return kept


def value_text(v: Any) -> str:
    """A setting's value as a user writes it in an override (``true``, ``0.001``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:g}" if isinstance(v, float) else str(v)


def _label(row: pd.Series, columns: Sequence[str], texts: Mapping[str, str]) -> str:
    """``adam, model.depth=3, loss=ce``: the line's values, ``by`` first; a setting the run
    does not have (another dataset's option) is left out."""
    parts = []
    for i, col in enumerate(columns):
        v = row[col]
        if i > 0 and _missing(v) and col not in texts:
            continue
        text = texts.get(col) or ("n/a" if _missing(v) else value_text(v))
        parts.append(text if col == "optimizer" else f"{col}={text}")
    return ", ".join(parts)


def _keys(table: pd.DataFrame, columns: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Run name -> its line's identity: the values of ``columns``, numbers compared as numbers."""
    return {row["run"]: tuple(value_key(row[c]) for c in columns) for _, row in table.iterrows()}


def line_labels(table: pd.DataFrame, by: str, overrides: Sequence[str],
                texts: Texts | None = None, exclude: Sequence[str] = ()) -> dict[str, str]:
    """Run name -> the label of the line it belongs to.

    Runs share a line when they agree on ``by`` and on every setting that splits lines
    (:func:`splitting_columns`; never ``seed``, whose values make a line's mean and band, nor
    ``exclude``). A line's label is that of its first run (``1e-5`` and ``0.00001`` are one line).
    """
    columns = [by, *splitting_columns(table, by, overrides, exclude)]
    keys = _keys(table, columns)
    by_key: dict[tuple[Any, ...], str] = {}
    taken: set[str] = set()
    labels = {}
    for _, row in table.iterrows():
        key = keys[row["run"]]
        if key not in by_key:
            label = _label(row, columns, (texts or {}).get(row["run"], {}))
            while label in taken:  # two values that print alike
                label += "'"
            by_key[key] = label
            taken.add(label)
        labels[row["run"]] = by_key[key]
    return labels


def line_order(table: pd.DataFrame, by: str, overrides: Sequence[str], labels: dict[str, str],
               exclude: Sequence[str] = ()) -> list[str]:
    """Line labels ordered by the ``by`` value, then by the values that split its lines
    (numbers numerically: 1e-05 before 0.0001), then by label."""
    keys = _keys(table, [by, *splitting_columns(table, by, overrides, exclude)])
    first: dict[str, tuple[Any, ...]] = {}
    for run, label in labels.items():
        first.setdefault(label, keys[run])
    return sorted(first, key=lambda label: (first[label], label))


@dataclass
class Groups:
    """The lines of every comparison figure: label -> runs, with one colour and one marker per
    label (:func:`group_colors`), the optimizer and the loss function of its runs."""

    order: list[str]
    members: dict[str, list[str]]
    colors: dict[str, Any]
    status: dict[str, str]
    markers: dict[str, str] = field(default_factory=dict)
    loss: dict[str, str] = field(default_factory=dict)
    optimizer: dict[str, str | None] = field(default_factory=dict)

    def legend_label(self, label: str) -> str:
        return label + self.status[label]

    def marker(self, label: str) -> str:
        return self.markers.get(label, "o")

    def loss_of(self, label: str) -> str:
        return self.loss.get(label, "mse")

    def losses(self) -> list[str]:
        """The loss functions of the lines, in line order."""
        return list(dict.fromkeys(self.loss_of(g) for g in self.order))

    @property
    def shaded(self) -> bool:
        """Whether an optimizer has several lines (shades of its colour: markers tell them apart)."""
        return len(set(self.optimizer.values())) < len(self.order) if self.optimizer else len(self.order) > 10


def group_gid(label: str) -> str:
    """The gid of every artist drawn for line ``label`` (tests find a figure's groups by it)."""
    return f"group:{label}"


def _note(indexed: pd.DataFrame, label: str, runs: list[str], by: str) -> str:
    """`` lr=0.1 (2 runs, 1 diverged)``: the common learning rate unless the label has it,
    the number of runs and those that did not complete."""
    statuses = Counter(indexed.loc[runs, "status"])
    lrs = {v for v in indexed.loc[runs, "lr"] if isinstance(v, (int, float)) and math.isfinite(v)}
    notes = [f"{c} {s}" for s, c in sorted(statuses.items()) if s != "completed"]
    lr = f" lr={next(iter(lrs)):g}" if len(lrs) == 1 and by != "lr" and "lr=" not in label else ""
    n = len(runs)
    return f"{lr} ({n} run{'s' if n > 1 else ''}" + "".join(f", {x}" for x in notes) + ")"


def family_index(optimizer: str | None) -> int | None:
    """The tab10 index of an optimizer's colour: fixed for the four built-in ones, else drawn
    from the other six by a hash of its name (the same in every aggregate)."""
    if optimizer is None:
        return None
    if optimizer in OPTIMIZER_COLORS:
        return OPTIMIZER_COLORS[optimizer]
    return 4 + zlib.crc32(optimizer.encode()) % 6


def group_colors(order: Sequence[str],
                 optimizer: Mapping[str, str | None]) -> tuple[dict[str, Any], dict[str, str]]:
    """Per line, its colour and marker. An optimizer with one line gets its own tab10 colour;
    with several, shades of that hue from light to dark in line order, each with its own
    marker; lines without an optimizer are grey."""
    tab10 = list(matplotlib.colormaps["tab10"].colors)
    families: dict[int | None, list[str]] = {}
    for g in order:
        families.setdefault(family_index(optimizer.get(g)), []).append(g)
    colors: dict[str, Any] = {}
    markers: dict[str, str] = {}
    for index, lines in families.items():
        if index is None:
            shades = [UNKNOWN_COLOR] * len(lines)
        elif len(lines) == 1:
            shades = [tab10[index]]
        else:
            cmap = matplotlib.colormaps[FAMILY_MAPS[index]]
            shades = [tuple(cmap(x)) for x in np.linspace(*SHADES, len(lines))]
        for k, (g, color) in enumerate(zip(lines, shades, strict=True)):
            colors[g], markers[g] = color, MARKERS[k % len(MARKERS)]
    return colors, markers


def make_groups(table: pd.DataFrame, by: str, overrides: Sequence[str], texts: Texts | None = None,
                exclude: Sequence[str] = ()) -> Groups:
    """The lines of ``table``'s runs (see :func:`line_labels`); ``texts``: per run, the
    overrides as written, for the labels; ``exclude``: settings that never split a line (the
    x axis of a sweep figure)."""
    labels = line_labels(table, by, overrides, texts, exclude)
    order = line_order(table, by, overrides, labels, exclude)
    members = {g: [r for r in table["run"] if labels[r] == g] for g in order}
    indexed = table.set_index("run")
    optimizer = {g: _optimizer_of(indexed, members[g]) for g in order}
    colors, markers = group_colors(order, optimizer)
    status = {g: _note(indexed, g, members[g], by) for g in order}
    loss = {}
    if "loss" in indexed.columns:
        loss = {g: str(indexed.loc[members[g][0], "loss"] or "mse") for g in order}
    return Groups(order, members, colors, status, markers, loss, optimizer)


def _optimizer_of(indexed: pd.DataFrame, runs: list[str]) -> str | None:
    """The one optimizer of a line's runs (None when unknown, or when a caller's own grouping
    mixed several)."""
    if "optimizer" not in indexed.columns:
        return None
    values = {v for v in indexed.loc[runs, "optimizer"] if not _missing(v)}
    return str(next(iter(values))) if len(values) == 1 else None
