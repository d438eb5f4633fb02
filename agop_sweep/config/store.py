"""The schema in Hydra's ConfigStore, the run-control keys, and conversions of a config and
its values."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from agop_sweep.config.schema import GROUP_SCHEMAS, OPTION_SCHEMAS, Config

# Keys that steer how a run executes, not what it computes. They may differ when a run is
# resumed, and they are left out of sweep directory names (Hydra's override_dirname takes
# them from here, through the resolver below). A key covers every key under it: ``logger``
# also stands for ``logger.*``. ``cluster`` and ``hparams_search`` are preset groups that
# only choose a launcher or a sweeper.
RUN_CONTROL_KEYS: frozenset[str] = frozenset({
    "resume", "device", "threads",
    "data.root", "data.download", "data.verify", "data.url",
    "trainer.plots", "trainer.checkpoint_optimizer", "trainer.checkpoint_names", "eval.batch_size",
    "analysis.chunk_size", "analysis.conv_chunk_size",
    "cluster", "hparams_search", "logger",
})

# conf/config.yaml: hydra.job.config.override_dirname.exclude_keys: ${<this>:}
EXCLUDE_KEYS_RESOLVER = "agop_sweep.run_control_keys"
# conf/config.yaml: hydra.run.dir and hydra.sweep.dir end in ${now:...}-${<this>:}
PID_RESOLVER = "agop_sweep.pid"


def is_run_control_key(key: str) -> bool:
    """Whether the dotted ``key`` is a run-control key or lies under one."""
    return any(key == k or key.startswith(k + ".") for k in RUN_CONTROL_KEYS)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys: ``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def sqlite_file(url: str) -> Path | None:
    """The database file that a store URL names (``logger.tracking_uri``,
    ``hydra.sweeper.storage``): the path of a ``sqlite:///`` URL as written (relative to the
    current dir unless absolute); None for another database, an in-memory one or a ``file:`` URI."""
    if not url.startswith("sqlite"):
        return None
    try:
        from sqlalchemy.engine import make_url  # MLflow's and optuna's dependency
    except ImportError:
        return None
    try:
        parsed = make_url(url)
    except Exception:
        return None
    db = parsed.database
    if not parsed.drivername.startswith("sqlite") or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _keys_under(node: Any, prefix: str) -> list[str]:
    if not isinstance(node, DictConfig):
        return []
    out = []
    for key in node:
        dotted = f"{prefix}.{key}"
        out += [dotted, *_keys_under(node._get_node(key), dotted)]
    return out


def run_control_exclude_keys(_root_: DictConfig | None = None) -> list[str]:
    """Hydra's ``exclude_keys`` for override_dirname: :data:`RUN_CONTROL_KEYS`, and as Hydra
    compares keys exactly, every key that the composed config ``_root_`` holds under them."""
    keys = set(RUN_CONTROL_KEYS)
    if _root_ is not None:
        for key in RUN_CONTROL_KEYS:
            parent, _, child = key.rpartition(".")
            node = _root_ if not parent else OmegaConf.select(_root_, parent, default=None)
            if isinstance(node, DictConfig) and child in node:
                keys.update(_keys_under(node._get_node(child), key))
    return sorted(keys)


def _schema_name(group: str, option: str) -> str:
    return f"{group}_{option}_schema"


def _import_conf_from_source_tree() -> None:
    """Make ``agop_sweep.conf`` importable when agop_sweep runs from a source checkout that is
    not the installed package (``python -m agop_sweep`` in the repository root after a plain
    ``pip install .``: the checkout's agop_sweep shadows the installed one, and its configs
    live in the top-level conf/, which only the wheel and an editable install map there)."""
    if "agop_sweep.conf" in sys.modules or importlib.util.find_spec("agop_sweep.conf") is not None:
        return
    conf = Path(__file__).resolve().parents[2] / "conf"
    spec = importlib.util.spec_from_file_location(
        "agop_sweep.conf", conf / "__init__.py", submodule_search_locations=[str(conf)])
    if spec is None or spec.loader is None or not (conf / "config.yaml").is_file():
        return  # Hydra then reports the missing config module
    module = importlib.util.module_from_spec(spec)
    sys.modules["agop_sweep.conf"] = module
    spec.loader.exec_module(module)
    sys.modules["agop_sweep"].conf = module  # type: ignore[attr-defined]


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore and register the run-control and pid resolvers.

    ``config_schema`` is the root; ``<group>_<option>_schema`` (or ``<group>_schema`` for a
    group whose options share one) is what an option's YAML names in its defaults list,
    ``- /optimizer_sgd_schema@_here_``. They are stored outside the groups, so that
    ``--help`` lists only the options themselves. Idempotent.
    """
    _import_conf_from_source_tree()
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, options in OPTION_SCHEMAS.items():
        for option, schema in options.items():
            cs.store(name=_schema_name(group, option), node=schema)
    for group, schema in GROUP_SCHEMAS.items():
        cs.store(name=f"{group}_schema", node=schema)
    if not OmegaConf.has_resolver(EXCLUDE_KEYS_RESOLVER):
        OmegaConf.register_new_resolver(EXCLUDE_KEYS_RESOLVER, run_control_exclude_keys)
    if not OmegaConf.has_resolver(PID_RESOLVER):
        # The command's process id ends the default output dir's name: two commands that live
        # at once on one host have two ids, so their dirs differ even when their clocks read
        # the same microsecond. Cached like Hydra's ``now``, whose cache Hydra copies into every
        # job's config: a sweep's jobs, also those that joblib or submitit run in other
        # processes, see the id of the command that named the sweep dir.
        OmegaConf.register_new_resolver(PID_RESOLVER, os.getpid, use_cache=True)


def structured(container: dict[str, Any]) -> DictConfig:
    """``container`` (a plain config in today's schema, e.g. a saved run's config after
    :func:`upgrade_saved_config`) as a typed config: the optimizer and data schemas are those
    that its ``optimizer.name``, ``data.name`` and ``model.name`` pick. Raises OmegaConf's errors for a key
    the schema lacks or a value of the wrong type."""
    base = OmegaConf.structured(Config)
    for group, options in OPTION_SCHEMAS.items():
        node = container.get(group)
        name = node.get("name") if isinstance(node, dict) else None
        if name in options:
            base[group] = OmegaConf.structured(options[name])
    cfg = OmegaConf.merge(base, container)
    assert isinstance(cfg, DictConfig)
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict of plain values, enums as their strings (what
    results.json, checkpoints and state.pt store)."""
    out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
