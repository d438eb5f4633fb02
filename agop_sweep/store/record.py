"""results.json, the record of one run (schema 1, docs/results.md: results.json), and its one owner.

Everything that writes or reads results.json goes through :class:`RunRecord`, whose methods
say what happened to the run (started, an epoch finished, diverged, failed at start,
re-analysed); nothing outside reaches into the document. The document stays a plain dict so
that keys this version does not know survive a rewrite; the TypedDicts of
:mod:`agop_sweep.store.schema` name the keys that docs/results.md's results.json section fixes. Importing
this module does not import torch: every reader of results.json stays light.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from agop_sweep.analyze.names import DEFAULT_METRIC
from agop_sweep.store import schema
from agop_sweep.store.atomic import write_json
from agop_sweep.store.schema import AnalysisEntry, EpochEntry, RecordError, RunInfo, Status

# Readers import everything about results.json from here.
FILENAME, SCHEMA_VERSION, LayerEntry = schema.FILENAME, schema.SCHEMA_VERSION, schema.LayerEntry
finite_or_none, number, validate = schema.finite_or_none, schema.number, schema.validate
REANALYSES = schema.REANALYSES

__all__ = [
    "FILENAME", "SCHEMA_VERSION", "AnalysisEntry", "EpochEntry", "LayerEntry", "RecordError", "RunInfo",
    "RunRecord", "Status", "finite_or_none", "number", "read_document", "validate",
]

# Bounds far above anything this tool writes (a results.json nests about 8 levels; its integers
# are epochs, sizes, pids and seeds below 2**64). Only a crafted or foreign file exceeds them,
# and past them Python's parser and float() fail: a RecursionError on deep nesting, an
# OverflowError when a 401-digit integer becomes a float.
MAX_DEPTH = 64
MAX_INT = 2**64


class _TooLarge(Exception):
    """Raised from the JSON parser's integer hook: the integer's text (its digits counted)."""


def _parse_int(text: str) -> int:
    # Counting digits first keeps int() off texts beyond Python's own 4300-digit limit.
    if len(text.lstrip("-")) > len(str(MAX_INT)) or not -MAX_INT < (value := int(text)) < MAX_INT:
        raise _TooLarge(text)
    return value


def _too_deep(document: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``document`` nests lists and objects more than ``limit`` levels (iteratively, so
    that the check itself cannot overflow the stack)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def read_document(path: str | os.PathLike[str]) -> tuple[Any, list[str]]:
    """The parsed JSON of ``path`` and the non-finite numbers it spells (``NaN``, ``Infinity``,
    ``1e999``: Python reads them, results.json writes null instead, so they mark a file that
    another program wrote or edited). Raises :class:`RecordError` naming the file for anything
    that is not JSON within :data:`MAX_DEPTH` and :data:`MAX_INT`; OSError when unreadable."""
    nonfinite: list[str] = []

    def constant(text: str) -> float:
        nonfinite.append(text)
        return float(text)

    def parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            nonfinite.append(text)
        return value

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_int=_parse_int, parse_constant=constant, parse_float=parse_float)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path} is not a text file") from None
    except RecursionError:
        raise RecordError(f"{path} is not an agop_sweep results.json: it nests more than "
                          f"{MAX_DEPTH} levels deep") from None
    except _TooLarge as e:
        raise RecordError(f"{path} is not an agop_sweep results.json: it holds an integer of "
                          f"{len(str(e).lstrip('-'))} digits, beyond 2**64") from None
    if _too_deep(data):
        raise RecordError(f"{path} is not an agop_sweep results.json: it nests more than "
                          f"{MAX_DEPTH} levels deep")
    return data, nonfinite


# -- the run section ----------------------------------------------------------------------------------
@functools.cache
def package_version() -> str:
    try:
        return metadata.version("agop_sweep")
    except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
        return "unknown"


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this package is imported from; None when it is not imported
    from a git checkout (an installed wheel), even if site-packages lies inside some other
    repository: the package's own files must be tracked there."""
    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", Path(__file__).name], cwd=here,
                                 capture_output=True, timeout=10)
        if tracked.returncode != 0:
            return None
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = head.stdout.strip()
    return sha if head.returncode == 0 and sha else None


def run_info(config: Mapping[str, Any], *, dataset: str | None = None, n_train: int | None = None,
             n_val: int | None = None, device: str | None = None) -> RunInfo:
    """results.json's ``run`` section from a resolved config: what the run is, and where it
    ran. The data set's facts come from the loaded data; a job that failed before loading it
    records None for them."""
    def pick(dotted: str) -> Any:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node if node is None or isinstance(node, (int, float, bool)) else str(node)

    try:
        torch_version: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {
        "optimizer": pick("optimizer.name"), "lr": pick("optimizer.lr"), "seed": pick("seed"),
        "dataset": dataset if dataset is not None else pick("data.name"),
        "model": pick("model.name") or "mlp",
        "width": pick("model.width"), "depth": pick("model.depth"), "act": pick("model.act"),
        "loss": pick("loss"), "n_train": n_train, "n_val": n_val,
        "device": device if device is not None else pick("device"),
        "torch": torch_version, "version": package_version(), "git": git_commit(),
    }


