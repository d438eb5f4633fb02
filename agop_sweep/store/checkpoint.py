"""Scheduled checkpoints (models/), and loading any file a run wrote without running its pickles.

Checkpoint file names come in two kinds (``trainer.checkpoint_names``): ``default``, the
original script's ``model_epoch_<E>:<dataset>:width:<W>:depth:<D>:act:<A>:nn.pth``, part of the
experiment's documented output; and ``portable``, ``model_epoch_<E>-<dataset>-width<W>-depth<D>-
<A>.pth``, without the ``:`` that Windows forbids in file names and that scp and rsync read as
``host:path``. Every reader takes both (:func:`checkpoint_epoch`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agop_sweep.errors import UserError
from agop_sweep.store.atomic import write_atomic

MODELS_DIR = "models"


def torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` atomically (see :mod:`agop_sweep.store.atomic`)."""
    write_atomic(path, lambda f: torch.save(obj, f))

# Besides tensors, numbers, strings, lists and dicts (torch's weights_only set), a run's files
# hold NumPy arrays (the feature log in state.pt) and, from earlier versions, torch's version
# string type. These are the only other types allowed.
_SAFE_GLOBALS: list[Any] = [
    torch.torch_version.TorchVersion,
    (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct,
    np.ndarray, np.dtype,
    *{type(np.dtype(t)) for t in (np.float32, np.float64, np.int64, np.int32, np.bool_, np.uint8)},
]


DEFAULT_NAMES, PORTABLE_NAMES = "default", "portable"
NAMES_KEY = ("trainer", "checkpoint_names")
# The epoch of a checkpoint file of either kind.
EPOCH_RE = re.compile(r"^model_epoch_(\d+)[:-]")
GLOB = "model_epoch_*.pth"
_DEFAULT_RE = re.compile(r"^model_epoch_(\d+):(.+):width:(\d+):depth:(\d+):act:(.+):nn\.pth$")


def checkpoint_name(epoch: int, dataset: str, width: int, depth: int, act: str,
                    names: str = DEFAULT_NAMES) -> str:
    """``model_epoch_<E>:<dataset>:width:<W>:depth:<D>:act:<A>:nn.pth`` (docs/results.md: Output
    layout), or with ``names="portable"`` ``model_epoch_<E>-<dataset>-width<W>-depth<D>-<A>.pth``."""
    if str(names) == PORTABLE_NAMES:
        return f"model_epoch_{epoch}-{dataset}-width{width}-depth{depth}-{act}.pth"
    return f"model_epoch_{epoch}:{dataset}:width:{width}:depth:{depth}:act:{act}:nn.pth"


def model_checkpoint_name(epoch: int, dataset: str, model: Mapping[str, Any]) -> str:
    """The default name of a checkpoint of the ``model`` config: the MLP's as the original
    script names it (:func:`checkpoint_name`), a CNN's ``model_epoch_<E>:<dataset>:cnn:<C1>-<C2>..
    :act:<A>:nn.pth`` (portable: ``model_epoch_<E>-<dataset>-cnn<C1>-<C2>..-<A>.pth``)."""
    act = str(model["act"])
    if str(model["name"]) == "cnn":
        channels = "-".join(str(c) for c in model["channels"])
        return f"model_epoch_{epoch}:{dataset}:cnn:{channels}:act:{act}:nn.pth"
    return checkpoint_name(epoch, dataset, int(model["width"]), int(model["depth"]), act)


_CNN_RE = re.compile(r"^model_epoch_(\d+):(.+):cnn:([\d-]+):act:(.+):nn\.pth$")


def checkpoint_epoch(name: str) -> int | None:
    """The epoch in a checkpoint file name of either kind, None for any other name."""
    m = EPOCH_RE.match(name)
    return int(m.group(1)) if m and name.endswith(".pth") else None


def names_of(config: Mapping[str, Any]) -> str:
    """The run's ``trainer.checkpoint_names`` (``default`` for configs from before it)."""
    trainer = config.get(NAMES_KEY[0]) if isinstance(config, Mapping) else None
    value = trainer.get(NAMES_KEY[1]) if isinstance(trainer, Mapping) else None
    return str(value) if value else DEFAULT_NAMES


def styled(name: str, names: str) -> str:
    """A default checkpoint name in the kind ``names`` (``trainer.checkpoint_names``)."""
    if names != PORTABLE_NAMES:
        return name
    cnn = _CNN_RE.match(name)
    if cnn is not None:
        epoch, dataset, channels, act = cnn.groups()
        return f"model_epoch_{epoch}-{dataset}-cnn{channels}-{act}.pth"
    m = _DEFAULT_RE.match(name)
    if m is None:
        return name
    epoch, dataset, width, depth, act = m.groups()
    return checkpoint_name(int(epoch), dataset, int(width), int(depth), act, PORTABLE_NAMES)


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
    config: dict[str, Any], names: str | None = None,
) -> str:
    """Write models/<name> atomically, ``name`` in the kind ``names`` (default: the kind that
    ``config``'s ``trainer.checkpoint_names`` asks for); return its path relative to ``run_dir``."""
    rel = f"{MODELS_DIR}/{styled(name, names or names_of(config))}"
    torch_save(run_dir / rel, {
        "state_dict": cpu_state_dict(model),
        "epoch": epoch,
        "optimizer": to_cpu(optimizer_state),
        "config": config,
    })
    return rel


class UnsafeFileError(UserError):
    """A run file whose pickle asks for a type other than plain data: refused unopened."""


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint or state file onto the CPU with ``weights_only=True``: tensors, numbers,
    strings, containers and NumPy arrays only. A file whose pickle would build anything else
    (and so could run code) raises :class:`UnsafeFileError` naming the file; other read errors
    (truncation, not a torch file) propagate."""
    with torch.serialization.safe_globals(_SAFE_GLOBALS):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            if isinstance(e, torch.serialization.pickle.UnpicklingError) and "Weights only load" in str(e):
                raise UnsafeFileError(
                    f"{path} asks to load a type that is not plain data (only tensors, numbers, "
                    "strings, lists, dicts and NumPy arrays are allowed); refusing to open it"
                ) from None
            raise
