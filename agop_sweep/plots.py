"""Per-run figures (placeholder, replaced below)."""
from __future__ import annotations
from typing import Any

def save_run_figures(results: dict[str, Any], run_dir: Any, features: Any = None) -> None:
    pass
