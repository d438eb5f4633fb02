"""Hydra callback: aggregate a multirun sweep when it ends.

Enable it for one sweep from the command line,

    python -m agop_sweep -m optimizer=sgd,adam,muon \\
        +hydra.callbacks.aggregate._target_=agop_sweep.callbacks.AggregateOnMultirunEnd

or for every sweep in the config (``hydra.callbacks.aggregate``). Hydra does not call
``on_multirun_end`` when a job of the sweep raised; ``agop-aggregate SWEEP_DIR`` then does the
same by hand. A failure here is logged and never fails the sweep: its runs are done.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


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
