"""One list of run-control keys: what may differ on resume is what sweep directory names leave out."""

from __future__ import annotations

from importlib import resources

import yaml
from conftest import Sweep
from hydra.core.override_parser.overrides_parser import OverridesParser

from agop_sweep.config import RUN_CONTROL_KEYS, is_run_control_key, run_control_exclude_keys
from agop_sweep.store import state as resume

# Every run-control key overridden, as a command line gives them.
RUN_CONTROL_OVERRIDES = [
    "resume=true", "device=cpu", "threads=1", "data.root=/elsewhere", "data.download=false",
    "data.verify=false", "data.url=http://127.0.0.1:9/", "trainer.plots=off", "eval.batch_size=64",
    "analysis.chunk_size=16", "analysis.conv_chunk_size=8", "trainer.checkpoint_optimizer=false",
    "trainer.checkpoint_names=portable",
]


def test_the_run_control_keys() -> None:
    assert {
        "resume", "device", "threads", "data.root", "data.download", "data.verify", "data.url",
        "trainer.plots", "trainer.checkpoint_optimizer", "trainer.checkpoint_names", "eval.batch_size",
        "analysis.chunk_size", "analysis.conv_chunk_size", "cluster", "hparams_search", "logger",
    } == RUN_CONTROL_KEYS
    assert is_run_control_key("logger") and is_run_control_key("logger.tracking_uri")
    assert not is_run_control_key("loggers") and not is_run_control_key("data.name")


def test_one_list_feeds_resume_and_hydra(compose_config) -> None:
    raw = yaml.safe_load((resources.files("agop_sweep.conf") / "config.yaml").read_text())
    assert raw["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"] == (
        "${agop_sweep.run_control_keys:}")
    cfg = compose_config(return_hydra_config=True)
    excluded = list(cfg.hydra.job.config.override_dirname.exclude_keys)
    # The list itself, and the keys the composed config holds under its entries (logger.*).
    assert set(excluded) >= RUN_CONTROL_KEYS and all(is_run_control_key(k) for k in excluded)
    assert excluded == sorted(excluded) and set(run_control_exclude_keys()) == RUN_CONTROL_KEYS


def test_keys_under_a_run_control_key_are_left_out_too(compose_config) -> None:
    """Hydra compares keys exactly: every key under ``logger`` in the config is listed."""
    cfg = compose_config("+logger.backend=tensorboard", "+logger.tracking.uri=x", return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert excluded >= RUN_CONTROL_KEYS | {"logger.backend", "logger.tracking", "logger.tracking.uri"}
    assert all(is_run_control_key(k) for k in excluded)
    assert cfg.hydra.job.override_dirname == ""


def test_a_sweep_dir_name_leaves_out_every_run_control_key(compose_config) -> None:
    experiment = ["model.width=64", "optimizer=adam", "seed=3"]
    cfg = compose_config(*RUN_CONTROL_OVERRIDES, *experiment, "cluster=joblib", "hparams_search=adam",
                         return_hydra_config=True)
    assert cfg.hydra.job.override_dirname == ",".join(experiment)
    # Hydra's own function, with the group selections that cannot compose here (no logger group yet)
    from hydra._internal.config_loader_impl import get_overrides_dirname

    parsed = OverridesParser.create().parse_overrides(
        [*RUN_CONTROL_OVERRIDES, "logger=mlflow", "cluster=slurm", "hparams_search=sgd", "seed=3"])
    excluded = cfg.hydra.job.config.override_dirname.exclude_keys
    assert get_overrides_dirname(parsed, excluded, item_sep=",", kv_sep="=") == "seed=3"


def test_a_resumed_run_may_change_every_run_control_key(compose_config) -> None:
    from agop_sweep.config import to_container

    before = to_container(compose_config("seed=3"))
    after = to_container(compose_config("seed=3", *RUN_CONTROL_OVERRIDES))
    after["logger"] = {"backend": "tensorboard"}  # a section that a later change adds
    assert resume.config_differences(before, after) == []
    assert resume.config_differences(before, to_container(compose_config("seed=4"))) == ["seed"]


def test_a_real_sweep_names_its_job_dirs_without_run_control_keys(joblib_sweep: Sweep) -> None:
    """The whole path: Hydra resolves exclude_keys while it launches (here through joblib)."""
    overrides = yaml.safe_load((joblib_sweep.dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    controls = {o.split("=")[0] for o in overrides} & RUN_CONTROL_KEYS
    assert len(controls) >= 14, controls  # every one but hparams_search (another sweeper)
    assert sorted(joblib_sweep.results) == ["model.depth=2,model.width=8,schedule=smoke,seed=3",
                                            "model.depth=2,model.width=8,schedule=smoke,seed=4"]
    for record in joblib_sweep.results.values():
        assert record["status"] == "completed"
        assert record["config"]["data"]["root"] == str(joblib_sweep.dir.parent / "svhn")  # recorded all same
