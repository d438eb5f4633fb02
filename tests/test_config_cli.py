"""Start-up errors as a user meets them through ``python -m agop_sweep``: one line from
validate for a wrong value or a key added with ``+``, Hydra's report for a composition error
(another option's key, a wrong type, a value outside an enum), and --help's groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from config_cases import BAD_VALUES, COMPOSITION_ERRORS, config_options
from conftest import error_lines, run_cli_many


def _assert_one_line_error(proc, key: str, run_dir: Path) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"Invalid config: {key}="), proc.stderr
    # Nothing ran: at most the record of a job that failed at its start, with that line.
    results = run_dir / "results.json"
    if results.exists():
        record = json.loads(results.read_text())
        assert (record["status"], record["epochs"], record["checkpoints"]) == ("failed", [], {})
        assert record["error"] == f"ConfigError: {lines[0]}"
    assert not (run_dir / "models").exists()


def _assert_composition_error(proc, words: list[str], run_dir: Path) -> None:
    """Hydra's own report: exit 1, no traceback, its first line naming the key."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert words[0] in lines[0], proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not run_dir.exists()  # composition fails before the run dir is made


# Composition errors also met through the CLI (all print the same way): a wrong type, keys of
# another option (the two that used to run with the key ignored), and a value outside an enum.
COMPOSITION_AT_STARTUP = [
    i for i, (over, _) in enumerate(COMPOSITION_ERRORS)
    if over in (["model.width=abc"], ["optimizer.foo=1"], ["optimizer=sgd", "optimizer.betas=[0.8,0.9]"],
                ["data=digits", "data.n_train=10"], ["model.act=swish"])
]


@pytest.fixture(scope="module")
def startup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Every start-up failure and --help, side by side (each one is mostly the start-up of
    Python and Hydra)."""
    root = tmp_path_factory.mktemp("startup")
    commands = {f"value{i}": [*over, f"hydra.run.dir={root / f'value{i}'}"]
                for i, (over, _) in enumerate(BAD_VALUES)}
    commands |= {f"compose{i}": [*over, f"hydra.run.dir={root / f'compose{i}'}"]
                 for i, (over, _) in enumerate(COMPOSITION_ERRORS) if i in COMPOSITION_AT_STARTUP}
    commands["help"] = ["--help"]
    return root, run_cli_many(commands, cwd=root)


def test_every_wrong_value_and_added_key_at_startup(startup) -> None:
    root, procs = startup
    for i, (_, key) in enumerate(BAD_VALUES):
        _assert_one_line_error(procs[f"value{i}"], key, root / f"value{i}")


def test_composition_errors_at_startup(startup) -> None:
    root, procs = startup
    for i in COMPOSITION_AT_STARTUP:
        _assert_composition_error(procs[f"compose{i}"], COMPOSITION_ERRORS[i][1], root / f"compose{i}")


def test_the_three_ignored_keys_of_old_are_refused_at_startup(startup) -> None:
    """Each used to run with the key ignored."""
    _, procs = startup
    cases = {" ".join(o): i for i, (o, _) in enumerate(COMPOSITION_ERRORS)}
    betas = procs[f"compose{cases['optimizer=sgd optimizer.betas=[0.8,0.9]']}"]
    assert error_lines(betas.stderr) == [
        "Could not override 'optimizer.betas': Key 'betas' not in 'SGDConfig'"]
    n_train = procs[f"compose{cases['data=digits data.n_train=10']}"]
    assert error_lines(n_train.stderr) == [
        "Could not override 'data.n_train': Key 'n_train' not in 'DigitsConfig'"]
    added = {" ".join(o): i for i, (o, _) in enumerate(BAD_VALUES)}["+model.widht=64"]
    assert error_lines(procs[f"value{added}"].stderr) == [
        "Invalid config: model.widht=64: no such key for model (it has width, depth, act, init)"]


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
    assert listed == config_options()  # the schemas are not options
    assert "python -m agop_sweep -m optimizer=sgd,adam,muon" in proc.stdout
