"""results.json, the record of one run (SPEC schema 1): its one owner. Everything that writes
or reads results.json goes through :class:`RunRecord`. The document stays a plain dict
(``record.data``) so that keys this version does not know survive a rewrite; the TypedDicts
below name the keys SPEC fixes."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np

from agop_sweep.atomic import write_json
from agop_sweep.nfa import DEFAULT_METRIC

SCHEMA_VERSION = 1
FILENAME = "results.json"


class Status(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"


class RunInfo(TypedDict):
    optimizer: str
    lr: float
    seed: int
    dataset: str
    width: int
    depth: int
    act: str
    loss: str
    n_train: int
    n_val: int
    device: str
    torch: str
    version: NotRequired[str]
    git: NotRequired[str | None]


class EpochEntry(TypedDict):
    """One epoch's losses and accuracies (of the epoch-E weights); null when undefined."""

    epoch: int
    train_loss: float | None
    val_loss: float | None
    train_acc: float | None
    val_acc: float | None
    seconds: NotRequired[float]
    train_seconds: NotRequired[float]
    running_train_loss: NotRequired[float | None]
    running_train_acc: NotRequired[float | None]


class LayerEntry(TypedDict):
    layer: int
    shape: list[int]
    corr: float | None
    metrics: dict[str, float | None]
    weight_change: NotRequired[float | None]
    alpha_star: NotRequired[float | None]
    alpha_corr: NotRequired[float | None]
    spectra: NotRequired[dict[str, Any]]


class AnalysisEntry(TypedDict):
    epoch: int
    n_samples: int
    seconds: float
    layers: list[LayerEntry]
    train_loss: NotRequired[float]
    train_acc: NotRequired[float]


class RecordError(ValueError):
    """A file that is not a results.json this version can read (the message says why)."""


def finite_or_none(obj: Any) -> Any:
    """Replace NaN and +-inf anywhere in ``obj`` with None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def number(value: Any) -> float:
    """A finite number as float; anything else (null, text, bool, inf) as NaN."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else math.nan


def _require_list_of_entries(data: dict[str, Any], key: str, item_key: str) -> None:
    items = data[key]
    if not isinstance(items, list) or not all(isinstance(e, dict) and item_key in e for e in items):
        raise RecordError(f"{key!r} is not a list of records with {item_key!r}")


def _validate_layers(analysis: list[dict[str, Any]]) -> None:
    """Layer indices in 0..n-1 (n: the most layers of any analysis, as in ``n_layers``), metrics."""
    for entry in analysis:
        _require_list_of_entries(entry, "layers", "layer")
    n = max((len(a["layers"]) for a in analysis), default=0)
    for epoch, entry in ((a["epoch"], e) for a in analysis for e in a["layers"]):
        where, index = f"the analysis of epoch {epoch}", entry["layer"]
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < n:
            raise RecordError(f"{where} has layer {index!r}, outside 0..{n - 1}")
        if not isinstance(entry.get("metrics"), dict):
            raise RecordError(f"layer {index} of {where} has no 'metrics' object")


def _path_value(entry: Any, path: str) -> Any:
    """The value at a dotted path into nested dicts and lists (a list element by its index)."""
    for part in path.split("."):
        if isinstance(entry, dict):
            entry = entry.get(part)
        elif isinstance(entry, list) and part.isdigit() and int(part) < len(entry):
            entry = entry[int(part)]
        else:
            return None
    return entry


def validate(data: Any) -> None:
    """Raise :class:`RecordError` unless ``data`` has the shape SPEC gives results.json."""
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"schema_version {version!r}, but this version of agop_sweep reads schema {SCHEMA_VERSION}"
        )
    for key in ("status", "run", "epochs", "analysis"):
        if key not in data:
            raise RecordError(f"lacks the key {key!r}")
    if data["status"] not in tuple(Status):
        raise RecordError(f"unknown status {data['status']!r}")
    if not isinstance(data["run"], dict):
        raise RecordError("'run' is not an object")
    _require_list_of_entries(data, "epochs", "epoch")
    _require_list_of_entries(data, "analysis", "epoch")
    _validate_layers(data["analysis"])
    for key in ("config", "checkpoints", "timing"):
        if not isinstance(data.get(key, {}), dict):
            raise RecordError(f"{key!r} is not an object")


