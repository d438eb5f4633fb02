"""results.json: the run's record, rewritten atomically after every epoch (SPEC schema 1)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from agop_sweep.atomic import write_json

SCHEMA_VERSION = 1
FILENAME = "results.json"
STATUSES = ("running", "completed", "diverged", "failed")


def finite_or_none(obj: Any) -> Any:
    """Replace NaN and +-inf anywhere in ``obj`` with None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


class Results:
    """In-memory results with an atomic :meth:`write`; ``data`` is the JSON document."""

    def __init__(self, run_dir: str | os.PathLike[str], data: dict[str, Any]):
        self.path = Path(run_dir) / FILENAME
        self.data = data

    @classmethod
    def new(cls, run_dir: str | os.PathLike[str], run: dict[str, Any], config: dict[str, Any]) -> Results:
        return cls(run_dir, {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "run": run,
            "config": config,
            "epochs": [],
            "analysis": [],
            "checkpoints": {},
            "timing": {"train_seconds": 0.0, "analysis_seconds": 0.0, "total_seconds": 0.0},
        })

    @property
    def status(self) -> str:
        return self.data["status"]

    def set_status(self, status: str, **extra: Any) -> None:
        assert status in STATUSES, status
        self.data["status"] = status
        self.data.update(extra)

    def add_epoch(self, record: dict[str, Any]) -> None:
        self.data["epochs"] = [e for e in self.data["epochs"] if e["epoch"] != record["epoch"]]
        self.data["epochs"].append(record)

    def add_analysis(self, record: dict[str, Any]) -> None:
        kept = [a for a in self.data["analysis"] if a["epoch"] != record["epoch"]]
        self.data["analysis"] = sorted([*kept, record], key=lambda a: a["epoch"])

    def add_checkpoint(self, epoch: int, relpath: str) -> None:
        self.data["checkpoints"][str(epoch)] = relpath

    def add_time(self, key: str, seconds: float) -> None:
        self.data["timing"][key] += seconds

    def write(self) -> None:
        write_json(self.path, finite_or_none(self.data))


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a results.json; raises ValueError when it is not one of ours."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path} is not an agop_sweep results.json (schema {SCHEMA_VERSION})")
    for key in ("status", "run", "epochs", "analysis"):
        if key not in data:
            raise ValueError(f"{path} lacks the key {key!r}")
    return data
