"""The notebooks in examples/ (jupytext percent-format scripts) run, at small size, against
a real tiny sweep, and print what they say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny runs of one sweep (sgd and adam)."""
    root = tmp_path_factory.mktemp("examples")
    proc = run_cli("-m", *TINY, "optimizer=sgd,adam", f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep"


def _run(name: str, tmp_path: Path, **env: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "MPLBACKEND": "Agg", **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_example_is_a_percent_format_notebook() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert names == ["own_model_nfa.py", "read_features.py", "sweep_to_figure.py"]
    for name in names:
        text = (EXAMPLES / name).read_text()
        assert text.startswith("# %% [markdown]\n# # ") and text.count("\n# %%\n") >= 2, name


def test_sweep_to_figure(sweep: Path, tmp_path: Path) -> None:
    out = _run("sweep_to_figure.py", tmp_path, SWEEP=str(sweep), FIGURE=str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").stat().st_size > 5_000
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["adam", "sgd"]  # the table of final values: one row per optimizer


def test_own_model_nfa(tmp_path: Path) -> None:
    out = _run("own_model_nfa.py", tmp_path, EPOCHS="2")
    lines = [line for line in out.splitlines() if line.startswith("layer ")]
    assert [line.split()[1:3] for line in lines] == [["0", "conv"], ["1", "conv"], ["2", "linear"]]
    assert "AGOP (9, 9)" in lines[0] and "AGOP (72, 72)" in lines[1] and "AGOP (16, 16)" in lines[2]


def test_read_features(sweep: Path, tmp_path: Path) -> None:
    run = next(p for p in sweep.iterdir() if (p / "features.npz").exists())
    out = _run("read_features.py", tmp_path, RUN=str(run), FIGURE=str(tmp_path / "d.png"))
    assert "'agop_diag': (4, 64)" in out and "status completed layers 2" in out
    assert (tmp_path / "d.png").stat().st_size > 2_000
