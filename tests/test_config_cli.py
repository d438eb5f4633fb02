"""Start-up errors as a user meets them through ``python -m agop_sweep``: exit 1 and one line
for a composition error, a wrong value and a missing option (tests/test_config.py checks every
case of config_cases in-process), the exact lines of the keys that once were ignored, and
--help's groups."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from config_cases import COMPOSITION_ERRORS, config_options
from conftest import one_line_error, run_cli_many
from hydra.errors import ConfigCompositionException


@pytest.fixture(scope="module")
def startup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The three start-up failures side by side (each one is mostly the start-up of Python and
    Hydra)."""
    root = tmp_path_factory.mktemp("startup")
    commands = {
        "override": ["optimizer=sgd", "optimizer.betas=[0.8,0.9]"],
        "value": ["optimizer.lr=0"],
        "option": ["optimizer=rmsprop"],
    }
    return root, run_cli_many({name: [*args, f"hydra.run.dir={root / name}"]
                               for name, args in commands.items()}, cwd=root, parallel=3)


def test_a_wrong_value_is_one_line_and_a_failed_record(startup) -> None:
    root, procs = startup
    line = one_line_error(procs["value"])
    assert line.startswith("Invalid config: optimizer.lr=0"), line
    assert procs["value"].stderr == line + "\n"  # no frame of Hydra's around it
    # Nothing ran: at most the record of a job that failed at its start, with that line.
    results = root / "value" / "results.json"
    if results.exists():
        record = json.loads(results.read_text())
        assert (record["status"], record["epochs"], record["checkpoints"]) == ("failed", [], {})
        assert record["error"] == f"ConfigError: {line}"
    assert not (root / "value" / "models").exists()


def test_a_key_of_another_option_is_hydras_one_line(startup) -> None:
    root, procs = startup
    assert one_line_error(procs["override"]) == (
        "Could not override 'optimizer.betas': Key 'betas' not in 'SGDConfig'")
    assert not (root / "override").exists()  # composition fails before the run dir is made


def test_a_missing_option_is_hydras_one_line(startup) -> None:
    root, procs = startup
    line = one_line_error(procs["option"])
    assert "Could not find 'optimizer/rmsprop'" in line and "adam, muon, muon_seed, sgd" in line, line
    assert not (root / "option").exists()


@pytest.mark.parametrize(("overrides", "line"), [
    (["optimizer=sgd", "optimizer.betas=[0.8,0.9]"],
     "Could not override 'optimizer.betas': Key 'betas' not in 'SGDConfig'"),
    (["data=digits", "data.n_val=10"],
     "Could not override 'data.n_val': Key 'n_val' not in 'DigitsConfig'"),
])
def test_the_ignored_keys_of_old_are_refused_in_one_line(compose_config, overrides: list[str],
                                                        line: str) -> None:
    """Each is refused, not run with the key ignored; ``error_report`` makes the line the CLI prints."""
    from agop_sweep.run.app import error_report

    assert overrides in [o for o, _ in COMPOSITION_ERRORS]
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(*overrides)
    assert error_report(err.value) == line


def test_help_lists_every_group_and_option(monkeypatch, capsys) -> None:
    from agop_sweep.run.app import main

    monkeypatch.setattr(sys, "argv", ["agop_sweep", "--help"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    listed = {}
    section = out.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    for line in section.splitlines():
        group, sep, opts = line.partition(": ")
        if sep and not group.startswith(" "):
            listed[group] = sorted(o.strip() for o in opts.split(","))
    assert listed == config_options()  # the schemas are not options
    assert "python -m agop_sweep -m optimizer=sgd,adam,muon" in out
