"""``logger=wandb``: one Weights & Biases run per job, grouped by sweep.

The run is in project ``logger.wandb_project`` (entity ``logger.wandb_entity``), in the group
``logger.experiment`` (by default the dir that holds the job, as MLflow's experiment), named as
the MLflow run is (:mod:`.naming`), with the job's overrides as its notes. Its id comes from the
run's key (run dir and first start), so a resumed run logs into the same W&B run.

Offline unless there are credentials: without ``WANDB_API_KEY`` (or a ``wandb login`` entry in
~/.netrc) and without ``WANDB_MODE``, the run logs with ``WANDB_MODE=offline`` and contacts no
server; ``wandb sync <dir>/wandb`` uploads it later. ``WANDB_MODE`` set by the user wins. The
files go to ``$WANDB_DIR/wandb/``, else ``<outputs>/wandb/`` (next to MLflow's store).

What is logged: the resolved config as W&B config; each epoch's metrics with step = epoch; the
summary keys ``status`` (and ``diverged_epoch``, ``error``); at the end, for a run that ended
for good (completed or diverged), the PNG figures as images at the step after the last epoch
(a failed or stopped run may resume and log that step), and results.json as an artifact.

Exactly once across a resume: a resumed process opens a new .wandb file for the same run id;
it reads the run's earlier files (:mod:`.wandb_files`) and an online run's next step from the
server, and logs only the epochs that neither holds. wandb writes its file 32 KiB at a time, so
after a kill -9 the last epochs may be missing from it, whatever state.pt counted as logged;
they are logged again then.
"""

from __future__ import annotations

import hashlib
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from agop_sweep.store.record import RunRecord
from agop_sweep.trackers.base import RunContext, Tracker, group_label, log, outputs_dir, run_key
from agop_sweep.trackers.wandb_files import read_run, run_files

# Before wandb is imported: no crash reports to W&B's error tracker from an offline tool. A
# value already set wins.
WANDB_ENV = {"WANDB_ERROR_REPORTING": "false"}
DEFAULT_HOST = "https://api.wandb.ai"
ENDED = ("completed", "diverged")  # a run that never resumes


def prepare_wandb_env() -> None:
    for key, value in WANDB_ENV.items():
        os.environ.setdefault(key, value)


def has_credentials() -> bool:
    """An API key in the environment or in the netrc entry of the W&B host (``wandb login``);
    looked up locally, nothing is verified with the server."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname or ""
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str | None:
    """The mode to start the run in: None when ``WANDB_MODE`` says it (wandb reads it), else
    online with credentials, offline without."""
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if has_credentials() else "offline"


def wandb_root(run_dir: Path) -> Path:
    """The directory that holds ``wandb/``: ``$WANDB_DIR``, else the run's ``outputs`` dir."""
    env = os.environ.get("WANDB_DIR")
    return Path(env).resolve() if env else outputs_dir(run_dir)


def run_id_for(key: str) -> str:
    """A W&B run id from the run's key: the same for every process of one run."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class WandbTracker(Tracker):
    name = "wandb"
    label = "W&B"

    def __init__(self, ctx: RunContext, project: str = "agop_sweep", entity: str = "",
                 experiment: str = ""):
        super().__init__(ctx)
        self.project = project or "agop_sweep"
        self.entity = entity or None
        self.group = experiment or group_label(ctx.group)
        self.root = wandb_root(ctx.run_dir)
        self.run: Any = None
        self.run_id: str | None = None
        self.held: dict[int, set[str]] = {}  # what the run's earlier files hold, by step
        self.next_step = 0  # an online run continued: the server holds every earlier step

    def tracker_state(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}

    def open(self, record: RunRecord) -> bool:
        prepare_wandb_env()
        import wandb

        self.run_id = self.saved.get("run_id") or run_id_for(run_key(self.ctx.run_dir, record))
        wandb_dir = self.root / "wandb"
        earlier = run_files(wandb_dir, self.run_id)
        self.held = read_run(earlier).steps() if earlier else {}
        # state.pt's last_epoch counts what was handed to wandb, which a killed process may not
        # have written yet: the files (and an online run's server) say what the run holds.
        self.last_epoch = -1
        self.root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(console="off", quiet=True, silent=True, x_disable_machine_info=True)
        self.run = wandb.init(
            project=self.project, entity=self.entity, group=self.group, name=self.ctx.name,
            notes=" ".join(self.ctx.overrides) or None, job_type="train", id=self.run_id,
            resume="allow", dir=str(self.root), mode=wandb_mode(), config=record.config,
            settings=settings, reinit="create_new")
        # Online, a continued run starts at the step after the last one the server holds.
        self.next_step = int(self.run.starting_step or 0) if self.run.resumed else 0
        offline = self.run.settings.mode == "offline"
        log.info("W&B: run %r (%s) in project %r, group %r%s%s", self.ctx.name, self.run_id, self.project,
                 self.group, f", offline in {wandb_dir}; upload it with: wandb sync {wandb_dir}"
                 if offline else "", " (continued)" if earlier or self.run.resumed else "")
        return bool(earlier) or self.next_step > 0

    def logged(self, epoch: int, keys: list[str]) -> set[str]:
        if epoch < self.next_step:
            return set(keys)
        return set(keys) & self.held.get(epoch, set())

    def log_metrics(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=epoch, commit=True)

    def finish(self, record: RunRecord, run_dir: Path) -> None:
        if self.run is None:
            return
        import wandb

        summary: dict[str, Any] = {"status": record.status}
        if record.diverged_epoch is not None:
            summary["diverged_epoch"] = record.diverged_epoch
        if record.error:
            summary["error"] = record.error[:5000]
        self.run.summary.update(summary)
        if record.status in ENDED:
            images = {f"figures/{png.stem}": wandb.Image(str(png))
                      for png in sorted((run_dir / "plots").glob("*.png"))}
            if images:
                self.run.log(images, step=self.last_epoch + 1, commit=True)
        results = run_dir / "results.json"
        if results.is_file():
            artifact = wandb.Artifact(f"results-{self.run_id}", type="results")
            artifact.add_file(str(results), name="results.json")
            self.run.log_artifact(artifact)
        if record.status == "running":  # stopped by a signal: it resumes
            self.run.mark_preempting()
        self._finish_run(0 if record.status in ENDED else 1)

    def _finish_run(self, exit_code: int) -> None:
        run, self.run = self.run, None
        if run is not None:
            import wandb

            run.finish(exit_code=exit_code)
            # finish() returns before wandb's service has written the end of the .wandb file;
            # teardown waits for it, so the job's file is whole when the job ends (a joblib
            # worker may be stopped without its atexit hooks).
            wandb.teardown()

    def close(self) -> None:
        self._finish_run(1)
