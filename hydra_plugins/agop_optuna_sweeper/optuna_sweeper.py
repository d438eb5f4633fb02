"""The plugin class that Hydra's plugin scan finds; optuna is imported only when it is used."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from . import check_optuna


class OptunaSweeper(Sweeper):
    """Optuna >= 4 as a Hydra sweeper: asks ``n_jobs`` trials at a time, launches them as one
    batch and tells the study what each job returned (see :mod:`._impl`).

    The settings are checked in :meth:`setup`, not here: Hydra wraps an error raised while it
    instantiates a plugin into a report of its own, but lets one from ``setup`` through.
    """

    def __init__(self, sampler: Any, direction: str, storage: str | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None) -> None:
        self.settings = dict(sampler=sampler, direction=direction, storage=storage, study_name=study_name,
                             n_trials=n_trials, n_jobs=n_jobs, max_failure_rate=max_failure_rate,
                             params=params)
        self.sweeper: Any = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        check_optuna()  # before _impl imports what only optuna >= 4 has
        from ._impl import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(**self.settings)
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)
