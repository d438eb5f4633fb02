"""Config composition (every group and option, and a sweep), the documented defaults, one schema per
option, and the errors in-process: composition's for wrong types, enum values and another
option's keys, validate's one line for keys added with ``+`` and for wrong values.
tests/test_config_cli.py meets the same errors through the CLI."""

from __future__ import annotations

import dataclasses

import pytest
from config_cases import BAD_VALUES, COMPOSITION_ERRORS, config_options, option_yaml
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, OmegaConf

from agop_sweep.analyze.names import DEFAULT_METRIC
from agop_sweep.config import (
    DATASETS,
    MODELS,
    OPTIMIZERS,
    ConfigError,
    MuonScope,
    OptimizerName,
    to_container,
    validate,
)
from agop_sweep.config.schema import GROUP_SCHEMAS
from agop_sweep.errors import UserError
from agop_sweep.run.device import choose_device

GLOBAL_GROUPS = ("hparams_search", "cluster", "experiment")  # `# @package _global_` presets
OPTION_SCHEMAS = {"optimizer": OPTIMIZERS, "data": DATASETS, "model": MODELS}


def test_the_groups_are_those_of_the_spec() -> None:
    options = config_options()
    assert {"optimizer", "model", "schedule", "analysis", "data", "experiment"} <= set(options)
    assert options["optimizer"] == ["adam", "muon", "muon_seed", "sgd"]
    assert options["data"] == ["cifar10", "cifar100", "digits", "fashion_mnist", "mnist", "npz", "svhn",
                               "synthetic"]
    assert options["experiment"] == ["seed"]
    assert "paper" in options["schedule"]
    assert sorted(OPTIMIZERS) == options["optimizer"] and sorted(DATASETS) == options["data"]


def _plain_cases() -> list[tuple[str, str]]:
    return [(g, o) for g, opts in config_options().items() if g not in GLOBAL_GROUPS for o in opts]


def _schema(group: str, option: str) -> type:
    return OPTION_SCHEMAS[group][option] if group in OPTION_SCHEMAS else GROUP_SCHEMAS[group]


@pytest.mark.parametrize(("group", "option"), _plain_cases())
def test_every_option_composes_validates_and_keeps_its_values(compose_config, group: str,
                                                               option: str) -> None:
    """An option = its schema's defaults + what its YAML sets, and the YAML names the schema."""
    cfg = compose_config(f"{group}={option}")
    validate(cfg)
    schema = _schema(group, option)
    assert OmegaConf.get_type(cfg[group]) is schema
    own = option_yaml(group, option)
    schema_name = f"/{group}_{option}_schema@_here_" if group in OPTION_SCHEMAS else f"/{group}_schema@_here_"
    # logger's options name no schema (a list of them merges): Config.logger has the type.
    assert own.pop("defaults", None) == (None if group == "logger" else [schema_name, "_self_"])
    expected = to_container(OmegaConf.merge(OmegaConf.structured(schema), own))
    assert to_container(cfg[group]) == expected


