"""Merge runs into one table, comparison figures and a report.

    python -m agop_sweep.aggregate DIR [DIR ...] [--out OUT] [--metric M] [--by COLUMN]
    agop-aggregate DIR [DIR ...]                                  # the same

Every directory below the DIRs that holds a ``results.json`` is a run (single runs and
multirun sweeps alike), counted once however the DIRs overlap; its ``.hydra/overrides.yaml``
gives the columns that tell runs apart. Writes into OUT (default: the first DIR): ``runs.csv``
(one row per run), ``metrics.parquet`` (or ``metrics.csv`` without pyarrow; one row per run x
epoch x layer x metric), the figures ``comparison``, ``losses``, ``final_correlation``,
``effective_rank``, ``features`` (.png and .pdf) and ``report.md``. Runs that are still
running, diverged or failed are included with their status and drawn as far as they go; a
results.json that cannot be read is skipped with a warning.

The parts: :mod:`~agop_sweep.aggregate.discover` (finding and reading runs),
:mod:`~agop_sweep.aggregate.tables` (the tidy tables), :mod:`~agop_sweep.aggregate.groups`
(runs into lines), :mod:`~agop_sweep.aggregate.figures`, :mod:`~agop_sweep.aggregate.report`
(report.md) and :mod:`~agop_sweep.aggregate.command` (:func:`aggregate` and the command line).
"""

from agop_sweep.aggregate.command import Summary, aggregate, main
from agop_sweep.aggregate.discover import AggregateError

__all__ = ["AggregateError", "Summary", "aggregate", "main"]
