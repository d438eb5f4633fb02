"""What a run records about where it ran: the ``run`` section of results.json."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from omegaconf import DictConfig

from agop_sweep.data.datasets import Dataset
from agop_sweep.store.record import RunInfo


@functools.cache
def package_version() -> str:
    try:
        return metadata.version("agop_sweep")
    except metadata.PackageNotFoundError:  # imported from a source tree that is not installed
        return "unknown"


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this package is imported from; None when it is not imported
    from a git checkout (an installed wheel), even if site-packages lies inside some other
    repository: the package's own files must be tracked there."""
    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", Path(__file__).name], cwd=here,
                                 capture_output=True, timeout=10)
        if tracked.returncode != 0:
            return None
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = head.stdout.strip()
    return sha if head.returncode == 0 and sha else None


def run_info(cfg: DictConfig, data: Dataset, device: str) -> RunInfo:
    return {
        "optimizer": str(cfg.optimizer.name),
        "lr": cfg.optimizer.lr,
        "seed": cfg.seed,
        "dataset": data.name,
        "width": cfg.model.width,
        "depth": cfg.model.depth,
        "act": str(cfg.model.act),
        "loss": str(cfg.loss),
        "n_train": data.n_train,
        "n_val": data.n_val,
        "device": device,
        "torch": str(torch.__version__),  # a str subclass otherwise, which state.pt would pickle
        "version": package_version(),
        "git": git_commit(),
    }
