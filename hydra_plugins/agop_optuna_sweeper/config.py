"""The sweeper's config, ``hydra/sweeper=agop_optuna`` (keys as hydra-optuna-sweeper's)."""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses would look up string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.agop_optuna_sweeper.optuna_sweeper.OptunaSweeper"

    # The sampler, instantiated by Hydra: any optuna.samplers class (or a subclass of
    # optuna.samplers.BaseSampler) with its keyword arguments.
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})

    # minimize or maximize the value each job returns.
    direction: str = "minimize"

    # Where the study lives: None (in memory, gone at the end) or an RDB URL such as
    # sqlite:///outputs/study.db; a stored study is loaded and extended when it exists.
    storage: str | None = None

    # The study's name in the storage (None: a generated name, which a stored study cannot
    # be found again by).
    study_name: str | None = None

    # Trials this command adds to the study.
    n_trials: int = 20

    # Trials asked at once and launched as one batch through the configured launcher
    # (hydra/launcher: basic runs them one after another, joblib and submitit side by side).
    n_jobs: int = 1

    # The share of failed jobs in a batch above which the sweep stops with the first failure.
    max_failure_rate: float = 0.0

    # The search space, one override per key, in the command line's sweep syntax:
    # interval(a, b) (float), tag(log, interval(a, b)) (log scale), tag(int, interval(a, b)),
    # range(a, b[, step]), choice(x, y, ...); a plain value is passed to every trial unchanged.
    # Overrides of the same keys on the command line replace these.
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="agop_optuna", node=OptunaSweeperConf,
                             provider="agop_optuna_sweeper")
