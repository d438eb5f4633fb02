"""The sweep: parse the search space, then ask, launch and tell, ``n_jobs`` trials at a time.

The search space is written as Hydra's sweep overrides (``tag(log, interval(1e-3, 1))``),
parsed with Hydra's OverridesParser and turned into Optuna distributions; each batch of
trials is asked from the study with those distributions, launched through the configured
launcher as one batch of jobs, and each job's return value is told to the study (a job that
failed is told as a failed trial). The best trial goes to ``<sweep dir>/optimization_results.yaml``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import Trial, TrialState

from . import SweeperError

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
DIRECTIONS = ("minimize", "maximize")


# -- the search space ------------------------------------------------------------------------------
def distribution(override: Override) -> BaseDistribution | str:
    """The Optuna distribution of one sweep override, or the value of a plain one (as the
    command line writes it)."""
    key = override.get_key_element()
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise SweeperError(f"{key}: an interval needs a start below its end, got {low} and {high}")
        log_scale = "log" in value.tags
        if log_scale and low <= 0:
            raise SweeperError(f"{key}: a log interval needs a positive start, got {low}")
        if "int" in value.tags:
            return IntDistribution(math.ceil(low), math.floor(high), log=log_scale)
        return FloatDistribution(low, high, log=log_scale)
    if isinstance(value, RangeSweep) and not value.shuffle:
        values = list(override.sweep_iterator())
        if not values:
            raise SweeperError(f"{key}: the range {override.get_value_element_as_str()} is empty")
        if all(isinstance(v, int) for v in values) and isinstance(value.step, int):
            step = abs(value.step) if len(values) > 1 else 1
            return IntDistribution(min(values), max(values), step=step)
        return CategoricalDistribution(values)
    if isinstance(value, (ChoiceSweep, RangeSweep)):  # a choice, or a shuffled range: categories
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        if value.shuffle:  # in one order every time: a stored study refuses other choices
            choices.sort(key=lambda c: (type(c).__name__, c))
        return CategoricalDistribution(choices)
    raise SweeperError(f"The sweeper cannot search {override.input_line or key}: use interval(a, b), "
                       "tag(log, interval(a, b)), range(a, b) or choice(...)")


def search_space(params: Mapping[str, str] | None,
                 arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    """The distributions to search and the fixed values to pass to every trial, from the
    sweeper's ``params`` and then the command line's overrides (which replace ``params``'
    entries for the same key)."""
    overrides = [f"{key}={value}" for key, value in (params or {}).items()] + list(arguments)
    by_key: dict[str, Override] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        by_key.pop(key, None)  # the later override replaces the earlier one, and goes last
        by_key[key] = override
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for key, override in by_key.items():
        value = distribution(override)
        if isinstance(value, BaseDistribution):
            distributions[key] = value
        else:
            fixed[key] = value
    return distributions, fixed


def trial_overrides(trial: Trial | optuna.trial.FrozenTrial, fixed: Mapping[str, str]) -> list[str]:
    """The job's overrides: the trial's parameters, then the fixed values."""
    return [f"{key}={value}" for key, value in trial.params.items()] + [f"{k}={v}" for k, v in fixed.items()]


# -- the sweeper -----------------------------------------------------------------------------------
class OptunaSweeperImpl(Sweeper):
    def __init__(self, *, sampler: Any, direction: str, storage: str | None, study_name: str | None,
                 n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: Mapping[str, str] | None) -> None:
        if direction not in DIRECTIONS:
            raise SweeperError(f"hydra.sweeper.direction must be minimize or maximize, got {direction!r}")
        if n_trials < 0:
            raise SweeperError(f"hydra.sweeper.n_trials must be 0 or more, got {n_trials}")
        if n_jobs < 1:
            raise SweeperError(f"hydra.sweeper.n_jobs must be 1 or more, got {n_jobs}")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise SweeperError(f"hydra.sweeper.max_failure_rate must lie in [0, 1], got {max_failure_rate}")
        if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
            raise SweeperError("hydra.sweeper.sampler must be an Optuna sampler, got "
                               f"{type(sampler).__name__}")
        self.sampler = sampler
        self.direction = direction
        self.storage = storage or None
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.max_failure_rate = max_failure_rate
        self.params = dict(params) if params else {}
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Launcher | None = None
        self.job_idx = 0
        self._study: optuna.Study | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.job_idx = 0
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def study(self) -> optuna.Study:
        """The study: created, or loaded from the storage when it holds one of this name."""
        if self._study is None:
            self._study = optuna.create_study(study_name=self.study_name, storage=self.storage,
                                              sampler=self.sampler, direction=self.direction,
                                              load_if_exists=True)
        return self._study

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.config is not None and self.launcher is not None
        distributions, fixed = search_space(self.params, arguments)
        if not distributions:
            log.warning("The search space is empty: every trial runs the same overrides")
        study = self.study()
        held = len(study.get_trials(deepcopy=False))
        log.info("Study %s (%s): %d trials held, %d to add, %d at a time; sampler %s", study.study_name,
                 self.storage or "in memory", held, self.n_trials, self.n_jobs, type(self.sampler).__name__)
        log.info("Search space: %s", ", ".join(f"{k}: {v}" for k, v in distributions.items()) or "none")
        batches: list[Sequence[JobReturn]] = []
        left = self.n_trials
        while left > 0:
            size = min(left, self.n_jobs)
            batches.append(self._run_batch(study, size, distributions, fixed))
            left -= size
        self._write_results(study)
        return batches

    def _run_batch(self, study: optuna.Study, size: int, distributions: dict[str, BaseDistribution],
                   fixed: Mapping[str, str]) -> Sequence[JobReturn]:
        assert self.launcher is not None
        trials: list[Trial] = []
        try:
            for _ in range(size):
                trials.append(study.ask(distributions))
                for key, value in fixed.items():
                    trials[-1].set_user_attr(key, value)
            overrides = [trial_overrides(trial, fixed) for trial in trials]
            self.validate_batch_is_legal(overrides)
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        except BaseException:
            for trial in trials:  # no trial of an interrupted batch stays RUNNING in the study
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        self.job_idx += len(returns)
        failed = []
        for trial, ret in zip(trials, returns, strict=True):
            value = self._value(ret)
            if value is None:
                study.tell(trial, state=TrialState.FAIL)
                failed.append(ret)
            else:
                study.tell(trial, value)
        if failed and len(failed) / len(returns) > self.max_failure_rate:
            log.error("%d of %d jobs of the batch failed (max_failure_rate=%s)", len(failed), len(returns),
                      self.max_failure_rate)
            _ = failed[0].return_value  # raises the job's own error
            raise SweeperError(f"{len(failed)} of {len(returns)} jobs of a batch returned no number (e.g. "
                               f"{failed[0].overrides}); raise hydra.sweeper.max_failure_rate to go on")
        return returns

    @staticmethod
    def _value(ret: JobReturn) -> float | None:
        """The job's return value as the trial's objective; None when the job failed or
        returned something that is not a number (NaN included)."""
        try:
            raw = ret.return_value  # raises the job's error when it failed
        except Exception as e:
            log.warning("Job %s failed: %s: %s", ret.overrides, type(e).__name__, e)
            return None
        try:
            value = float(raw)
        except (TypeError, ValueError):
            log.warning("Job %s returned %r, not a number: its trial failed", ret.overrides, raw)
            return None
        if math.isnan(value):
            log.warning("Job %s returned NaN: its trial failed", ret.overrides)
            return None
        return value

    def _write_results(self, study: optuna.Study) -> None:
        assert self.config is not None
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        results: dict[str, Any] = {"name": "optuna"}
        if complete:
            best = study.best_trial
            results.update(best_params=dict(best.params), best_value=best.value)
            log.info("Best of %d complete trials: %s, value %s", len(complete), best.params, best.value)
        path = Path(str(self.config.hydra.sweep.dir)) / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), path)
