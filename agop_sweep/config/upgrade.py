"""Configs that earlier versions saved with a run, in today's schema, so that old runs still
resume (the same-experiment check compares them with today's config) and re-analyse."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from agop_sweep.config.schema import DATASETS, OPTIMIZERS

# muon's fields that were named for the flat optimizer section of all optimizers.
_MUON_RENAMES = {"muon_momentum": "momentum", "betas": "aux_betas", "eps": "aux_eps"}
_SCOPE_RENAMES = {"hidden": "middle"}


def _field_names(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


def _upgrade_optimizer(opt: dict[str, Any]) -> None:
    """One flat section used to carry every optimizer's fields; now each has its own schema."""
    schema = OPTIMIZERS.get(opt.get("name"))  # type: ignore[arg-type]
    if schema is None:
        return  # not an optimizer of today: validate names it
    fields = _field_names(schema)
    if "fused" in fields and "fused" not in opt:
        opt["fused"] = False  # saved before optimizer.fused: torch's default, unfused step
    if "ns_dtype" in fields:  # saved before optimizer.ns_dtype: bf16, which auto keeps where
        opt.setdefault("ns_dtype", "auto")  # bf16 is fast, and fp32 spares CPUs without it
    if "compile" in fields:
        opt.setdefault("compile", False)  # muon_seed: eager Newton-Schulz, as it ran
    if opt["name"] == "muon":
        for old, new in _MUON_RENAMES.items():
            if old in opt:
                opt.pop(new, None)  # e.g. SGD's momentum, which a flat muon section also had
                opt[new] = opt.pop(old)
        if opt.get("scope") in _SCOPE_RENAMES:
            opt["scope"] = _SCOPE_RENAMES[opt["scope"]]
    for key in set(opt) - fields:
        del opt[key]


def _upgrade_data(data: dict[str, Any]) -> None:
    """One flat section used to carry every dataset's fields; every dataset gained ``split``,
    and svhn and digits the shared ``n_train`` and ``normalize``."""
    schema = DATASETS.get(data.get("name"))  # type: ignore[arg-type]
    if schema is None:
        return
    data.setdefault("split", "default")
    data.setdefault("order", "default")
    fields = _field_names(schema)
    if data["name"] != "synthetic" and "n_features" in data:
        data.pop("n_train", None)  # a flat section's n_train was synthetic's, unused by the others
    if "normalize" in fields:  # runs from before svhn's and digits' n_train and normalize
        data.setdefault("n_train", 0)  # all of the training set
        data.setdefault("normalize", "none")  # pixels in [0, 1]
    for key in set(data) - fields:
        del data[key]


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a run's config as an earlier version wrote it) in today's schema; the dict
    passed in is left alone. Sections that ``saved`` lacks stay absent.

    - ``trainer.live_plots`` (bool) became ``trainer.plots`` (true: ``live``, false: ``end``);
    - runs from before ``optimizer.fused`` took torch's default, unfused step (``false``);
    - one flat ``optimizer`` section became a schema per optimizer: the keys of the other
      optimizers go, and muon's ``muon_momentum``, ``betas`` and ``eps`` (its auxiliary
      Adam's) became ``momentum``, ``aux_betas`` and ``aux_eps``; its ``scope=hidden`` is
      ``middle``;
    - one flat ``data`` section became a schema per dataset: the keys of the others go (its
      ``n_train``, synthetic's, too); every dataset gained ``split`` and ``order``
      (``default``), svhn and digits ``n_train`` (0: all) and ``normalize`` (``none``), the
      model ``init`` (``default``);
    - the model became a schema per model: a saved model without ``name`` is the ``mlp``;
    - Muon's runs from before ``optimizer.ns_dtype`` read as ``auto`` (they ran bf16, which
      auto keeps where bf16 is fast), muon_seed's as ``compile`` false (eager, as they ran).
    """
    out = copy.deepcopy(saved)
    trainer = out.get("trainer")
    if isinstance(trainer, dict) and "live_plots" in trainer:
        live = trainer.pop("live_plots")
        trainer.setdefault("plots", "live" if live else "end")
    if isinstance(out.get("optimizer"), dict):
        _upgrade_optimizer(out["optimizer"])
    if isinstance(out.get("data"), dict):
        _upgrade_data(out["data"])
    if isinstance(out.get("model"), dict):
        out["model"].setdefault("init", "default")
        out["model"].setdefault("name", "mlp")
    return out
