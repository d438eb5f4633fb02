"""Tracker run names that tell the runs of a sweep apart.

A job's directory is named after all of its overrides (``data=digits,model.width=256,
optimizer=adam``), so a tracker's run list that showed those would cut every name off before
the part that differs. A run of a sweep is named after the keys that vary within its sweep, in
the sweep's order (``optimizer=adam``); the full override string stays a tag of the run.

Which keys vary is known only where the sweep starts: a job sees its own overrides, one value
each. :class:`SweepKeys` (a Hydra callback, on in conf/config.yaml) reads the sweep's overrides
in ``on_multirun_start`` and hands the varying keys to the jobs in an environment variable,
which the jobs of every launcher inherit (joblib's workers, submitit's jobs), as
:class:`agop_sweep.run.callbacks.SweepSize` does with the job count.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The sweep's varying keys, a JSON list, for its jobs.
SWEEP_KEYS_ENV = "AGOP_SWEEP_KEYS"


def _key(override: Override) -> str:
    return override.key_or_group.lstrip("+~")


def _varies(override: Override) -> bool:
    """A sweep over more than one value; an interval (a search draws a value per trial) too."""
    if not override.is_sweep_override():
        return False
    try:
        return len(set(override.sweep_string_iterator())) > 1
    except Exception:  # interval(...), glob(...): values that only the sweeper picks
        return True


def varying_keys(overrides: Sequence[str], params: dict[str, Any] | None = None) -> list[str]:
    """The keys that ``overrides`` (a multirun's command line) sweep over, after the sweeper's
    ``params`` (which the command line's overrides of the same key replace), in that order."""
    lines = [f"{key}={value}" for key, value in (params or {}).items()] + list(overrides)
    keys: list[str] = []
    for override in OverridesParser.create().parse_overrides(lines):
        key = _key(override)
        if key in keys:
            keys.remove(key)  # a later override of the key replaces the earlier one
        if _varies(override):
            keys.append(key)
    return keys


def sweep_run_name(keys: Sequence[str], job_overrides: Sequence[str]) -> str:
    """``key=value`` of each of ``keys`` that the job sets, in the order of ``keys``, joined by
    commas (``optimizer=adam``); "" when the job sets none of them."""
    by_key: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(job_overrides)):
        by_key[_key(override)] = f"{_key(override)}={override.get_value_element_as_str()}"
    return ",".join(by_key[key] for key in keys if key in by_key)


def sweep_keys_from_env() -> list[str] | None:
    """The varying keys that :class:`SweepKeys` handed to this job, else None."""
    raw = os.environ.get(SWEEP_KEYS_ENV)
    if not raw:
        return None
    try:
        keys = json.loads(raw)
    except ValueError:
        return None
    return [str(k) for k in keys] if isinstance(keys, list) else None


class SweepKeys(Callback):
    """Tells the jobs of a multirun which keys vary within it (:data:`SWEEP_KEYS_ENV`)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ.pop(SWEEP_KEYS_ENV, None)  # never an earlier sweep's keys
        try:
            node = OmegaConf.select(config, "hydra.sweeper.params", default=None)
            params = OmegaConf.to_container(node) if isinstance(node, DictConfig) else None
            keys = varying_keys(list(config.hydra.overrides.task), params)  # type: ignore[arg-type]
        except Exception as e:  # a syntax this cannot read: jobs are named by all their overrides
            log.debug("Could not find the sweep's varying keys: %s", e)
            return
        os.environ[SWEEP_KEYS_ENV] = json.dumps(keys)
