"""The configs live in the top-level conf/ and ship as the package agop_sweep.conf: the wheel
holds every YAML file and every module, an installed app finds its configs from any directory
(pkg://agop_sweep.conf), and so does an editable install."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import agop_sweep

ROOT = Path(agop_sweep.__file__).resolve().parent.parent
CONF = ROOT / "conf"
PACKAGE = ROOT / "agop_sweep"


def _yaml_files() -> set[str]:
    """Every config as the wheel holds it: conf/<path> -> agop_sweep/conf/<path>."""
    return {f"agop_sweep/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*.yaml")}


# The lr search's sweeper, in Hydra's namespace package for plugins (which has no __init__.py).
PLUGIN = ROOT / "hydra_plugins" / "agop_optuna_sweeper"


def _modules() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for package in (PACKAGE, PLUGIN) for p in package.rglob("*.py")
            if "__pycache__" not in p.parts}


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    skip = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "build", "__pycache__")

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = {"outputs", "data", "multirun"} & set(names) if Path(directory) == ROOT else set()
        return set(skip(directory, names)) | top

    shutil.copytree(ROOT, src, ignore=ignore)
    proc = _run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
                str(src), cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    (built,) = (tmp / "dist").glob("agop_sweep-*.whl")
    return built


def test_the_configs_are_at_the_top_level() -> None:
    assert (CONF / "config.yaml").is_file() and (CONF / "__init__.py").is_file()
    assert not (PACKAGE / "conf").exists()


def test_wheel_contains_every_config_and_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _yaml_files() - names
    assert not missing, f"configs missing from the wheel: {sorted(missing)}"
    assert "agop_sweep/conf/__init__.py" in names
    assert {f"agop_sweep/conf/{g}/" for g in ("optimizer", "model", "schedule", "analysis", "data")} <= {
        n.rsplit("/", 1)[0] + "/" for n in names
    }
    modules = _modules() - names
    assert not modules, f"modules missing from the wheel (list their package in pyproject.toml): {modules}"
    assert not [n for n in names if n.startswith(("conf/", "tests/"))]  # nothing at the top level
    assert "hydra_plugins/agop_optuna_sweeper/config.py" in names
    assert "hydra_plugins/__init__.py" not in names  # a namespace package, shared with other plugins


def test_the_installed_app_finds_its_configs_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = _run("-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}
    where = _run("-c", "import agop_sweep.conf as c; print(c.__file__)", cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()) == site / "agop_sweep" / "conf" / "__init__.py", where.stderr
    info = _run("-m", "agop_sweep", "--info", "searchpath", cwd=elsewhere, env=env)
    assert info.returncode == 0, info.stderr
    assert "pkg://agop_sweep.conf" in info.stdout
    job = _run("-m", "agop_sweep", "--cfg", "job", "experiment=seed", cwd=elsewhere, env=env)
    assert job.returncode == 0, job.stderr
    assert "name: muon_seed" in job.stdout and "split: seed" in job.stdout
    _assert_finds_the_sweeper(elsewhere, env)


def _assert_finds_the_sweeper(cwd: Path, env: dict[str, str] | None = None) -> None:
    """Hydra's plugin scan finds the lr search's sweeper, and the presets compose with it."""
    plugins = _run("-m", "agop_sweep", "--info", "plugins", cwd=cwd, env=env)
    assert plugins.returncode == 0 and "hydra_plugins.agop_optuna_sweeper.config" in plugins.stdout, (
        plugins.stdout[-2000:] + plugins.stderr)
    hydra = _run("-m", "agop_sweep", "--cfg", "hydra", "-p", "hydra.sweeper._target_", "hparams_search=sgd",
                 cwd=cwd, env=env)
    assert hydra.returncode == 0, hydra.stderr
    assert hydra.stdout.strip() == "hydra_plugins.agop_optuna_sweeper.optuna_sweeper.OptunaSweeper"


# Python without the editable install's import hook: as after a plain `pip install .`, where
# `python -m agop_sweep` in the checkout imports the checkout's agop_sweep (the current dir
# comes first on sys.path), which has no agop_sweep/conf/.
NO_HOOK = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in str(f)]; "
APP = NO_HOOK + "import runpy; runpy.run_module('agop_sweep', run_name='__main__', alter_sys=True)"


def test_the_app_run_from_a_source_checkout_finds_conf(wheel: Path) -> None:
    checkout = wheel.parent.parent / "src"
    bare = _run("-c", NO_HOOK + "import agop_sweep.conf", cwd=checkout)
    assert "No module named 'agop_sweep.conf'" in bare.stderr  # what the app has to make up for
    where = _run("-c", NO_HOOK + "from agop_sweep.config import register_configs; register_configs(); "
                 "import agop_sweep.conf as c; print(c.__file__)", cwd=checkout)
    assert where.stdout.strip() == str(checkout / "conf" / "__init__.py"), where.stderr
    info = _run("-c", APP, "--info", "searchpath", cwd=checkout)
    assert info.returncode == 0 and "pkg://agop_sweep.conf" in info.stdout, info.stderr
    job = _run("-c", APP, "--cfg", "job", "optimizer=muon_seed", cwd=checkout)
    assert job.returncode == 0 and "name: muon_seed" in job.stdout, job.stderr


def _editable() -> bool:
    """Whether an installed agop_sweep (not a source tree's egg-info) is an editable install."""
    for dist in metadata.distributions(name="agop_sweep"):
        direct = dist.read_text("direct_url.json")
        if direct and json.loads(direct).get("dir_info", {}).get("editable", False):
            return True
    return False


@pytest.mark.skipif(not _editable(), reason="agop_sweep is not installed in editable mode")
def test_an_editable_install_finds_conf(tmp_path: Path) -> None:
    where = _run("-c", "import agop_sweep.conf as c; print(c.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).resolve() == CONF / "__init__.py", where.stderr
    info = _run("-m", "agop_sweep", "--info", "searchpath", cwd=tmp_path)
    assert info.returncode == 0 and "pkg://agop_sweep.conf" in info.stdout, info.stderr
    job = _run("-m", "agop_sweep", "--cfg", "job", "optimizer=muon_seed", cwd=tmp_path)
    assert job.returncode == 0 and "name: muon_seed" in job.stdout, job.stderr
    # The plugin lies outside agop_sweep, in Hydra's namespace package: the editable install
    # lists hydra_plugins itself (pyproject.toml) so that the namespace's path holds it.
    _assert_finds_the_sweeper(tmp_path)


def test_git_tracks_every_config() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "conf"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    untracked = {f"agop_sweep/conf/{p.removeprefix('conf/')}" for p in tracked}
    untracked = _yaml_files() - untracked
    assert not untracked, f"configs git does not track (ignored?): {sorted(untracked)}"
