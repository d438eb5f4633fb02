"""What the sweeper needs before it imports optuna: its error, and the optuna version check.

In a module whose name starts with ``_``, which Hydra's plugin scan skips: the scan executes
every other module of the package again, which would make a second ``SweeperError`` class that
code holding the first could not catch.
"""

from importlib import metadata

from hydra.errors import CompactHydraException

MIN_OPTUNA = 4  # ask(fixed_distributions), FloatDistribution/IntDistribution, tell(skip_if_finished)


class SweeperError(CompactHydraException):
    """A sweeper setting or environment that cannot work (a one-line message)."""


def check_optuna() -> None:
    """Raise SweeperError unless optuna >= MIN_OPTUNA is installed."""
    try:
        version = metadata.version("optuna")
    except metadata.PackageNotFoundError:
        raise SweeperError("hydra/sweeper=agop_optuna needs optuna: "
                           f"pip install 'optuna>={MIN_OPTUNA}'") from None
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return
    if major < MIN_OPTUNA:
        raise SweeperError(f"hydra/sweeper=agop_optuna needs optuna>={MIN_OPTUNA}, this environment has "
                           f"optuna {version}: pip install -U 'optuna>={MIN_OPTUNA}'")
