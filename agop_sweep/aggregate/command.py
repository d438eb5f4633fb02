"""The aggregate command: :func:`aggregate` (also called by the multirun callback) and its
command line, :func:`main`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from agop_sweep.aggregate.discover import (
    DEFAULT_STALE_HOURS,
    RUN_COLUMNS,
    AggregateError,
    Run,
    experiment_columns,
    find_runs,
    override_columns,
)
from agop_sweep.aggregate.figures import (
    alignment_figure,
    comparison_figure,
    effective_rank_figure,
    features_comparison_figure,
    final_correlation_figure,
    layers_of,
    losses_figure,
)
from agop_sweep.aggregate.groups import Groups, make_groups
from agop_sweep.aggregate.lr_search import lr_search_figure, searches
from agop_sweep.aggregate.report import ReportInput, report, status_counts
from agop_sweep.aggregate.sweep_x import figure_name, sweep_figure, x_values
from agop_sweep.aggregate.tables import runs_table, tidy_table
from agop_sweep.analyze.names import DEFAULT_METRIC, METRICS
from agop_sweep.errors import exit_on_user_error
from agop_sweep.figures.style import ALPHA_KEYS, LAYER_KEYS, primary_kind, save_figure, schedule_switch, style
from agop_sweep.store.atomic import write_atomic

log = logging.getLogger(__name__)

PROG = "agop-aggregate"
# The directory an aggregate writes into before its outputs are complete (see _staged).
STAGING_PREFIX = ".aggregate-staging-"


@dataclass
class Summary:
    out: Path
    runs: int
    skipped: list[str]
    files: list[Path]
    table: pd.DataFrame
    metrics: pd.DataFrame


def default_metric(runs: Sequence[Run]) -> str:
    """The runs' ``analysis.primary`` (the most common one, with a warning when they differ)."""
    primaries = Counter(r.record.primary_metric() for r in runs)
    if len(primaries) > 1:
        log.warning("runs differ in analysis.primary (%s); plotting %s (choose with --metric)",
                    dict(primaries), primaries.most_common(1)[0][0])
    return primaries.most_common(1)[0][0] if primaries else DEFAULT_METRIC


def _switch(runs: Sequence[Run]) -> int | None:
    switches = Counter(schedule_switch(r.record.checkpoint_epochs()) for r in runs if r.record.epochs)
    return switches.most_common(1)[0][0] if switches else None


def _metrics_format(requested: str) -> str:
    if requested != "auto":
        return requested
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "csv"
    return "parquet"


def _write_bytes(path: Path, data: bytes) -> Path:
    write_atomic(path, lambda f: f.write(data))
    return path


@contextlib.contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A fresh directory inside ``out_dir`` to write every output into; removed, with whatever
    it holds, when the block fails. So a failing aggregate leaves ``out_dir`` as it was rather
    than half a set of tables, figures and report (:func:`_publish` moves the set in)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as e:
        raise AggregateError(f"cannot create the output directory {out_dir}: {e.strerror}") from None
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: Path, out_dir: Path, files: Sequence[Path]) -> list[Path]:
    """Rename each staged file into ``out_dir`` (atomic per file, same file system); only once
    every output is written."""
    published = []
    for path in files:
        target = out_dir / path.relative_to(stage)
        os.replace(path, target)
        published.append(target)
    return published


def _write_tables(out_dir: Path, table: pd.DataFrame, df: pd.DataFrame, fmt: str) -> list[Path]:
    """runs.csv and metrics.<fmt>, atomically."""
    written = [_write_bytes(out_dir / "runs.csv", table.to_csv(index=False).encode())]
    if fmt == "parquet":
        write_atomic(out_dir / "metrics.parquet", lambda f: df.to_parquet(f, index=False))
        written.append(out_dir / "metrics.parquet")
    else:
        written.append(_write_bytes(out_dir / f"metrics.{fmt}", df.to_csv(index=False).encode()))
    return written


def line_groups(runs: Sequence[Run], table: pd.DataFrame, by: str, exclude: Sequence[str] = ()) -> Groups:
    """The figures' lines: by ``by`` and every other setting that changes the experiment
    (labelled as the overrides wrote them); ``exclude``: settings that never split a line."""
    return make_groups(table, by, experiment_columns(runs), {r.name: r.texts for r in runs}, exclude)


def exponent_kind(runs: Sequence[Run]) -> str | None:
    """The NFM and correlation kind that the runs' plain ``alpha_star`` is for (that of their
    ``analysis.primary``); None when the runs differ in it."""
    kinds = {primary_kind(r.record.primary_metric()) for r in runs if r.record.analysis}
    return next(iter(kinds)) if len(kinds) == 1 else None


def figure_builders(runs: Sequence[Run], table: pd.DataFrame, df: pd.DataFrame, metric: str,
                    by: str, x: str | None = None) -> dict[str, Callable[[], Figure | None]]:
    """Per figure, a function that draws it (None when the runs have no data for it); with
    ``x`` (a numeric swept key) also sweep_<x>. Every figure draws the same groups in the same
    colours (sweep_<x> with ``x`` left out of the grouping)."""
    groups = line_groups(runs, table, by)
    switch = _switch(runs)
    kind = exponent_kind(runs)
    analysed = bool(layers_of(df))
    losses = bool(df.loc[df["layer"].isna(), "value"].notna().any())
    ranks = bool(df.loc[df["metric"].str.endswith("_effective_rank"), "value"].notna().any())

    def sweep() -> Figure:
        assert x is not None
        return sweep_figure(df, table, x_values(runs, x), metric, line_groups(runs, table, by, (x,)), x, kind)

    return {
        "comparison": lambda: comparison_figure(df, groups, metric, switch, kind) if analysed else None,
        "losses": lambda: losses_figure(df, groups, switch) if losses else None,
        "final_correlation": lambda: final_correlation_figure(df, groups, metric, kind) if analysed else None,
        "effective_rank": lambda: effective_rank_figure(df, groups, metric, switch) if ranks else None,
        "features": lambda: features_comparison_figure(runs, groups, metric),
        "lr_search": lambda: lr_search_figure(searches(runs, table)),
        "alignment": lambda: alignment_figure(df, groups, switch, metric, kind),
        **({figure_name(x): sweep} if x else {}),
    }


