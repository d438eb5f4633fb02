"""The learning-rate search presets (conf/hparams_search/*.yaml) on the project's Optuna sweeper.

The sweeper (hydra_plugins/agop_optuna_sweeper, ``hydra/sweeper=agop_optuna``) asks, launches
and tells trials on Optuna >= 4; this module adds what a search run again and again into one
storage needs:

- :class:`ExtendingTPESampler`: TPE whose seed comes from the preset's ``seed`` and the number
  of trials the study already holds. A fresh study is seeded with ``seed`` itself (the same
  command proposes the same learning rates on a new storage); running the command again on a
  stored study starts from another seed, so it proposes new learning rates instead of the
  ones already tried (which would land in the job directories already taken).
- :class:`LRSearch`, a Hydra callback: before the sweeper opens the storage it checks that
  the installed optuna is one the sweeper runs on, creates a SQLite file's directory and
  opens the study database once, so a storage that cannot work stops the command with one
  line (and leaves no half-made database file behind); after the search it rewrites the
  sweep's ``optimization_results.yaml`` with the trial counts and, when every trial diverged,
  says so instead of naming a "best" learning rate with a loss of ``.inf``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from agop_sweep.config import sqlite_file
from agop_sweep.errors import UserError
from agop_sweep.store.atomic import write_atomic
from agop_sweep.store.schema import finite_number
from hydra_plugins.agop_optuna_sweeper import MIN_OPTUNA  # the oldest optuna the sweeper runs on

log = logging.getLogger(__name__)
# alembic (optuna's storage migrations) logs one INFO line per plugin it sets up.
logging.getLogger("alembic").setLevel(logging.WARNING)

LR_PARAM = "optimizer.lr"
RESULTS_FILE = "optimization_results.yaml"


class StorageError(UserError):
    """The study storage cannot be used (one-line message)."""


def derive_seed(seed: int | None, n_trials: int) -> int | None:
    """The sampler seed for a study that already holds ``n_trials`` trials: ``seed`` for a new
    study, a hash of (``seed``, ``n_trials``) otherwise (None stays None: fresh entropy)."""
    if seed is None or n_trials == 0:
        return seed
    return int(np.random.SeedSequence([abs(int(seed)), int(n_trials)]).generate_state(1)[0])


class ExtendingTPESampler(BaseSampler):
    """Optuna's TPE sampler, seeded on its first trial with :func:`derive_seed` of ``seed`` and
    the number of trials already in the study (that trial's number). Other keyword arguments
    go to :class:`optuna.samplers.TPESampler`."""

    def __init__(self, seed: int | None = None, **tpe: Any) -> None:
        self.seed = seed
        self.effective_seed: int | None = None
        self._tpe = tpe
        self._sampler: TPESampler | None = None

    def _inner(self, trial: FrozenTrial) -> TPESampler:
        if self._sampler is None:
            self.effective_seed = derive_seed(self.seed, trial.number)
            if trial.number:
                log.info("The study holds %d trials already: TPE seeded with %s (from seed %s)",
                         trial.number, self.effective_seed, self.seed)
            self._sampler = TPESampler(seed=self.effective_seed, **self._tpe)
        return self._sampler

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        if self._sampler is not None:
            self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        if self._sampler is not None:
            self._sampler.reseed_rng()


# -- the storage -----------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _major(version: str | None) -> int:
    try:
        return int((version or "0").split(".")[0])
    except ValueError:
        return 0


def check_versions() -> None:
    """Raise StorageError when the installed optuna is older than the sweeper needs, e.g.
    optuna 2.10 left behind by hydra-optuna-sweeper 1.3 (whose storage also failed on
    SQLAlchemy 2 with a bare AssertionError, after creating an unusable database file)."""
    optuna_version = _version("optuna")
    if 0 < _major(optuna_version) < MIN_OPTUNA:
        raise StorageError(
            f"optuna {optuna_version} is too old for the learning-rate search, whose sweeper needs "
            f"optuna>={MIN_OPTUNA}; reinstall with the cluster extra (pip install '.[cluster]') or "
            f"pip install -U 'optuna>={MIN_OPTUNA}'")


def check_storage(url: str) -> None:
    """Open the study storage ``url`` once, as the sweeper will, and raise StorageError (one
    line) when that fails; a SQLite file's directory is created, and a file that this call
    created is removed again when the storage could not be set up in it."""
    check_versions()
    db = sqlite_file(url)
    existed = db is None or db.exists()
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"Cannot create the directory of the study database {db}: "
                               f"{e.strerror or e}") from None
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as e:
        if not existed and db is not None:
            db.unlink(missing_ok=True)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        old = re.search(r"set up by optuna ([\w.]+)", why)
        if old:  # a study stored by an older optuna, e.g. 2.10 under hydra-optuna-sweeper
            raise StorageError(
                f"The study storage {url} was set up by optuna {old[1]}; upgrade it once to optuna "
                f"{optuna.__version__}'s schema with: optuna storage upgrade --storage {url}") from None
        hint = (f"; {db} is not a usable optuna {optuna.__version__} study database: delete it or give "
                "another file" if existed and db is not None else "")
        raise StorageError(f"Cannot open the study storage {url}: {why}{hint}") from None
    storage.engine.dispose()


# -- the summary -----------------------------------------------------------------------------------
@dataclass
class TrialRow:
    """A trial of the study: its number, learning rate, objective (None unless complete) and state."""

    number: int
    lr: float | None
    value: float | None
    state: str


def study_trials(storage: str, study_name: str, param: str = LR_PARAM) -> list[TrialRow]:
    """The trials of a stored study, in order."""
    study = optuna.load_study(study_name=study_name, storage=storage)
    return [TrialRow(t.number, t.params.get(param), t.value, t.state.name)
            for t in study.get_trials(deepcopy=False)]


def summary(results: dict[str, Any], trials: list[TrialRow] | None) -> dict[str, Any]:
    """The sweep's summary: the sweeper's ``results`` (name, best_params, best_value) with the
    trial counts when the study is stored, and, when no trial reached a finite val loss but
    some completed (diverged: +inf), ``all_diverged`` and a message instead of a best lr."""
    out = dict(results)
    complete = [t for t in trials if t.state == "COMPLETE"] if trials is not None else None
    if complete is not None:
        out["trials"] = {
            "total": len(trials or []), "complete": len(complete),
            "diverged": sum(not finite_number(t.value) for t in complete),
            "failed": sum(t.state == "FAIL" for t in trials or []),
            "distinct_lrs": len({t.lr for t in trials or [] if t.lr is not None}),
        }
        all_diverged = bool(complete) and not any(finite_number(t.value) for t in complete)
    else:
        all_diverged = "best_value" in results and not finite_number(results["best_value"])
    out["all_diverged"] = all_diverged
    if all_diverged:
        n = f" ({len(complete)} of {len(trials or [])})" if complete is not None else ""
        out.update(best_params=None, best_value=None,
                   message=f"Every trial diverged{n}: no val loss was finite, so there is no best "
                           "learning rate; search lower learning rates")
    return out


class LRSearch(Callback):
    """Checks the storage before the search (:func:`check_storage`) and rewrites the sweep's
    optimization_results.yaml after it (:func:`summary`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from agop_sweep.run.guard import GuardStop

        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        if isinstance(storage, str) and storage:
            try:
                check_storage(storage)
            except StorageError as e:
                raise GuardStop(e) from None  # Hydra turns an Exception here into a warning

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._summarise(config)
        except Exception as e:  # the runs are done; the summary is a convenience
            log.warning("Could not summarise the learning-rate search: %s: %s", type(e).__name__, e)

    def _summarise(self, config: DictConfig) -> None:
        path = Path(str(config.hydra.sweep.dir)) / RESULTS_FILE
        if not path.exists():
            return
        results = OmegaConf.to_container(OmegaConf.load(path))
        storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
        name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
        trials = study_trials(storage, name) if isinstance(storage, str) and storage and name else None
        out = summary(results if isinstance(results, dict) else {}, trials)
        text = OmegaConf.to_yaml(OmegaConf.create(out))
        write_atomic(path, lambda f: f.write(text.encode()))
        if out["all_diverged"]:
            log.warning("%s (study %s).", out["message"], name)
        elif trials is not None:
            log.info("Study %s: %d trials, %d distinct learning rates", name, out["trials"]["total"],
                     out["trials"]["distinct_lrs"])