class RunRecord:
    """A run's results.json in memory (``data``: the document). Mutators keep its invariants (one
    entry per epoch, analyses sorted by epoch); :meth:`save` writes it atomically, non-finite
    numbers as null."""

    def __init__(self, data: dict[str, Any], path: str | os.PathLike[str] | None = None):
        self.data = data
        self.path = None if path is None else Path(path)

    # -- building, loading, saving ------------------------------------------------------------
    @classmethod
    def new(cls, run: RunInfo | dict[str, Any], config: dict[str, Any],
            path: str | os.PathLike[str] | None = None) -> RunRecord:
        return cls({
            "schema_version": SCHEMA_VERSION, "status": Status.RUNNING.value, "run": dict(run),
            "config": config, "epochs": [], "analysis": [], "checkpoints": {},
            "timing": {"train_seconds": 0.0, "analysis_seconds": 0.0, "total_seconds": 0.0},
        }, path)

    @classmethod
    def from_dict(cls, data: Any, path: str | os.PathLike[str] | None = None) -> RunRecord:
        """A record from a parsed document; raises :class:`RecordError` naming what is wrong."""
        try:
            validate(data)
        except RecordError as e:
            where = f"{path} " if path is not None else ""
            raise RecordError(f"{where}is not an agop_sweep results.json: {e}") from None
        return cls(data, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunRecord:
        """Read and validate a results.json; RecordError for anything that is not one."""
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        except UnicodeDecodeError:
            raise RecordError(f"{path} is not a text file") from None
        return cls.from_dict(data, path)

    @classmethod
    def in_dir(cls, run_dir: str | os.PathLike[str]) -> RunRecord:
        return cls.load(Path(run_dir) / FILENAME)

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        target = path if path is not None else self.path
        if target is None:
            raise ValueError("RunRecord.save needs a path")
        write_json(target, finite_or_none(self.data))

    # -- the parts -------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self.data["status"]

    @property
    def run(self) -> dict[str, Any]:
        return self.data["run"]

    @property
    def config(self) -> dict[str, Any]:
        return self.data.get("config") or {}

    @property
    def epochs(self) -> list[EpochEntry]:
        return self.data["epochs"]

    @property
    def analysis(self) -> list[AnalysisEntry]:
        return self.data["analysis"]

    @property
    def checkpoints(self) -> dict[str, str]:
        return self.data.setdefault("checkpoints", {})

    @property
    def timing(self) -> dict[str, float]:
        return self.data.setdefault("timing", {})

    @property
    def error(self) -> str | None:
        """The one-line error of a failed run, else None."""
        return self.data["error"] if isinstance(self.data.get("error"), str) else None

    @property
    def diverged_epoch(self) -> int | None:
        """The epoch a diverged run's loss became non-finite, when recorded."""
        return epoch if type(epoch := self.data.get("diverged_epoch")) is int else None

    # -- updates -----------------------------------------------------------------------------------
    def set_status(self, status: Status | str, **extra: Any) -> None:
        self.data["status"] = Status(status).value
        self.data.update(extra)

    def add_epoch(self, entry: EpochEntry | dict[str, Any]) -> None:
        kept = [e for e in self.epochs if e["epoch"] != entry["epoch"]]
        self.data["epochs"] = sorted([*kept, entry], key=lambda e: e["epoch"])

    def add_analysis(self, entry: AnalysisEntry | dict[str, Any]) -> None:
        kept = [a for a in self.analysis if a["epoch"] != entry["epoch"]]
        self.data["analysis"] = sorted([*kept, entry], key=lambda a: a["epoch"])

    def add_checkpoint(self, epoch: int, relpath: str) -> None:
        self.checkpoints[str(epoch)] = relpath

    def add_time(self, key: str, seconds: float) -> None:
        self.timing[key] = self.timing.get(key, 0.0) + seconds

    # -- readers -------------------------------------------------------------------------------------
    def setting(self, dotted: str, default: Any = None) -> Any:
        """A value of the resolved config by dotted key (``schedule.epochs``), else ``default``."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def loss_name(self) -> str:
        """The loss function (``mse``, ``ce``): the run's, else its config's, else SPEC's default."""
        loss = self.run.get("loss") or self.setting("loss")
        return str(loss) if isinstance(loss, str) and loss else "mse"

    def primary_metric(self) -> str:
        """The correlation variant that ``corr`` holds (``analysis.primary``)."""
        return str(self.setting("analysis.primary", DEFAULT_METRIC))

    def checkpoint_epochs(self) -> list[int] | None:
        """The scheduled analysis/checkpoint epochs, or None when the config lacks them."""
        epochs = self.setting("schedule.checkpoints")
        return [int(e) for e in epochs] if epochs else None

    def image_shape(self) -> tuple[int, ...] | None:
        shape = self.setting("data.image_shape")
        return tuple(int(s) for s in shape) if shape else None

    def n_layers(self) -> int:
        return max((len(a["layers"]) for a in self.analysis), default=int(self.run.get("depth") or 0))

    def _per_layer(self, get: Callable[[Any], Any]) -> tuple[np.ndarray, np.ndarray]:
        """Analysed epochs (A,) and ``get(layer entry)`` per layer (A, L), NaN where not a number."""
        epochs = np.array([a["epoch"] for a in self.analysis], dtype=float)
        values = np.full((len(self.analysis), self.n_layers()), np.nan)
        for i, a in enumerate(self.analysis):
            for entry in a["layers"]:
                values[i, entry["layer"]] = number(get(entry))
        return epochs, values

    def layer_metric(self, metric: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Analysed epochs (A,) and ``metric`` per layer (A, L), NaN where null or missing: a variant
        in ``metrics``, a per-layer key (``weight_change``), or None: the primary ``corr``."""
        def get(entry: Any) -> Any:
            metrics = entry.get("metrics") or {}
            return entry.get("corr") if metric is None else metrics[metric] if metric in metrics \
                else entry.get(metric)

        return self._per_layer(get)

    def layer_field(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`layer_metric`, for a dotted path into each layer entry, a list element by
        its index (``spectra.agop.effective_rank``, ``spectra.agop.top5_share.0``)."""
        return self._per_layer(lambda entry: _path_value(entry, path))

    def metric_names(self) -> list[str]:
        """The correlation variants recorded in the layers' ``metrics``, in first-seen order."""
        return list(dict.fromkeys(name for a in self.analysis for entry in a["layers"]
                                  if isinstance(entry.get("metrics"), dict) for name in entry["metrics"]))

    def epoch_metric(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Epochs (E,) and ``key`` (``train_loss``, ...) of every epoch entry (E,), NaN where null."""
        epochs = np.array([e["epoch"] for e in self.epochs], dtype=float)
        return epochs, np.array([number(e.get(key)) for e in self.epochs], dtype=float)

    def layer_shape(self, layer: int) -> list[int] | None:
        return next((list(e["shape"]) for a in self.analysis for e in a["layers"]
                     if e["layer"] == layer and e.get("shape")), None)

    def last_epoch(self) -> EpochEntry | None:
        return max(self.epochs, key=lambda e: e["epoch"]) if self.epochs else None

    def objective(self) -> float:
        """Final val loss (train loss without a val set); +inf when diverged or undefined:
        what a learning-rate search minimises."""
        last = self.last_epoch()
        if self.status == Status.DIVERGED or last is None:
            return math.inf
        value = number(last.get("val_loss"))
        if math.isnan(value):
            value = number(last.get("train_loss"))
        return math.inf if math.isnan(value) else value