@pytest.mark.parametrize(("group", "option"), _plain_cases())
def test_every_default_lives_in_one_place(group: str, option: str) -> None:
    """A YAML sets only what its schema leaves open or changes, never a schema default."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(_schema(group, option))}
    own = option_yaml(group, option)
    own.pop("defaults", None)  # logger's options name no schema: the group's node has its type
    for key, value in own.items():
        assert defaults[key] == MISSING or defaults[key] != value, (group, option, key)


@pytest.mark.parametrize("option", config_options()["hparams_search"])
def test_lr_search_presets_compose(compose_config, option: str) -> None:
    cfg = compose_config(f"hparams_search={option}", return_hydra_config=True)
    assert cfg.optimizer.name == option
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert "optimizer.lr" in cfg.hydra.sweeper.params
    validate(compose_config(f"hparams_search={option}"))


@pytest.mark.parametrize("option", config_options()["cluster"])
def test_cluster_presets_compose(compose_config, option: str) -> None:
    cfg = compose_config(f"cluster={option}", return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert {"joblib": "JoblibLauncher", "local": "LocalLauncher", "slurm": "SlurmLauncher"}[option] in target
    assert cfg.resume == (option != "joblib")  # a requeued SLURM/submitit job resumes by itself
    validate(compose_config(f"cluster={option}"))


def test_the_seed_experiment_preset(compose_config) -> None:
    """experiment=seed: the original script's Muon, its init and batch order, 80/20 split, fp16 (CUDA)."""
    cfg = compose_config("experiment=seed", "device=cuda")
    validate(cfg)
    seed = OmegaConf.structured(OPTIMIZERS["muon_seed"])
    assert to_container(cfg.optimizer) == to_container(seed)
    assert (cfg.model.init, cfg.data.name, cfg.data.split, cfg.data.order, cfg.trainer.precision) == (
        "seed", "svhn", "seed", "seed", "fp16_on_cuda")  # fp16 on CUDA, fp32 elsewhere
    default = compose_config("device=cuda")
    differs = {k for k in ("model", "data", "trainer", "schedule", "analysis", "eval", "loss", "seed")
               if to_container(default)[k] != to_container(cfg)[k]}
    assert differs == {"model", "data", "trainer"}  # and only in init, split, order, precision:
    assert {**to_container(cfg.model), "init": "default"} == to_container(default.model)
    assert {**to_container(cfg.data), "split": "default", "order": "default"} == to_container(default.data)
    assert {**to_container(cfg.trainer), "precision": "tf32"} == to_container(default.trainer)
    validate(compose_config("experiment=seed", "device=cpu"))  # fp16_on_cuda: fp32 on a CPU


def test_defaults_are_the_reference_setup(compose_config) -> None:
    cfg = compose_config()
    validate(cfg)
    assert cfg.analysis.primary == DEFAULT_METRIC
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        "sgd", 0.1, 0.0, 0.0)
    assert (cfg.model.width, cfg.model.depth, cfg.model.act, cfg.model.init) == (1024, 5, "relu", "default")
    assert cfg.schedule.epochs == 100
    assert list(cfg.schedule.checkpoints) == [*range(21), 40, 60, 80, 100]
    assert (cfg.data.name, list(cfg.data.image_shape), cfg.data.val_fraction, cfg.data.split) == (
        "svhn", [3, 32, 32], 0.0, "default")
    assert (cfg.loss, cfg.seed, cfg.trainer.batch_size, cfg.trainer.precision) == ("mse", 1717, 128, "tf32")
    assert cfg.analysis.primary == "delta_cos_agop"
    assert compose_config("optimizer=adam").optimizer.lr == 0.001
    muon = compose_config("optimizer=muon").optimizer
    assert (muon.lr, muon.weight_decay, muon.momentum, muon.nesterov, muon.ns_steps, muon.adjust_lr_fn,
            muon.scope, muon.aux_lr) == (0.01, 0.0, 0.95, True, 5, "original", "all", 0.001)
    seed = compose_config("optimizer=muon_seed").optimizer
    assert (seed.lr, seed.momentum, seed.nesterov, seed.ns_steps, seed.eps, seed.renormalize) == (
        0.01, 0.6, True, 3, 1e-7, True)


def test_enums_read_as_strings_and_write_plain_strings(compose_config) -> None:
    cfg = compose_config("optimizer=muon", "optimizer.scope=hidden", "model.act=gelu", "loss=ce")
    assert cfg.optimizer.scope is MuonScope.middle  # hidden: the earlier name of middle
    assert cfg.optimizer.name == "muon" and cfg.model.act == "gelu" and cfg.loss == "ce"
    assert f"{cfg.model.act}:{cfg.optimizer.name}" == "gelu:muon"  # checkpoint names unchanged
    plain = to_container(cfg)
    assert (plain["optimizer"]["scope"], plain["model"]["act"], plain["loss"]) == ("middle", "gelu", "ce")
    assert type(plain["optimizer"]["name"]) is str and type(plain["analysis"]["primary"]) is str
    assert plain["optimizer"]["name"] == OptimizerName.muon.value


