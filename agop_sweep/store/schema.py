"""results.json's shape (schema 1, docs/results.md: results.json): the keys it fixes as
TypedDicts, the statuses, and the validation that every reader relies on."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from agop_sweep.errors import UserError

SCHEMA_VERSION = 1
FILENAME = "results.json"
# results.json: one entry per re-analysis of the run (python -m agop_sweep.analyze).
REANALYSES = "reanalyses"


class Status(StrEnum):
    """A run's state in results.json (docs/results.md); ``interrupted`` is derived by aggregate,
    never written."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"  # with diverged_epoch
    FAILED = "failed"  # with a one-line error

    @property
    def ended(self) -> bool:
        return self is not Status.RUNNING


class RunInfo(TypedDict):
    """What the run is and where it ran; None where a job that failed before training could
    not know (its data set's size, for one)."""

    optimizer: str | None
    lr: float | None
    seed: int | None
    dataset: str | None
    model: NotRequired[str]  # mlp or cnn (runs from before the CNN have none: mlp)
    width: int | None
    depth: int | None
    act: str | None
    loss: str | None
    n_train: int | None
    n_val: int | None
    device: str | None
    torch: str | None
    # The Muon variants: the dtype their Newton-Schulz ran in (optimizer.ns_dtype resolved).
    ns_dtype: NotRequired[str]
    version: NotRequired[str]
    git: NotRequired[str | None]
    # Where the job ran: the trainer's precision (trainer.precision resolved), its threads,
    # process and host (aggregate tells a dead run from a live one by them).
    precision: NotRequired[str]
    threads: NotRequired[int]
    pid: NotRequired[int]
    host: NotRequired[str]
    # The SLURM job of a submitit job (``<array job>_<task>``): aggregate asks SLURM about it.
    slurm_job: NotRequired[str]
    # The data: an input's (channels, height, width), the classes (their names where the data
    # set has them, else "0".."c-1"), and for mnist, fashion_mnist, cifar10, cifar100 and npz
    # data.normalize, with standardize's per-channel mean and std of the training set.
    image_shape: NotRequired[list[int]]
    n_classes: NotRequired[int]
    classes: NotRequired[list[str]]
    normalize: NotRequired[str]
    channel_mean: NotRequired[list[float]]
    channel_std: NotRequired[list[float]]


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
    # conv or linear; shape is the weight matrix's (d_out, d_in): (C_out, C_in k k) for a conv.
    kind: NotRequired[str]
    shape: list[int]
    # A conv layer's output positions H_out * W_out (the patch AGOP sums over them).
    positions: NotRequired[int]
    corr: float | None
    metrics: dict[str, float | None]
    weight_change: NotRequired[float | None]
    alpha_star: NotRequired[float | None]
    alpha_corr: NotRequired[float | None]
    # alpha_star and alpha_corr for every NFM and correlation kind: {raw,delta}_{cos,pearson}.
    alphas: NotRequired[dict[str, dict[str, float | None]]]
    spectra: NotRequired[dict[str, Any]]
    # Why every number of the layer is null (non-finite input, a failed eigendecomposition).
    error: NotRequired[str]


class AnalysisEntry(TypedDict):
    epoch: int
    n_samples: int
    seconds: float
    layers: list[LayerEntry]
    train_loss: NotRequired[float]
    train_acc: NotRequired[float]


class RecordError(UserError, ValueError):
    """A file that is not a results.json this version can read (the message says why)."""


def finite_number(value: Any) -> bool:
    """A real number (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_number(value: Any, spec: str = ".4g", missing: str = "nan") -> str:
    """A number as text, ``format(value, spec)``; ``missing`` for None, NaN or anything not a
    number (an infinite loss reads inf). The log writes a missing loss as nan, a figure n/a."""
    if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


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


def path_value(entry: Any, path: str) -> Any:
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
    """Raise :class:`RecordError` unless ``data`` has the shape docs/results.md gives results.json."""
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
