"""agop_sweep's Hydra sweeper on Optuna >= 4 (``hydra/sweeper=agop_optuna``).

A thin layer on Optuna's ask/tell API and Hydra's launcher, laid out as Hydra's own sweeper
plugins are: ``config.py`` registers the config, ``optuna_sweeper.py`` holds the plugin class
that Hydra's plugin scan finds, ``_impl.py`` (not scanned: it imports optuna) does the work,
``_checks.py`` holds its error and the optuna version check.
It stands in for hydra-optuna-sweeper 1.3, which pins optuna 2.10, until a hydra-optuna-sweeper
release supports optuna >= 3/4. Nothing here imports optuna: Hydra scans it at every start.
"""

from ._checks import MIN_OPTUNA, SweeperError, check_optuna

__all__ = ["MIN_OPTUNA", "SweeperError", "check_optuna"]
