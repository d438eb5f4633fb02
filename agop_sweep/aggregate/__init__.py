"""Merge runs into one table, comparison figures and a report.

    python -m agop_sweep.aggregate DIR [DIR ...] [--out OUT] [--metric M] [--by COLUMN]
                                   [--stale-after HOURS]
    agop-aggregate DIR [DIR ...]                                  # the same

Every directory below the DIRs that holds a ``results.json`` is a run (single runs and
multirun sweeps alike), counted once however the DIRs overlap; its ``.hydra/overrides.yaml``
gives the columns that tell runs apart. Writes into OUT (default: the first DIR): ``runs.csv``
(one row per run), ``metrics.parquet`` (or ``metrics.csv`` without pyarrow; one row per run x
epoch x layer x metric), the figures ``comparison``, ``losses``, ``final_correlation``,
``effective_rank``, ``features``, ``lr_search`` (.png and .pdf) and ``report.md``. Runs of a
learning-rate search (``hparams_search=...``) get a report section with the best lr of each
search (or the plain statement that every trial diverged) and the ``lr_search`` figure, every
trial's final val loss against its lr. Every launched job counts:
runs that are still running, diverged, failed (also before training: no epochs) or were
interrupted (results.json says running, but the process is gone: same host and a dead pid,
or no progress for ``--stale-after`` hours) are included with their status and drawn as far
as they go; the report lists the failed ones with their error and the interrupted ones with
the command that resumes each. A results.json that cannot be read is skipped with a warning.

Lines average over seeds and ignore run-control keys (``data.root``, ``trainer.plots``, ...);
every other setting that differs splits them, so no line mixes optimizers whatever ``--by`` is,
and a line has one colour in every figure (an optimizer's own, in every aggregate). The report
opens with a per-layer summary (the final metric per layer and line, the best line in bold);
an alpha_star at an end of its grid is marked censored everywhere and never averaged as a
value. Figures size themselves to their layers and lines, legends sit below the panels.

The parts: :mod:`~agop_sweep.aggregate.discover` (finding and reading runs, their status),
:mod:`~agop_sweep.aggregate.tables` (the tidy tables), :mod:`~agop_sweep.aggregate.groups`
(runs into lines), :mod:`~agop_sweep.aggregate.layout` (sizes and legends),
:mod:`~agop_sweep.aggregate.figures` (with :mod:`~agop_sweep.aggregate.bars` and
:mod:`~agop_sweep.aggregate.feature_grid`), :mod:`~agop_sweep.aggregate.lr_search` (the
learning-rate searches), :mod:`~agop_sweep.aggregate.report` (report.md)
and :mod:`~agop_sweep.aggregate.command` (:func:`aggregate` and the command line).
"""

from agop_sweep.aggregate.command import Summary, aggregate, main
from agop_sweep.aggregate.discover import AggregateError

__all__ = ["AggregateError", "Summary", "aggregate", "main"]
