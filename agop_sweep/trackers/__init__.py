"""Experiment trackers as observers of a run (the ``logger`` config group).

``logger=tensorboard``, ``logger=mlflow``, ``logger=wandb``, ``logger=both`` (the same as
``logger=[tensorboard,mlflow]``) and any list of them (``logger=[tensorboard,wandb]``) stream
every epoch's numbers, the config and at the end the run's status and files to TensorBoard
event files (:mod:`.tensorboard`), an MLflow store (:mod:`.mlflow`) or a Weights & Biases run
(:mod:`.wandb`, offline without an API key); results.json stays the record. Runs are named
after the keys that vary within their sweep (:mod:`.naming`). Each tracker is an optional extra:
:func:`check_available` stops a run before any work when its package is missing. A tracker
that fails while the run goes on (a server gone, a full disk) logs one warning and is off for
the rest of the run (:class:`.base.Tracker`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from agop_sweep.errors import ConfigError
from agop_sweep.run.observers import Observer

# logger.<key> -> the module it needs, which the extra agop_sweep[<key>] installs.
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def enabled_trackers(cfg: DictConfig) -> list[str]:
    """The trackers that ``cfg.logger`` switches on, in a fixed order."""
    return [name for name in TRACKERS if OmegaConf.select(cfg, f"logger.{name}", default=False)]


def check_available(cfg: DictConfig) -> None:
    """Raise a one-line ConfigError when a configured tracker's package is missing."""
    for name in enabled_trackers(cfg):
        if name == "mlflow":
            from agop_sweep.trackers.mlflow import prepare_mlflow_env

            prepare_mlflow_env()  # before mlflow is imported
        elif name == "wandb":
            from agop_sweep.trackers.wandb import prepare_wandb_env

            prepare_wandb_env()  # before wandb is imported
        try:
            importlib.import_module(TRACKERS[name])
        except ImportError as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"logger={name} needs the {TRACKERS[name]} package ({why}): "
                              f"pip install 'agop_sweep[{name}]'") from None


def build_trackers(cfg: DictConfig, run_dir: Path) -> list[Observer]:
    """The configured trackers (none by default). Cheap and never raises: a tracker starts
    at the end of the first epoch, inside its own error handling."""
    from agop_sweep.trackers.base import run_context

    names = enabled_trackers(cfg)
    if not names:
        return []
    ctx = run_context(run_dir)
    trackers: list[Observer] = []
    if "tensorboard" in names:
        from agop_sweep.trackers.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(ctx))
    if "mlflow" in names:
        from agop_sweep.trackers.mlflow import MlflowTracker

        trackers.append(MlflowTracker(ctx, str(cfg.logger.tracking_uri), str(cfg.logger.experiment)))
    if "wandb" in names:
        from agop_sweep.trackers.wandb import WandbTracker

        trackers.append(WandbTracker(ctx, str(cfg.logger.wandb_project), str(cfg.logger.wandb_entity),
                                     str(cfg.logger.experiment)))
    return trackers
