"""Configs saved by earlier versions (one flat optimizer and data section for all options,
trainer.live_plots, no optimizer.fused) in today's schema: old runs still resume and re-analyse."""

from __future__ import annotations

import copy

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from agop_sweep.config import (
    DATASETS,
    OPTIMIZERS,
    ConfigError,
    structured,
    to_container,
    upgrade_saved_config,
    validate,
)
from agop_sweep.store.state import config_differences

PAPER = [*range(21), 40, 60, 80, 100]
# What the version before optimizer.fused and trainer.plots saved for a muon run with the
# hidden scope (.hydra/config.yaml, state.pt): every optimizer's and dataset's keys.
OLD_FLAT = {
    "optimizer": {
        "name": "muon", "lr": 0.01, "weight_decay": 0.0, "momentum": 0.0, "betas": [0.9, 0.999],
        "eps": 1e-08, "muon_momentum": 0.95, "nesterov": True, "ns_steps": 5, "adjust_lr_fn": "original",
        "scope": "hidden", "aux_lr": 0.001,
    },
    "model": {"width": 1024, "depth": 5, "act": "relu"},
    "schedule": {"name": "paper", "epochs": 100, "checkpoints": PAPER},
    "analysis": {"enabled": True, "primary": "delta_cos_agop", "chunk_size": 2048, "spectra": True,
                 "save_features": True, "top_eigvecs": 8},
    "data": {
        "name": "svhn", "root": "data/svhn", "verify": True, "download": True,
        "url": "http://ufldl.stanford.edu/housenumbers/", "val_fraction": 0.0, "seed": 0,
        "n_train": 2048, "n_val": 512, "n_features": 3072, "n_classes": 10, "image_shape": [3, 32, 32],
    },
    "eval": {"full_train": True, "batch_size": 8192},
    "trainer": {"batch_size": 128, "precision": "tf32", "compile": False, "live_plots": True},
    "loss": "mse", "seed": 1717, "device": "auto", "threads": 0, "resume": False,
}


def _old(optimizer: str, data: str, **data_values: object) -> dict:
    old = copy.deepcopy(OLD_FLAT)
    old["optimizer"]["name"] = optimizer
    old["optimizer"]["lr"] = {"sgd": 0.1, "adam": 0.001, "muon": 0.01}[optimizer]
    old["data"] |= {"name": data, **data_values}
    return old


# (old saved config, the overrides that compose the same experiment today)
CASES = {
    "muon hidden on svhn": (OLD_FLAT, ["optimizer=muon", "optimizer.scope=middle"]),
    "sgd on digits": (_old("sgd", "digits", val_fraction=0.2, image_shape=[1, 8, 8]),
                      ["optimizer=sgd", "data=digits"]),
    "adam on synthetic": (_old("adam", "synthetic"), ["optimizer=adam", "data=synthetic"]),
}


@pytest.mark.parametrize("case", CASES)
def test_an_old_flat_config_becomes_todays(compose_config, case: str) -> None:
    old, overrides = CASES[case]
    kept = copy.deepcopy(old)
    up = upgrade_saved_config(old)
    assert old == kept  # the saved dict itself is left alone
    # fused: those runs took torch's unfused step; plots: live_plots=true is live
    today = to_container(compose_config(*overrides, "optimizer.fused=false", "trainer.plots=live"))
    # Keys that came later still take their defaults (trainer.checkpoint_optimizer, logger).
    assert to_container(structured(up)) == today
    assert {k: v for k, v in today.items() if k in up} == {
        k: {**today[k], **up[k]} if isinstance(up[k], dict) else up[k] for k in up}
    assert upgrade_saved_config(up) == up  # and today's configs pass through unchanged
    validate(structured(up))


def test_resuming_an_old_run_names_only_what_really_differs(compose_config) -> None:
    up = upgrade_saved_config(OLD_FLAT)
    now = to_container(compose_config("optimizer=muon", "optimizer.scope=hidden"))
    assert config_differences(up, now) == ["optimizer.fused"]  # resume with optimizer.fused=false
    same = to_container(compose_config("optimizer=muon", "optimizer.scope=hidden", "optimizer.fused=false",
                                       "analysis.chunk_size=512", "device=cpu", "trainer.plots=off"))
    assert config_differences(up, same) == []


def test_an_old_muon_section_keeps_its_own_momentum_and_its_adams_settings() -> None:
    old = copy.deepcopy(OLD_FLAT)
    old["optimizer"] |= {"momentum": 0.5, "muon_momentum": 0.9, "betas": [0.8, 0.99], "eps": 1e-6,
                         "scope": "all"}
    opt = upgrade_saved_config(old)["optimizer"]
    assert (opt["momentum"], opt["aux_betas"], opt["aux_eps"], opt["scope"]) == (
        0.9, [0.8, 0.99], 1e-6, "all")
    assert set(opt) == set(to_container(OmegaConf.structured(OPTIMIZERS["muon"])))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("data", DATASETS)
def test_todays_configs_are_left_as_they_are(compose_config, optimizer: str, data: str) -> None:
    today = to_container(compose_config(f"optimizer={optimizer}", f"data={data}"))
    assert upgrade_saved_config(today) == today


def test_a_partial_config_gains_no_sections() -> None:
    up = upgrade_saved_config({"optimizer": {"name": "sgd", "lr": 0.1, "betas": [0.9, 0.9]},
                               "trainer": {"live_plots": False}})
    assert up == {"optimizer": {"name": "sgd", "lr": 0.1, "fused": False}, "trainer": {"plots": "end"}}


def test_an_unknown_option_is_left_for_validate_to_name() -> None:
    old = copy.deepcopy(OLD_FLAT)
    old["optimizer"]["name"] = "rmsprop"
    up = upgrade_saved_config(old)
    assert up["optimizer"] == old["optimizer"]
    with pytest.raises(ConfigError, match=r"^Invalid config: optimizer.name='rmsprop': must be one of sgd, "):
        validate(OmegaConf.create(up))


def test_a_reanalysis_override_applies_to_an_upgraded_config() -> None:
    """As agop_sweep.analyze.command loads a run: the saved config typed, then the overrides."""
    cfg = OmegaConf.merge(structured(upgrade_saved_config(OLD_FLAT)),
                          OmegaConf.from_dotlist(["data.root=/elsewhere", "analysis.chunk_size=64"]))
    validate(cfg)
    assert (cfg.data.root, cfg.analysis.chunk_size, cfg.optimizer.scope) == ("/elsewhere", 64, "middle")
    with pytest.raises(ConfigKeyError, match="Key 'n_val' not in 'SVHNConfig'"):
        OmegaConf.merge(structured(upgrade_saved_config(OLD_FLAT)),
                        OmegaConf.from_dotlist(["data.n_val=5"]))
