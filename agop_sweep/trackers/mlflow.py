"""``logger=mlflow``: one MLflow run per job, one experiment per sweep.

The store is ``logger.tracking_uri``; by default a SQLite database,
``sqlite:///<outputs>/mlflow.db``, where ``<outputs>`` is the run dir's nearest ancestor named
``outputs`` (Hydra's output root; else ``outputs/`` in the current directory). Its artifacts
(results.json, the figures) go to ``<dir of the database>/mlartifacts/``. The experiment is
``logger.experiment``, by default the dir that holds the job (``outputs/multirun/<date>/<time>``
for a sweep, ``outputs/<date>`` for single runs). A run of a sweep is named after the keys that
vary within the sweep (``optimizer=adam``, :mod:`.naming`), a single run after its overrides.

What is logged: the flattened config as params; each epoch's metrics with step = epoch; the tags
``overrides`` (all of the job's), ``status`` (running, completed, diverged, failed) and the
run's MLflow status; at the end results.json and ``plots/*.png, *.pdf`` as artifacts.

Parallel jobs of a sweep share the SQLite file: every call into a local SQLite store holds an
exclusive ``flock`` on ``<database>.lock`` (SQLite allows one writer at a time), and a call that
still meets "database is locked" (e.g. an ``mlflow ui`` reading) is retried. A resumed run
continues the MLflow run whose id state.pt holds, or the one tagged with this run's key.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agop_sweep.config import flatten, sqlite_file
from agop_sweep.store.record import RunRecord
from agop_sweep.trackers.base import RunContext, Tracker, group_label, log, outputs_dir, run_key

READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
RUN_KEY_TAG = "agop_sweep.run_key"  # the run dir and the run's first start: one per run
TERMINAL = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "running": "KILLED"}
LOCK_RETRIES = 8

# Before mlflow is imported: no usage reports from an offline tool, and a tracking server that
# is gone costs seconds, not minutes of retries. A value already set wins.
MLFLOW_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def prepare_mlflow_env() -> None:
    for key, value in MLFLOW_ENV.items():
        os.environ.setdefault(key, value)


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{outputs_dir(run_dir) / 'mlflow.db'}"


class ReadOnlyStore(Exception):
    """The local MLflow store cannot be written; its message names it."""


def read_only_reason(error: BaseException) -> str | None:
    """Why ``error``, or one it came from, says a local store cannot be written: SQLite's
    "attempt to write a readonly database", or a permission error on the database, its lock
    or their directory. None for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if "readonly database" in str(cause):
            return "attempt to write a readonly database"
        if isinstance(cause, OSError) and cause.errno in READ_ONLY_ERRNOS:
            return f"{cause.strerror}: {cause.filename}" if cause.filename else str(cause.strerror)
        cause = cause.__cause__ or cause.__context__
    return None


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowTracker(Tracker):
    name = "mlflow"
    label = "MLflow"

    def __init__(self, ctx: RunContext, tracking_uri: str = "", experiment: str = ""):
        super().__init__(ctx)
        self.uri = tracking_uri or default_tracking_uri(ctx.run_dir)
        self.experiment = experiment or group_label(ctx.group)
        db = sqlite_file(self.uri)  # absolute: the lock's and the artifacts' location
        self.db = None if db is None else db.resolve()
        self.client: Any = None
        self.run_id: str | None = None
        self.history: dict[str, set[int]] = {}

    def tracker_state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri} if self.run_id else {}

    # -- calls into the store -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        if self.db is None:
            # urllib3 warns at every retry of a request: the failure gets one warning, ours.
            quiet = logging.getLogger("urllib3.connectionpool")
            level, quiet.level = quiet.level, logging.ERROR
            try:
                yield
            finally:
                quiet.setLevel(level)
            return
        self.db.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.db}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` under the store's lock, retried while SQLite is locked."""
        for attempt in range(LOCK_RETRIES):
            try:
                with self._store_lock():
                    return fn(*args, **kwargs)
            except Exception as e:
                reason = read_only_reason(e) if self.db is not None else None
                if reason is not None:  # MLflow's own report is a traceback that never says so
                    raise ReadOnlyStore(f"the store {self.db} is read-only ({reason}); give "
                                        "logger.tracking_uri a writable one") from None
                if "locked" not in str(e).lower() or attempt == LOCK_RETRIES - 1:
                    raise
                time.sleep(min(0.05 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    # -- the run ------------------------------------------------------------------------------------
    def open(self, record: RunRecord) -> bool:
        prepare_mlflow_env()
        logging.getLogger("alembic").setLevel(logging.WARNING)  # the store's first-use chatter
        # Its first-use chatter, and every database error logged with a traceback before it is
        # raised to _call, which reports it in one line.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        from mlflow import MlflowClient

        self.client = self._call(MlflowClient, tracking_uri=self.uri)
        experiment_id = self._experiment_id()
        key = run_key(self.ctx.run_dir, record)
        self.run_id = self._existing_run(experiment_id, key)
        existed = self.run_id is not None
        if self.run_id is None:
            self.run_id = self._create_run(experiment_id, key, record)
        else:
            self._call(self.client.update_run, self.run_id, status="RUNNING")
            self._call(self.client.set_tag, self.run_id, "status", "running")
        log.info("MLflow: run %r (%s) in experiment %r at %s%s", self.ctx.name, self.run_id,
                 self.experiment, self.uri, " (continued)" if existed else "")
        return existed

    def _experiment_id(self) -> str:
        found = self._call(self.client.get_experiment_by_name, self.experiment)
        if found is not None:
            return found.experiment_id
        location = None if self.db is None else (self.db.parent / "mlartifacts").as_uri()
        try:
            return self._call(self.client.create_experiment, self.experiment, artifact_location=location)
        except Exception:
            # Another job of the sweep created it first (a remote store; SQLite is locked).
            found = self._call(self.client.get_experiment_by_name, self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _existing_run(self, experiment_id: str, run_key: str) -> str | None:
        """The run to continue: state.pt's, if this store has it, else the one tagged ``run_key``
        (a run killed before state.pt learnt its id)."""
        run_id = self.saved.get("run_id")
        if run_id and self.saved.get("tracking_uri") == self.uri:
            try:
                return self._call(self.client.get_run, run_id).info.run_id
            except Exception as e:
                if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(e, "error_code", e)):
                    raise
        if "'" in run_key:
            return None
        runs = self._call(self.client.search_runs, [experiment_id],
                          filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1)
        return runs[0].info.run_id if runs else None

    def _create_run(self, experiment_id: str, run_key: str, record: RunRecord) -> str:
        from mlflow.entities import Param

        tags = {RUN_KEY_TAG: run_key, "status": "running", "run_dir": str(self.ctx.run_dir),
                "group_dir": str(self.ctx.group), "overrides": " ".join(self.ctx.overrides)}
        if self.ctx.job_num is not None:
            tags["job_num"] = str(self.ctx.job_num)
        run = self._call(self.client.create_run, experiment_id, run_name=self.ctx.name, tags=tags)
        params = [Param(key, str(value)[:6000]) for key, value in flatten(record.config).items()]
        for chunk in _chunks(params, 100):
            self._call(self.client.log_batch, run.info.run_id, params=chunk)
        return run.info.run_id

    # -- per epoch ----------------------------------------------------------------------------------
    def logged(self, epoch: int, keys: list[str]) -> set[str]:
        for key in keys:
            if key not in self.history:
                history = self._call(self.client.get_metric_history, self.run_id, key)
                self.history[key] = {m.step for m in history}
        return {key for key in keys if epoch in self.history[key]}

    def log_metrics(self, epoch: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, epoch) for key, value in metrics.items()]
        for chunk in _chunks(batch, 1000):
            self._call(self.client.log_batch, self.run_id, metrics=chunk)

    def finish(self, record: RunRecord, run_dir: Path) -> None:
        if self.client is None or self.run_id is None:
            return
        tags = {"status": record.status}
        if record.diverged_epoch is not None:
            tags["diverged_epoch"] = str(record.diverged_epoch)
        if record.error:
            tags["error"] = record.error[:5000]
        for key, value in tags.items():
            self._call(self.client.set_tag, self.run_id, key, value)
        files = [run_dir / "results.json"]
        files += sorted(p for p in (run_dir / "plots").glob("*") if p.suffix in (".png", ".pdf"))
        for path in files:
            if path.is_file():
                artifact_dir = None if path.parent == run_dir else path.parent.name
                self._call(self.client.log_artifact, self.run_id, str(path), artifact_dir)
        self._call(self.client.set_terminated, self.run_id, TERMINAL.get(record.status, "FINISHED"))