class RunRecord:
    """A run's results.json in memory. Its methods keep the invariants (one entry per epoch,
    analyses sorted by epoch, an end time once the run ended); :meth:`save` writes it
    atomically, non-finite numbers as null."""

    def __init__(self, document: dict[str, Any], path: str | os.PathLike[str] | None = None):
        self._doc = document
        self.path = None if path is None else Path(path)
        # The non-finite numbers the file spelled (NaN, Infinity): read as missing, but worth
        # naming, since this tool writes null (see :func:`read_document`).
        self.nonfinite: list[str] = []

    # -- building, loading, saving ------------------------------------------------------------
    @classmethod
    def start(cls, run: RunInfo | dict[str, Any], config: dict[str, Any],
              path: str | os.PathLike[str] | None = None, started_at: float | None = None) -> RunRecord:
        """The record of a run that starts now: status running, no epochs yet."""
        return cls({
            "schema_version": SCHEMA_VERSION, "status": Status.RUNNING.value, "run": dict(run),
            "config": config, "epochs": [], "analysis": [], "checkpoints": {},
            "timing": {"train_seconds": 0.0, "analysis_seconds": 0.0, "total_seconds": 0.0,
                       "started_at": time.time() if started_at is None else started_at},
        }, path)

    @classmethod
    def failed_at_start(cls, config: Mapping[str, Any], error: str,
                        path: str | os.PathLike[str] | None = None) -> RunRecord:
        """The record of a job that stopped before training (a bad value, a missing package):
        what its config says about the run, status failed with the one-line ``error``."""
        record = cls.start(run_info(config), dict(config), path)
        record.mark_failed(error)
        return record

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
        data, nonfinite = read_document(path)
        record = cls.from_dict(data, path)
        record.nonfinite = nonfinite
        return record

    @classmethod
    def in_dir(cls, run_dir: str | os.PathLike[str]) -> RunRecord:
        return cls.load(Path(run_dir) / FILENAME)

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        target = path if path is not None else self.path
        if target is None:
            raise ValueError("RunRecord.save needs a path")
        write_json(target, finite_or_none(self._doc))

    # -- the parts -------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return self._doc["status"]

    @property
    def run(self) -> dict[str, Any]:
        return self._doc["run"]

    @property
    def config(self) -> Mapping[str, Any]:
        """The resolved config the run used ({} when unknown); change it with :meth:`set_config`."""
        config = self._doc.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def epochs(self) -> list[EpochEntry]:
        return self._doc["epochs"]

    @property
    def analysis(self) -> list[AnalysisEntry]:
        return self._doc["analysis"]

    @property
    def checkpoints(self) -> Mapping[str, str]:
        """Checkpoint file (relative to the run dir) by epoch, as a string."""
        return self._doc.get("checkpoints") or {}

    @property
    def timing(self) -> Mapping[str, float]:
        return self._doc.get("timing") or {}

    @property
    def started_at(self) -> float | None:
        started = self.timing.get("started_at")
        return float(started) if isinstance(started, (int, float)) else None

    @property
    def reanalyses(self) -> list[dict[str, Any]]:
        """The re-analyses of the run's checkpoints, oldest first (``python -m agop_sweep.analyze``)."""
        entries = self._doc.get(REANALYSES)
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []

    def document(self) -> dict[str, Any]:
        """The whole document, for saving it elsewhere (state.pt); not to be changed."""
        return self._doc

    @property
    def error(self) -> str | None:
        """The one-line error of a failed run, else None."""
        return self._doc["error"] if isinstance(self._doc.get("error"), str) else None

    @property
    def failed_before_training(self) -> bool:
        """The record of a job that stopped before its first epoch: nothing worth keeping."""
        return self.status == Status.FAILED and not self.epochs

    @property
    def diverged_epoch(self) -> int | None:
        """The epoch a diverged run's loss became non-finite, when recorded."""
        return epoch if type(epoch := self._doc.get("diverged_epoch")) is int else None

    # -- what happens to the run ------------------------------------------------------------------
    def update_run(self, **keys: Any) -> None:
        """Facts about where and how the run runs (``device``, ``threads``, ``ns_dtype``...)."""
        self._doc["run"].update(keys)

    def set_config(self, config: dict[str, Any]) -> None:
        self._doc["config"] = config

    def resumed(self) -> None:
        self._doc["status"] = Status.RUNNING.value

    def finish_epoch(self, entry: EpochEntry | dict[str, Any], analysis: AnalysisEntry | None = None) -> None:
        """An epoch's losses (``entry``, with ``seconds`` and ``train_seconds``) and its analysis,
        replacing an earlier entry of the same epoch (a resumed run repeats a stopped epoch)."""
        if analysis is not None:
            self.add_analysis(analysis)
            self._add_time("analysis_seconds", analysis["seconds"])
        kept = [e for e in self.epochs if e["epoch"] != entry["epoch"]]
        self._doc["epochs"] = sorted([*kept, entry], key=lambda e: e["epoch"])
        self._add_time("train_seconds", entry.get("train_seconds", 0.0))
        self._add_time("total_seconds", entry.get("seconds", 0.0))

    def add_checkpoint(self, epoch: int, relpath: str) -> None:
        self._doc.setdefault("checkpoints", {})[str(epoch)] = relpath

    def mark_completed(self) -> None:
        self._end(Status.COMPLETED)

    def mark_diverged(self, epoch: int) -> None:
        self._end(Status.DIVERGED, diverged_epoch=epoch)

    def mark_failed(self, error: str) -> None:
        self._end(Status.FAILED, error=error)

    def add_analysis(self, entry: AnalysisEntry | dict[str, Any]) -> None:
        kept = [a for a in self.analysis if a["epoch"] != entry["epoch"]]
        self._doc["analysis"] = sorted([*kept, entry], key=lambda a: a["epoch"])

    def reanalysed(self, config: dict[str, Any], analyses: list[AnalysisEntry | dict[str, Any]],
                   checkpoints: Mapping[int, str], entry: dict[str, Any]) -> None:
        """A re-analysis: ``analyses`` replace those of their epochs, ``config`` (its analysis
        section) is what produced them, ``checkpoints`` are the files that exist now, and
        ``entry`` joins the list of re-analyses."""
        self._doc["config"] = config
        self._doc.setdefault("timing", {})["analysis_seconds"] = 0.0
        for analysis in analyses:
            self.add_analysis(analysis)
            self._add_time("analysis_seconds", analysis["seconds"])
        self._doc["checkpoints"] = {str(e): rel for e, rel in sorted(checkpoints.items())}
        self._doc.setdefault(REANALYSES, []).append(entry)

    def _end(self, status: Status, **extra: Any) -> None:
        self._doc["status"] = status.value
        self._doc.update(extra)
        self._doc.setdefault("timing", {})["finished_at"] = time.time()

    def _add_time(self, key: str, seconds: float) -> None:
        timing = self._doc.setdefault("timing", {})
        timing[key] = timing.get(key, 0.0) + seconds

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
        """The loss function (``mse``, ``ce``): the run's, else its config's, else the schema's
        default (Config.loss)."""
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
        """An input's (C, H, W): the loaded data's (run.image_shape), else data.image_shape's."""
        shape = self.run.get("image_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(type(s) is int for s in shape)):
            shape = self.setting("data.image_shape")
        return tuple(int(s) for s in shape) if shape else None

    def is_cnn(self) -> bool:
        return self.setting("model.name") == "cnn"

    def first_layer_shape(self) -> tuple[int, ...] | None:
        """What layer 0's input vectors are pictures of (features.npz's ``image_shape``): the
        input image (C, H, W) for an MLP, one patch (C, k, k) of it for a CNN."""
        shape = self.image_shape()
        if shape is None or not self.is_cnn():
            return shape
        k = int(self.setting("model.kernel", 3))
        return (shape[0], k, k)

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
        return self._per_layer(lambda entry: schema.path_value(entry, path))

    def layer_entries(self) -> Iterator[tuple[int, LayerEntry]]:
        """Every analysed epoch's layer entries, as (epoch, entry), in epoch then layer order."""
        for a in self.analysis:
            for entry in a["layers"]:
                yield a["epoch"], entry

    def metric_names(self) -> list[str]:
        """The correlation variants recorded in the layers' ``metrics``, in first-seen order."""
        return list(dict.fromkeys(name for _, entry in self.layer_entries()
                                  if isinstance(entry.get("metrics"), dict) for name in entry["metrics"]))

    def epoch_metric(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Epochs (E,) and ``key`` (``train_loss``, ...) of every epoch entry (E,), NaN where null."""
        epochs = np.array([e["epoch"] for e in self.epochs], dtype=float)
        return epochs, np.array([number(e.get(key)) for e in self.epochs], dtype=float)

    def layer_shape(self, layer: int) -> list[int] | None:
        return next((list(e["shape"]) for a in self.analysis for e in a["layers"]
                     if e["layer"] == layer and e.get("shape")), None)

    def layer_kind(self, layer: int) -> str | None:
        """``conv`` or ``linear`` (None for records from before layers had kinds)."""
        return next((str(e["kind"]) for a in self.analysis for e in a["layers"]
                     if e["layer"] == layer and e.get("kind")), None)

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
