"""Scheduled checkpoints (models/) and the per-epoch resumable state (state.pt)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from agop_sweep.atomic import torch_save

MODELS_DIR = "models"


def checkpoint_name(epoch: int, dataset: str, width: int, depth: int, act: str) -> str:
    """``model_epoch_<E>:<dataset>:width:<W>:depth:<D>:act:<A>:nn.pth`` (SPEC)."""
    return f"model_epoch_{epoch}:{dataset}:width:{width}:depth:{depth}:act:{act}:nn.pth"


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def to_cpu(obj: Any) -> Any:
    """Copy every tensor inside nested dicts/lists to the CPU (device-independent files)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save_checkpoint(
    run_dir: Path, epoch: int, name: str, model: torch.nn.Module, optimizer_state: dict[str, Any],
    config: dict[str, Any],
) -> str:
    """Write models/<name> atomically; return its path relative to ``run_dir``."""
    rel = f"{MODELS_DIR}/{name}"
    torch_save(run_dir / rel, {
        "state_dict": cpu_state_dict(model),
        "epoch": epoch,
        "optimizer": to_cpu(optimizer_state),
        "config": config,
    })
    return rel


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint or state file onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)
