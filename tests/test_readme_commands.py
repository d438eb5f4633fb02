"""The commands of README and of the documentation pages name modules that exist (README once
documented ``python -m agop_sweep.plots``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _modules(path: Path) -> set[str]:
    return set(re.findall(r"python -m ([A-Za-z_][\w.]*)", path.read_text()))


def test_readme_and_the_docs_show_the_commands() -> None:
    readme = _modules(README)
    assert {"agop_sweep", "agop_sweep.aggregate", "agop_sweep.analyze", "agop_sweep.figures"} <= readme
    assert "agop_sweep.plots" not in set().union(*map(_modules, PAGES))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_m_module_runs(page: Path) -> None:
    for name in sorted(_modules(page)):
        if not name.startswith(("agop_sweep", "bench")):
            continue
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        if spec.submodule_search_locations is not None:  # a package runs through its __main__
            assert importlib.util.find_spec(f"{name}.__main__") is not None, name
