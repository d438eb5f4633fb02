"""Grouping runs into the lines of the comparison figures: one line per value of ``by`` and of
every other setting that changes the experiment and varies; the seeds of a setting make its
mean and band.

A setting splits lines when it is an override that changes the experiment (not a run-control
key such as ``data.root`` or ``trainer.plots``, see
:func:`~agop_sweep.aggregate.discover.is_run_control`) or the loss function, and takes several
values among the runs of one ``by`` value. Labels show the values as the overrides wrote them
(``off``, ``1e-5``), a setting's config value where a run did not override it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import pandas as pd

from agop_sweep.aggregate.discover import is_missing as _missing
from agop_sweep.aggregate.discover import is_run_control, value_key

# Columns never split lines: the seeds of a setting are averaged over.
AVERAGED = ("seed",)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
Texts = Mapping[str, Mapping[str, str]]  # run -> override key -> value as written


def splitting_columns(table: pd.DataFrame, by: str, overrides: Sequence[str]) -> list[str]:
    """The settings besides ``by`` and ``seed`` that change the experiment and take several
    values among the runs of one ``by`` value: they split its line."""
    candidates = [c for c in dict.fromkeys([*overrides, "loss"])
                  if c != by and c not in AVERAGED and not is_run_control(c) and c in table.columns]
    return [c for c in candidates if (table.groupby(by, dropna=False)[c].nunique(dropna=False) > 1).any()]


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
                texts: Texts | None = None) -> dict[str, str]:
    """Run name -> the label of the line it belongs to.

    Runs share a line when they agree on ``by`` and on every setting that splits lines
    (:func:`splitting_columns`); ``seed`` never does: the seeds of a setting make its mean and
    band. A line's label is that of its first run (``1e-5`` and ``0.00001`` are one line).
    """
    columns = [by, *splitting_columns(table, by, overrides)]
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


def line_order(table: pd.DataFrame, by: str, overrides: Sequence[str], labels: dict[str, str]) -> list[str]:
    """Line labels ordered by the ``by`` value, then by the values that split its lines
    (numbers numerically: 1e-05 before 0.0001), then by label."""
    keys = _keys(table, [by, *splitting_columns(table, by, overrides)])
    first: dict[str, tuple[Any, ...]] = {}
    for run, label in labels.items():
        first.setdefault(label, keys[run])
    return sorted(first, key=lambda label: (first[label], label))


@dataclass
class Groups:
    """The lines of every comparison figure: label -> runs, with one colour (and, past the
    palette, one marker) per label, and the loss function of its runs."""

    order: list[str]
    members: dict[str, list[str]]
    colors: dict[str, Any]
    status: dict[str, str]
    markers: dict[str, str] = field(default_factory=dict)
    loss: dict[str, str] = field(default_factory=dict)

    def legend_label(self, label: str) -> str:
        return label + self.status[label]

    def marker(self, label: str) -> str:
        return self.markers.get(label, "o")

    def loss_of(self, label: str) -> str:
        return self.loss.get(label, "mse")

    def losses(self) -> list[str]:
        """The loss functions of the lines, in line order."""
        return list(dict.fromkeys(self.loss_of(g) for g in self.order))


def _note(indexed: pd.DataFrame, label: str, runs: list[str], by: str) -> str:
    """`` lr=0.1 (2 runs, 1 diverged)``: the common learning rate unless the label has it,
    the number of runs and those that did not complete."""
    statuses = Counter(indexed.loc[runs, "status"])
    lrs = {v for v in indexed.loc[runs, "lr"] if isinstance(v, (int, float)) and math.isfinite(v)}
    notes = [f"{c} {s}" for s, c in sorted(statuses.items()) if s != "completed"]
    lr = f" lr={next(iter(lrs)):g}" if len(lrs) == 1 and by != "lr" and "lr=" not in label else ""
    n = len(runs)
    return f"{lr} ({n} run{'s' if n > 1 else ''}" + "".join(f", {x}" for x in notes) + ")"


def _palette(n: int) -> list[Any]:
    """tab10 up to 10 lines; past that tab20, its ten dark shades before its ten light ones."""
    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors)
    tab20 = list(matplotlib.colormaps["tab20"].colors)
    return tab20[0::2] + tab20[1::2]


def make_groups(table: pd.DataFrame, by: str, overrides: Sequence[str], texts: Texts | None = None) -> Groups:
    """The lines of ``table``'s runs (see :func:`line_labels`); ``texts``: per run, the
    overrides as written, for the labels."""
    labels = line_labels(table, by, overrides, texts)
    order = line_order(table, by, overrides, labels)
    members = {g: [r for r in table["run"] if labels[r] == g] for g in order}
    palette = _palette(len(order))
    colors = {g: palette[i % len(palette)] for i, g in enumerate(order)}
    markers = {g: MARKERS[(i // len(palette)) % len(MARKERS)] for i, g in enumerate(order)}
    indexed = table.set_index("run")
    status = {g: _note(indexed, g, members[g], by) for g in order}
    loss = {}
    if "loss" in indexed.columns:
        loss = {g: str(indexed.loc[members[g][0], "loss"] or "mse") for g in order}
    return Groups(order, members, colors, status, markers, loss)
