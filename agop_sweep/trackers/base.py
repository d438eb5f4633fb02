"""What every tracker shares: where the job stands in Hydra's run (its name, its sweep), the
numbers of an epoch as tracker metrics, and :class:`Tracker`, which logs every epoch of the
record exactly once and turns a tracker's failure into one warning.

Exactly once: a tracker logs the epochs of the record that come after the last one it logged
(``last_epoch``, saved in state.pt through :meth:`Tracker.state_dict`). The trainer saves
state.pt *before* the trackers run, so after a kill -9 the saved ``last_epoch`` may lag the
tracker by one epoch; a resumed tracker therefore asks its store which (key, epoch) pairs of
the earlier epochs it already holds and logs only the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agop_sweep.errors import one_line
from agop_sweep.run.observers import EpochEnd, Observer
from agop_sweep.store.record import RunRecord
from agop_sweep.store.schema import finite_number
from agop_sweep.trackers.naming import sweep_keys_from_env, sweep_run_name

log = logging.getLogger("agop_sweep.trackers")

# Metric keys: "<group>/<name>"; the trackers' charts group them by the prefix.
EPOCH_KEYS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "acc/train",
    "val_acc": "acc/val", "seconds": "time/epoch_seconds",
}
# A layer entry's own numbers logged besides its ``metrics`` and effective ranks (docs/trackers.md:
# Trackers); figures.style.LAYER_KEYS, what a figure can plot, also has alpha_corr.
TRACKED_LAYER_KEYS = ("weight_change", "alpha_star")


@dataclass(frozen=True)
class RunContext:
    """The job in Hydra's terms: ``name``, the tracker run's name, and ``group``, the dir that
    holds it (the sweep dir; a single run's parent dir). A job of a sweep is named after the
    keys that vary within the sweep (``swept``: :mod:`.naming`), a single run after its
    overrides, else its dir's name; ``overrides`` are all of the job's."""

    run_dir: Path
    name: str
    group: Path
    multirun: bool = False
    job_num: int | None = None
    overrides: tuple[str, ...] = ()
    swept: bool = False


def run_context(run_dir: Path) -> RunContext:
    """The job's context from Hydra when a Hydra job is running, else from ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    fallback = RunContext(run_dir, run_dir.name or run_dir.as_posix(), run_dir.parent)
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return fallback
        hc = HydraConfig.get()
        multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
        overrides = tuple(str(o) for o in hc.overrides.task)
        name = str(hc.job.override_dirname or "") or fallback.name
        keys = sweep_keys_from_env() if multirun else None
        swept_name = sweep_run_name(keys, overrides) if keys else ""
        group = Path(hc.sweep.dir).resolve() if multirun else run_dir.parent
        job_num = int(hc.job.num) if multirun and hc.job.get("num") is not None else None
        return RunContext(run_dir, swept_name or name, group, multirun, job_num, overrides, bool(swept_name))
    except Exception:  # a context is a nicety: never stop a run for it
        return fallback


def run_key(run_dir: Path, record: RunRecord) -> str:
    """What tells this run apart from any other, also from an earlier run in the same dir:
    its dir and its first start. A resumed run keeps it."""
    return f"{run_dir}@{record.timing.get('started_at', '')}"


def outputs_dir(path: Path) -> Path:
    """The nearest ancestor of ``path`` named ``outputs`` (Hydra's output root), else
    ``outputs/`` in the current directory."""
    path = Path(path).resolve()
    return next((p for p in (path, *path.parents) if p.name == "outputs"), Path.cwd().resolve() / "outputs")


def group_label(group: Path) -> str:
    """A group dir as a name: relative to its ``outputs`` ancestor's parent
    (``outputs/multirun/<date>/<time>``), else the absolute path (also for the current
    directory itself, which would be ``.``)."""
    outputs = outputs_dir(group)
    try:
        label = group.resolve().relative_to(outputs.parent).as_posix()
    except ValueError:
        label = "."
    return label if label != "." else group.resolve().as_posix()


def epoch_metrics(entry: dict[str, Any]) -> dict[str, float]:
    """An epoch entry's losses, accuracies and seconds as metric keys; nulls left out."""
    return {key: float(entry[field]) for field, key in EPOCH_KEYS.items() if finite_number(entry.get(field))}


def analysis_metrics(entry: dict[str, Any] | None) -> dict[str, float]:
    """An analysis entry's per-layer numbers: every correlation variant in ``metrics``,
    ``weight_change``, ``alpha_star`` and the effective rank of every spectrum, as
    ``<name>/layer<l>``; nulls left out."""
    if entry is None:
        return {}
    out: dict[str, float] = {}
    if finite_number(entry.get("seconds")):
        out["time/analysis_seconds"] = float(entry["seconds"])
    for layer in entry.get("layers", []):
        where = f"layer{layer['layer']}"
        values = dict(layer.get("metrics") or {})
        values.update({key: layer.get(key) for key in TRACKED_LAYER_KEYS})
        for spectrum, stats in (layer.get("spectra") or {}).items():
            if isinstance(stats, dict) and "effective_rank" in stats:
                values[f"effective_rank_{spectrum}"] = stats["effective_rank"]
        out.update({f"{name}/{where}": float(v) for name, v in values.items() if finite_number(v)})
    return out


def record_metrics(record: RunRecord) -> dict[int, dict[str, float]]:
    """Every epoch of ``record``: its metrics by key (what the trackers hold once each)."""
    analyses = {a["epoch"]: a for a in record.analysis}
    return {e["epoch"]: {**epoch_metrics(e), **analysis_metrics(analyses.get(e["epoch"]))}
            for e in record.epochs}


class Tracker(Observer):
    """A tracker as an observer of the run. Subclasses implement :meth:`open` (start or reopen the
    tracker's run; True when it may already hold some of the record's epochs),
    :meth:`logged` (which of an earlier epoch's keys it holds), :meth:`log_metrics`,
    :meth:`finish` (status, artifacts) and :meth:`close`. Any exception inside them turns the
    tracker off for the rest of the run with one warning; training goes on."""

    label = "tracker"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.enabled = True
        self.opened = False
        self.last_epoch = -1  # the last epoch logged
        self.saved: dict[str, Any] = {}  # the state this tracker was resumed with

    # -- the Observer interface -------------------------------------------------------------------
    def on_epoch_end(self, event: EpochEnd) -> None:
        self._guarded("logging", self._log_new_epochs, event.record, event.epoch)

    def on_run_end(self, record: RunRecord, run_dir: Path) -> None:
        last = max((e["epoch"] for e in record.epochs), default=-1)
        self._guarded("logging", self._log_new_epochs, record, last + 1)
        self._guarded("finishing", self.finish, record, run_dir)
        if self.opened:
            self._close_quietly()

    def state_dict(self) -> dict[str, Any]:
        return {**self.saved, **self.tracker_state(), "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = dict(state)
        self.last_epoch = int(state.get("last_epoch", -1))

    # -- what subclasses provide --------------------------------------------------------------------
    def tracker_state(self) -> dict[str, Any]:
        return {}

    def open(self, record: RunRecord) -> bool:
        raise NotImplementedError

    def logged(self, epoch: int, keys: list[str]) -> set[str]:
        return set()

    def log_metrics(self, epoch: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def finish(self, record: RunRecord, run_dir: Path) -> None:
        pass

    def close(self) -> None:
        pass

    # -- the logic ----------------------------------------------------------------------------------
    def _log_new_epochs(self, record: RunRecord, current: int) -> None:
        """Log every epoch of ``record`` after ``last_epoch``. The first time, epochs before
        ``current`` (those an earlier process may have logged) are checked against the tracker."""
        check_before = -1
        if not self.opened:
            existed = self.open(record)
            self.opened = True
            check_before = current if existed else -1
        for epoch, metrics in record_metrics(record).items():
            if epoch <= self.last_epoch:
                continue
            if epoch < check_before and metrics:
                done = self.logged(epoch, list(metrics))
                metrics = {k: v for k, v in metrics.items() if k not in done}
            if metrics:
                self.log_metrics(epoch, metrics)
            self.last_epoch = epoch
        self.flush()

    def _guarded(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        if not self.enabled:
            return
        try:
            fn(*args)
        except Exception as e:  # a tracker must never fail the run
            self.enabled = False
            log.warning("%s %s failed, so %s is off for the rest of this run (results.json is "
                        "unaffected): %s", self.label, what, self.label, one_line(e))
            self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception:
            log.debug("closing %s failed", self.label, exc_info=True)
