"""What a preset option (``experiment=seed``) sets, read from its own YAML file and shown with
the values the composed config ended up with, so that a run says what the preset changed.

The app logs :func:`preset_line` at start; a run's figures put it in their title, reading the
choice from ``.hydra/hydra.yaml`` (:func:`run_preset_line`). Nothing here is hard-coded: a
setting added to ``conf/experiment/seed.yaml`` shows up by itself.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agop_sweep.config.store import flatten

log = logging.getLogger(__name__)

PRESET_GROUP = "experiment"
GLOBAL_PACKAGE = "# @package _global_"
_CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # a source checkout's configs


def _preset_text(group: str, option: str) -> str | None:
    """The option's YAML file, from the installed configs (``agop_sweep.conf``) or the checkout's."""
    name = f"{option}.yaml"
    try:
        return importlib.resources.files("agop_sweep.conf").joinpath(group, name).read_text()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        path = _CONF_DIR / group / name
        return path.read_text() if path.is_file() else None


def preset_settings(group: str, option: str) -> dict[str, Any]:
    """Dotted key -> value for everything the option sets: its keys (under the group unless the
    file is ``@package _global_``) and, for ``override /<group>: <option>`` in its defaults
    list, ``<group>`` -> that option. Empty when the file cannot be read."""
    text = _preset_text(group, option)
    if text is None:
        return {}
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        log.warning("cannot read the preset %s=%s: %s", group, option, e)
        return {}
    prefix = "" if GLOBAL_PACKAGE in text else group
    out: dict[str, Any] = {}
    for item in loaded.pop("defaults", None) or []:
        if isinstance(item, dict):
            for key, value in item.items():
                target = str(key).removeprefix("override").strip().lstrip("/")
                if target and target != "_self_":
                    out[target.replace("/", ".")] = value
    out.update(flatten(loaded, f"{prefix}." if prefix else ""))
    return out


def _composed(config: Mapping[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, Mapping):  # a config group: its option's name
        return node.get("name")
    return node


def preset_line(group: str, option: str, config: Mapping[str, Any]) -> str | None:
    """``experiment=seed: optimizer=muon_seed, model.init=shared_middle, ...``: each setting of
    the preset with the value the run uses (``key=fp32 (preset: fp16_on_cuda)`` where the
    command line changed it); None when the preset's file cannot be read."""
    settings = preset_settings(group, option)
    if not settings:
        return None
    parts = []
    for key, preset in settings.items():
        used = _composed(config, key)
        text = f"{key}={_text(used if used is not None else preset)}"
        if used is not None and _text(used) != _text(preset):
            text += f" (preset: {_text(preset)})"
        parts.append(text)
    return f"{group}={option}: " + ", ".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_preset_line(run_dir: str | Path, config: Mapping[str, Any]) -> str | None:
    """:func:`preset_line` of the run in ``run_dir``, its choice read from .hydra/hydra.yaml;
    None without a preset (or without that file)."""
    path = Path(run_dir) / ".hydra" / "hydra.yaml"
    try:
        hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}) if path.is_file() else {}
    except (OSError, yaml.YAMLError):
        return None
    option = ((hydra.get("runtime") or {}).get("choices") or {}).get(PRESET_GROUP)
    return preset_line(PRESET_GROUP, str(option), config) if option else None
