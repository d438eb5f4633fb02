"""README's commands name modules that exist (it once documented ``python -m agop_sweep.plots``)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_python_m_module_in_readme_runs() -> None:
    modules = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", README.read_text()))
    assert "agop_sweep.figures" in modules and "agop_sweep.plots" not in modules
    for name in sorted(modules):
        if not name.startswith("agop_sweep"):
            continue
        spec = importlib.util.find_spec(name)
        assert spec is not None, name
        if spec.submodule_search_locations is not None:  # a package runs through its __main__
            assert importlib.util.find_spec(f"{name}.__main__") is not None, name