def test_a_sweep_composes_job_by_job(compose_config) -> None:
    overrides = OverridesParser.create().parse_overrides(
        ["optimizer=sgd,adam,muon,muon_seed", "seed=1,2", "model.width=64"])
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    assert len(jobs) == 8
    seen = set()
    for job in jobs:
        cfg = compose_config(*job)
        validate(cfg)
        seen.add((cfg.optimizer.name, cfg.optimizer.lr, cfg.seed, cfg.model.width))
    lrs = {"sgd": 0.1, "adam": 0.001, "muon": 0.01, "muon_seed": 0.01}
    assert seen == {(o, lr, s, 64) for o, lr in lrs.items() for s in (1, 2)}




@pytest.mark.parametrize(("overrides", "words"), COMPOSITION_ERRORS,
                         ids=[" ".join(o) for o, _ in COMPOSITION_ERRORS])
def test_wrong_types_values_and_keys_fail_composition(compose_config, overrides: list[str],
                                                      words: list[str]) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(*overrides)
    report = f"{err.value}\n{err.value.__cause__}"
    for word in words:
        assert word in report




@pytest.mark.parametrize(("overrides", "key"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_validate_names_the_key_in_one_line(compose_config, overrides: list[str], key: str) -> None:
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"Invalid config: {key}=")
    assert isinstance(err.value, UserError)


def test_an_added_key_is_named_with_the_keys_that_exist(compose_config) -> None:
    with pytest.raises(ConfigError, match=r"^Invalid config: optimizer.betas=\[0.8, 0.9\]: no such key for "
                       r"optimizer=sgd \(it has name, lr, weight_decay, fused, momentum\)$"):
        validate(compose_config("+optimizer.betas=[0.8,0.9]"))
    with pytest.raises(ConfigError, match=r"^Invalid config: model.widht=64: no such key for model=mlp "
                       r"\(it has name, act, init, width, depth\)$"):
        validate(compose_config("+model.widht=64"))
    with pytest.raises(ConfigError, match=r"^Invalid config: model.width=64: no such key for model=cnn "
                       r"\(it has name, act, init, channels, kernel, stride, pool, fc, head\)$"):
        validate(compose_config("model=cnn", "+model.width=64"))


def test_muon_middle_scope_with_two_layers_is_valid(compose_config) -> None:
    validate(compose_config("optimizer=muon", "optimizer.scope=middle", "model.depth=2"))
    validate(compose_config("optimizer=muon", "optimizer.scope=hidden", "model.depth=2"))
    validate(compose_config("model.init=shared_middle", "model.depth=2"))
    validate(compose_config("data.split=seed", "data.val_fraction=0.2"))  # the same 20%


def test_seed_range_is_what_torch_and_numpy_take(compose_config) -> None:
    """Both ends of the accepted range validate, and every consumer of a seed takes them
    (issue 22: seed=1e23 and data.seed=-1 died in torch's and NumPy's tracebacks)."""
    import numpy as np
    import torch

    from agop_sweep.config.validate import SEED_MAX

    for seed in (0, SEED_MAX):
        validate(compose_config(f"seed={seed}", "data=synthetic", f"data.seed={seed}"))
        torch.Generator().manual_seed(seed)
        np.random.default_rng(seed)
    with pytest.raises(ConfigError, match=r"^Invalid config: seed=9223372036854775808: must be an "
                       r"integer in \[0, 2\*\*63 - 1\]$"):
        validate(compose_config(f"seed={SEED_MAX + 1}"))


def test_no_val_samples_is_valid_only_with_the_seed_split(compose_config) -> None:
    """split=seed holds out 20 % of the training set, so n_val goes unused there."""
    validate(compose_config("data=synthetic", "data.split=seed", "data.n_val=0"))
    with pytest.raises(ConfigError, match=r"^Invalid config: data.n_val=0: must be >= 1"):
        validate(compose_config("data=synthetic", "data.n_val=0"))


def test_cuda_without_a_gpu_is_a_user_error() -> None:
    with pytest.raises(UserError, match="device='cuda'"):
        choose_device("cuda", n_gpus=0)
    with pytest.raises(UserError, match="device='cuda:2'"):
        choose_device("cuda:2", n_gpus=2)
