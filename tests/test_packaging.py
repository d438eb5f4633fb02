"""The configs ship with the package: a wheel holds every YAML file, and git tracks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import agop_sweep

ROOT = Path(agop_sweep.__file__).resolve().parent.parent
CONF = ROOT / "agop_sweep" / "conf"


def _yaml_files() -> set[str]:
    return {str(p.relative_to(ROOT)) for p in CONF.rglob("*.yaml")}


def test_wheel_contains_every_config(tmp_path: Path) -> None:
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "build", "__pycache__")

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = {"outputs", "data"} & set(names) if Path(directory) == ROOT else set()
        return set(skip(directory, names)) | top

    shutil.copytree(ROOT, src, ignore=ignore)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("agop_sweep-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _yaml_files() - names
    assert not missing, f"configs missing from the wheel: {sorted(missing)}"
    assert {f"agop_sweep/conf/{g}/" for g in ("optimizer", "model", "schedule", "analysis", "data")} <= {
        n.rsplit("/", 1)[0] + "/" for n in names
    }


def test_git_tracks_every_config() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "agop_sweep/conf"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    untracked = _yaml_files() - set(tracked)
    assert not untracked, f"configs git does not track (ignored?): {sorted(untracked)}"
