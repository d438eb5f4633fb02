"""Observers of a run: the figures, and the trackers of :mod:`agop_sweep.trackers`.

The trainer records and persists an epoch itself (checkpoint, features.npz, results.json,
state.pt), then calls every observer's :meth:`Observer.on_epoch_end` in order; at the end of
a run (completed, diverged, failed or stopped) it calls :meth:`Observer.on_run_end`. An
observer that keeps state across a kill (a tracker's run id) returns it from
:meth:`Observer.state_dict`; the trainer saves it in state.pt and hands it back through
:meth:`Observer.load_state_dict`. An observer only reports, so it must never fail the run:
it logs and carries on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agop_sweep.store.atomic import disk_full
from agop_sweep.store.features import FeatureLog
from agop_sweep.store.record import EpochEntry, RunRecord

if TYPE_CHECKING:
    from agop_sweep.analyze.layers import Analysis

log = logging.getLogger(__name__)


@dataclass
class EpochEnd:
    """One finished epoch: its entry (already in ``record``), its analysis when it had one."""

    epoch: int
    last_epoch: int
    entry: EpochEntry
    analysis: Analysis | None
    record: RunRecord
    run_dir: Path
    diverged: bool

    @property
    def final(self) -> bool:
        """No epoch follows this one in this run."""
        return self.diverged or self.epoch >= self.last_epoch


class Observer:
    """Base class: every method is optional. ``name`` keys the observer's state in state.pt."""

    name = "observer"

    def on_epoch_end(self, event: EpochEnd) -> None:
        pass

    def on_run_end(self, record: RunRecord, run_dir: Path) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FiguresObserver(Observer):
    """The run's figures: ``live`` redraws the PNGs after each analysed epoch but the last,
    ``live`` and ``end`` draw PNG and PDF when the run ends, ``off`` never draws."""

    name = "figures"

    def __init__(self, mode: str, features: FeatureLog):
        self.mode, self.features = str(mode), features

    def on_epoch_end(self, event: EpochEnd) -> None:
        if self.mode == "live" and event.analysis is not None and not event.final:
            self.draw(event.record, event.run_dir, ("png",))  # PNG only: 60 % of the cost of both

    def on_run_end(self, record: RunRecord, run_dir: Path) -> None:
        if self.mode != "off" and record.status in ("completed", "diverged"):
            self.draw(record, run_dir, ("png", "pdf"))

    def draw(self, record: RunRecord, run_dir: Path, formats: tuple[str, ...]) -> None:
        from agop_sweep.figures.run import save_run_figures  # matplotlib only when drawing

        try:
            save_run_figures(record, run_dir, self.features, formats=formats)
        except Exception as e:
            if not disk_full(e):
                log.exception("Could not draw the run's figures")
                return
            log.warning("Could not draw the run's figures: the disk is full; free some space, then draw "
                        "them with python -m agop_sweep.figures %s", run_dir)