def _draw_figures(out_dir: Path, runs: Sequence[Run], table: pd.DataFrame, df: pd.DataFrame,
                  metric: str, by: str, x: str | None = None) -> tuple[list[str], list[Path]]:
    """Every figure the data allows, one at a time: the names drawn and the files written."""
    drawn: list[str] = []
    written: list[Path] = []
    with style():
        for name, build in figure_builders(runs, table, df, metric, by, x).items():
            fig = build()
            if fig is None:
                log.info("No data for %s; figure left out", name)
                continue
            written += save_figure(fig, out_dir / name)
            drawn.append(name)
    return drawn, written


def _check_options(runs: Sequence[Run], df: pd.DataFrame, table: pd.DataFrame, metric: str, by: str,
                   x: str | None = None) -> None:
    layer_metrics = sorted(set(df.loc[df["layer"].notna(), "metric"]))
    if metric not in layer_metrics and layer_metrics:
        raise AggregateError(
            f"--metric {metric} is not in these runs; choose one of {', '.join(layer_metrics)}")
    if by not in table.columns:
        options = [*RUN_COLUMNS[1:], *override_columns(runs)]
        raise AggregateError(f"--by {by} is not a column of these runs; choose one of {', '.join(options)}")
    if x is not None:
        x_values(runs, x)


def aggregate(dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None,
              metric: str | None = None, by: str = "optimizer", fmt: str = "auto",
              figures: bool = True, stale_after_hours: float = DEFAULT_STALE_HOURS,
              x: str | None = None) -> Summary:
    """Find the runs below ``dirs`` and write the tables, figures and report into ``out``.

    ``figures=False`` writes the tables and the report only (fast, for large sweeps). A run
    whose results.json says running counts as interrupted when its process is gone: it ran on
    this host and its pid is not alive, or it wrote nothing for ``stale_after_hours``.
    ``x`` (a numeric swept key, e.g. ``optimizer.lr``) adds the figure sweep_<x>: the final
    ``metric`` per layer and the final val accuracy against it.

    Raises AggregateError (one line) when there is nothing to aggregate or an option does
    not fit the runs.
    """
    paths = [Path(d) for d in dirs]
    if not paths:
        raise AggregateError("give at least one directory")
    runs, skipped = find_runs(paths, stale_after_hours)
    if not runs:
        why = f" ({len(skipped)} unreadable results.json skipped)" if skipped else ""
        raise AggregateError(f"no runs (results.json) found below {', '.join(map(str, paths))}{why}")
    out_dir = Path(out) if out is not None else paths[0]
    metric = metric or default_metric(runs)
    df = tidy_table(runs)
    table = runs_table(runs, df, metric)
    _check_options(runs, df, table, metric, by, x)
    fmt = _metrics_format(fmt)
    with _staged(out_dir) as stage:
        written = _write_tables(stage, table, df, fmt)
        drawn: list[str] = []
        if figures:
            drawn, files = _draw_figures(stage, runs, table, df, metric, by, x)
            written += files
        what = ReportInput(metric, by, drawn, f"metrics.{fmt}", skipped, x, line_groups(runs, table, by),
                           exponent_kind(runs))
        text = report(runs, table, what)
        written.append(_write_bytes(stage / "report.md", text.encode()))
        written = _publish(stage, out_dir, written)
    return Summary(out_dir, len(runs), skipped, written, table, df)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Merge agop_sweep runs (single runs and sweeps) into tables, figures and a report.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="directories searched for runs")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the first DIR)")
    parser.add_argument("--metric", default=None,
                        help=f"the layer metric to plot: one of {', '.join(METRICS)}, "
                             f"{', '.join(LAYER_KEYS)}, a per-kind exponent ({ALPHA_KEYS[0]}, ...) "
                             "or a spectra metric "
                             "(default: the runs' analysis.primary)")
    parser.add_argument("--x", default=None, metavar="KEY",
                        help="a numeric swept key (e.g. optimizer.lr, model.width): adds sweep_<KEY>, the "
                             "final metric per layer and val accuracy against it, one line per --by value")
    parser.add_argument("--by", default="optimizer",
                        help="the column whose values make the lines (default: optimizer), e.g. lr, "
                             "optimizer.lr, model.width")
    parser.add_argument("--format", dest="fmt", choices=("auto", "parquet", "csv"), default="auto",
                        help="format of the tidy metrics table (auto: parquet when pyarrow is installed)")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="write the tables and the report only")
    parser.add_argument("--stale-after", dest="stale_after", type=_hours, default=DEFAULT_STALE_HOURS,
                        metavar="HOURS",
                        help="a run that says running but wrote no progress for this long counts as "
                             f"interrupted (default: {DEFAULT_STALE_HOURS:g})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    with exit_on_user_error(PROG):
        summary = aggregate(args.dirs, args.out, args.metric, args.by, args.fmt, args.figures,
                            stale_after_hours=args.stale_after, x=args.x)
    print(f"Aggregated {summary.runs} runs: {status_counts(summary.table)}. Wrote into {summary.out}: "
          + ", ".join(p.name for p in summary.files))


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not hours > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of hours")
    return hours
