"""Experiment trackers as per-epoch hooks (the ``logger`` config group)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from agop_sweep.hooks import EpochHook


def check_available(cfg: DictConfig) -> None:
    """Raise a one-line ConfigError when a configured tracker's package is missing."""


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[EpochHook]:
    """The hooks of the configured trackers (none by default)."""
    return []
