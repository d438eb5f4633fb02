"""Hydra callbacks: the size of a sweep for its jobs, and aggregating a sweep when it ends.

:class:`SweepSize` (always on, see conf/config.yaml) tells every job of a multirun how many
jobs the sweep launches, so that jobs running side by side on one machine split its cores
among the jobs that really run at once (3 joblib workers for a one-job sweep: all cores).

:class:`AggregateOnMultirunEnd` aggregates a multirun sweep when it ends.

Enable it for one sweep from the command line,

    python -m agop_sweep -m optimizer=sgd,adam,muon \\
        +hydra.callbacks.aggregate._target_=agop_sweep.run.callbacks.AggregateOnMultirunEnd

or for every sweep in the config (``hydra.callbacks.aggregate``). Hydra does not call
``on_multirun_end`` when a job of the sweep raised; ``agop-aggregate SWEEP_DIR`` then does the
same by hand. A failure here is logged and never fails the sweep: its runs are done.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The environment variable that carries the sweep's job count to its jobs (joblib's and
# submitit's workers inherit the environment of the process that sets it).
SWEEP_JOBS_ENV = "AGOP_SWEEP_JOBS"


def count_jobs(config: DictConfig) -> int | None:
    """Jobs a multirun launches at once at most: the product of the command line's sweeps
    (Hydra's basic sweeper, batch size respected), or the Optuna sweeper's ``n_jobs``."""
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if "optuna" in sweeper.lower():
        return int(OmegaConf.select(config, "hydra.sweeper.n_jobs", default=1) or 1)
    total = 1
    for o in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        if o.is_sweep_override():
            total *= max(1, len(list(o.sweep_string_iterator())))
    batch = OmegaConf.select(config, "hydra.sweeper.max_batch_size", default=None)
    return min(total, int(batch)) if batch else total


class SweepSize(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            jobs = count_jobs(config)
        except Exception as e:  # a sweep syntax this cannot count: jobs fall back to n_jobs
            log.debug("Could not count the sweep's jobs: %s", e)
            return
        if jobs:
            os.environ[SWEEP_JOBS_ENV] = str(jobs)



class AggregateOnMultirunEnd(Callback):
    """Runs :func:`agop_sweep.aggregate.aggregate` on the sweep directory.

    Args:
        metric: the correlation variant to plot (default: the runs' ``analysis.primary``).
        by: the column whose values make the lines.
        out: output directory (default: the sweep directory).
    """

    def __init__(self, metric: str | None = None, by: str = "optimizer", out: str | None = None) -> None:
        self.metric = metric
        self.by = by
        self.out = out

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        from agop_sweep.aggregate import aggregate

        try:
            summary = aggregate([sweep_dir], self.out or sweep_dir, self.metric, self.by)
        except Exception as e:
            log.error("Aggregating %s failed (%s: %s); run agop-aggregate %s by hand",
                      sweep_dir, type(e).__name__, e, sweep_dir)
            return
        log.info("Aggregated %d runs into %s (report.md)", summary.runs, summary.out)
