"""Config composition (every group and option, and a sweep), the SPEC defaults, and start-up
errors: Hydra's for wrong types and unknown keys, validate's one line for wrong values."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml
from conftest import error_lines, run_cli_many
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from agop_sweep.config import ConfigError, validate
from agop_sweep.device import choose_device
from agop_sweep.errors import UserError

CONF = resources.files("agop_sweep") / "conf"
GLOBAL_GROUPS = ("hparams_search", "cluster")  # `# @package _global_` presets


def _options() -> dict[str, list[str]]:
    """Every config group under conf/ and its options, read from the package's files."""
    return {
        group.name: sorted(f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml"))
        for group in CONF.iterdir()
        if group.is_dir() and any(f.name.endswith(".yaml") for f in group.iterdir())
    }


def _yaml(group: str, option: str) -> dict:
    return yaml.safe_load((CONF / group / f"{option}.yaml").read_text())


def test_the_groups_are_those_of_the_spec() -> None:
    options = _options()
    assert {"optimizer", "model", "schedule", "analysis", "data"} <= set(options)
    assert options["optimizer"] == ["adam", "muon", "sgd"]
    assert options["data"] == ["digits", "svhn", "synthetic"]
    assert "paper" in options["schedule"]


def _plain_cases() -> list[tuple[str, str]]:
    return [(g, o) for g, opts in _options().items() if g not in GLOBAL_GROUPS for o in opts]


@pytest.mark.parametrize(("group", "option"), _plain_cases())
def test_every_option_composes_validates_and_keeps_its_values(compose_config, group: str,
                                                               option: str) -> None:
    cfg = compose_config(f"{group}={option}")
    validate(cfg)
    node = OmegaConf.to_container(cfg[group], resolve=True)
    for key, value in _yaml(group, option).items():
        assert node[key] == value, (group, option, key)


@pytest.mark.parametrize("option", _options()["hparams_search"])
def test_lr_search_presets_compose(compose_config, option: str) -> None:
    cfg = compose_config(f"hparams_search={option}", return_hydra_config=True)
    assert cfg.optimizer.name == option
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert "optimizer.lr" in cfg.hydra.sweeper.params
    validate(compose_config(f"hparams_search={option}"))


@pytest.mark.parametrize("option", _options()["cluster"])
def test_cluster_presets_compose(compose_config, option: str) -> None:
    cfg = compose_config(f"cluster={option}", return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert {"joblib": "JoblibLauncher", "local": "LocalLauncher", "slurm": "SlurmLauncher"}[option] in target
    assert cfg.resume == (option != "joblib")  # a requeued SLURM/submitit job resumes by itself
    validate(compose_config(f"cluster={option}"))


def test_defaults_are_the_reference_setup(compose_config) -> None:
    cfg = compose_config()
    validate(cfg)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        "sgd", 0.1, 0.0, 0.0)
    assert (cfg.model.width, cfg.model.depth, cfg.model.act) == (1024, 5, "relu")
    assert cfg.schedule.epochs == 100
    assert list(cfg.schedule.checkpoints) == [*range(21), 40, 60, 80, 100]
    assert (cfg.data.name, list(cfg.data.image_shape), cfg.data.val_fraction) == ("svhn", [3, 32, 32], 0.0)
    assert (cfg.loss, cfg.seed, cfg.trainer.batch_size) == ("mse", 1717, 128)
    assert cfg.analysis.primary == "delta_cos_agop"
    assert compose_config("optimizer=adam").optimizer.lr == 0.001
    muon = compose_config("optimizer=muon").optimizer
    assert (muon.lr, muon.weight_decay, muon.muon_momentum, muon.nesterov, muon.ns_steps, muon.adjust_lr_fn,
            muon.scope) == (0.01, 0.0, 0.95, True, 5, "original", "all")


def test_a_sweep_composes_job_by_job(compose_config) -> None:
    overrides = OverridesParser.create().parse_overrides(
        ["optimizer=sgd,adam,muon", "seed=1,2", "model.width=64"])
    (jobs,) = BasicSweeper.split_arguments(overrides, None)
    assert len(jobs) == 6
    seen = set()
    for job in jobs:
        cfg = compose_config(*job)
        validate(cfg)
        seen.add((cfg.optimizer.name, cfg.optimizer.lr, cfg.seed, cfg.model.width))
    lrs = {"sgd": 0.1, "adam": 0.001, "muon": 0.01}
    assert seen == {(o, lr, s, 64) for o, lr in lrs.items() for s in (1, 2)}


@pytest.mark.parametrize(("override", "words"), [
    ("model.width=abc", ["model.width=abc"]),
    ("optimizer.foo=1", ["optimizer.foo"]),
    ("schedule.checkpoints=three", ["schedule.checkpoints"]),
])
def test_wrong_types_and_unknown_keys_fail_composition(compose_config, override: str,
                                                       words: list[str]) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(override)
    for word in words:
        assert word in str(err.value)


# Legal types, wrong values: (overrides, key that the one-line message names).
BAD_VALUES = [
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-1"], "optimizer.lr"),
    (["optimizer=adam", "optimizer.lr=nan"], "optimizer.lr"),
    (["model.width=0"], "model.width"),
    (["model.depth=0"], "model.depth"),
    (["schedule.epochs=3", "schedule.checkpoints=[0,5]"], "schedule.checkpoints"),
    (["schedule.checkpoints=[0,1,1]", "schedule.epochs=3"], "schedule.checkpoints"),
    (["model.act=swish"], "model.act"),
    (["loss=hinge"], "loss"),
    (["schedule.checkpoints=[]"], "schedule.checkpoints"),
    (["schedule.epochs=0", "schedule.checkpoints=[0]"], "schedule.epochs"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["device=tpu"], "device"),
    (["optimizer=muon", "optimizer.scope=hidden", "model.depth=1"], "optimizer.scope"),
    (["optimizer=muon", "optimizer.scope=some"], "optimizer.scope"),
    (["optimizer=sgd", "optimizer.momentum=1"], "optimizer.momentum"),
    (["analysis.primary=raw_cos_nfm"], "analysis.primary"),
    (["data=synthetic", "data.n_classes=1"], "data.n_classes"),
    (["trainer.plots=sometimes"], "trainer.plots"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_validate_names_the_key_in_one_line(compose_config, overrides: list[str], key: str) -> None:
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"Invalid config: {key}=")
    assert isinstance(err.value, UserError)


def test_muon_hidden_scope_with_two_layers_is_valid(compose_config) -> None:
    validate(compose_config("optimizer=muon", "optimizer.scope=hidden", "model.depth=2"))
    validate(compose_config("optimizer=sgd", "optimizer.scope=hidden", "model.depth=1"))  # not Muon: unused


def test_cuda_without_a_gpu_is_a_user_error() -> None:
    with pytest.raises(UserError, match="device='cuda'"):
        choose_device("cuda", n_gpus=0)
    with pytest.raises(UserError, match="device='cuda:2'"):
        choose_device("cuda:2", n_gpus=2)


# -- the same at start-up, as a user meets them ---------------------------------------------


def _bad_commands(tmp_path: Path, cases: list[tuple[list[str], str]]) -> dict[str, list[str]]:
    return {f"case{i}": [*over, f"hydra.run.dir={tmp_path / f'case{i}'}"]
            for i, (over, _) in enumerate(cases)}


def _assert_one_line_error(proc, key: str, run_dir: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"Invalid config: {key}="), proc.stderr
    assert not (run_dir / "results.json").exists()


@pytest.fixture(scope="module")
def startup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Two start-up failures and --help, side by side (each one is mostly the start-up of
    Python and Hydra); test_every_wrong_value_at_startup covers every other case the same way."""
    root = tmp_path_factory.mktemp("startup")
    commands = {
        "type": ["model.width=abc", f"hydra.run.dir={root / 'type'}"],
        "scope": ["optimizer=muon", "optimizer.scope=hidden", "model.depth=1",
                  f"hydra.run.dir={root / 'scope'}"],
        "help": ["--help"],
    }
    return root, run_cli_many(commands, cwd=root, parallel=3)


def test_wrong_type_at_startup(startup) -> None:
    root, procs = startup
    proc = procs["type"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "model.width=abc" in proc.stderr and "could not be converted to Integer" in proc.stderr
    assert not (root / "type").exists()  # composition fails before the run dir is made


def test_wrong_value_at_startup(startup) -> None:
    root, procs = startup
    _assert_one_line_error(procs["scope"], "optimizer.scope", root / "scope")


def test_help_lists_every_group_and_option(startup) -> None:
    _, procs = startup
    proc = procs["help"]
    assert proc.returncode == 0, proc.stderr
    listed = {}
    section = proc.stdout.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    for line in section.splitlines():
        group, sep, opts = line.partition(": ")
        if sep and not group.startswith(" "):
            listed[group] = sorted(o.strip() for o in opts.split(","))
    assert listed == _options()
    assert "python -m agop_sweep -m optimizer=sgd,adam,muon" in proc.stdout


def test_every_wrong_value_at_startup(tmp_path: Path) -> None:
    commands = _bad_commands(tmp_path, BAD_VALUES)
    commands["unknown"] = ["optimizer.foo=1", f"hydra.run.dir={tmp_path / 'unknown'}"]
    procs = run_cli_many(commands, cwd=tmp_path)
    for i, (_, key) in enumerate(BAD_VALUES):
        _assert_one_line_error(procs[f"case{i}"], key, tmp_path / f"case{i}")
    proc = procs["unknown"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "Key 'foo' not in 'OptimizerConfig'" in proc.stderr and "+optimizer.foo=1" in proc.stderr
    assert not (tmp_path / "unknown").exists()
