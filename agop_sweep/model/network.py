"""The network a ``model`` config names, and the trained network of any checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from agop_sweep.model.cnn import CNN
from agop_sweep.model.mlp import MLP, build_model

Network = MLP | CNN


def build_network(model: DictConfig, image_shape: Sequence[int], n_classes: int) -> Network:
    """The ``model`` node's network (``name`` mlp or cnn) for inputs of ``image_shape``
    (C, H, W) and ``n_classes`` outputs, initialised from torch's global RNG: seed it first."""
    image_shape = tuple(int(s) for s in image_shape)
    if str(model.name) == "cnn":
        from agop_sweep.config.validate import conv_stage_shapes

        conv_stage_shapes(model, list(image_shape))  # one line for inputs too small (data=npz)
        return CNN(image_shape, list(model.channels), n_classes, str(model.act), kernel=int(model.kernel),
                   stride=int(model.stride), pool=str(model.pool), fc=list(model.fc), head=str(model.head))
    d_in = int(torch.Size(image_shape).numel())
    return build_model(d_in, int(model.width), int(model.depth), n_classes, str(model.act),
                       init=str(model.init))


def first_layer_shape(network: Network, image_shape: Sequence[int]) -> tuple[int, int, int]:
    """What the first hidden layer's input vectors are pictures of, as (C, H, W): the image
    for the MLP, one patch (C_in, k, k) for the CNN (features.npz's ``image_shape``)."""
    if isinstance(network, CNN):
        conv = network.convs[0]
        return (conv.c_in, conv.kernel, conv.kernel)
    return tuple(int(s) for s in image_shape)  # type: ignore[return-value]


def _image_shape(config: Mapping[str, Any], run_dir: Path, state: Mapping[str, torch.Tensor]) -> list[int]:
    """The inputs' (C, H, W): the config's data.image_shape, else the run's results.json (files
    of your own: data=npz), else, for an MLP, a flat vector of its first layer's width."""
    shape = list((config.get("data") or {}).get("image_shape") or [])
    if not shape:
        from agop_sweep.store.record import RunRecord

        results = run_dir / "results.json"
        if results.is_file():
            shape = list(RunRecord.load(results).image_shape() or [])
    if not shape and "first.weight" in state:
        shape = [1, 1, int(state["first.weight"].shape[1])]
    return shape


def load_model(checkpoint_path: str | os.PathLike[str]) -> Network:
    """The trained network of a checkpoint (models/model_epoch_*.pth) or a run's state.pt,
    rebuilt from the file's own config, on the CPU, in eval mode; MLP and CNN alike. The file
    is read without running its pickles (agop_sweep.store.checkpoint.load)."""
    from agop_sweep.config import structured, upgrade_saved_config
    from agop_sweep.errors import UserError
    from agop_sweep.store.checkpoint import load

    path = Path(checkpoint_path)
    saved = load(path)
    state = saved.get("state_dict", saved.get("model"))
    config = saved.get("config") or (saved.get("results") or {}).get("config")
    if not isinstance(state, Mapping) or not isinstance(config, Mapping):
        raise UserError(f"{path} holds no model weights and config; is it a checkpoint or a state.pt?")
    config = upgrade_saved_config(dict(config))
    cfg = structured(config)
    run_dir = path.parent.parent if path.parent.name == "models" else path.parent
    n_classes = int(state["last.weight"].shape[0])
    with torch.random.fork_rng(devices=[]):  # building draws an init that the weights replace
        network = build_network(cfg.model, _image_shape(config, run_dir, state), n_classes)
    network.load_state_dict(dict(state))
    return network.eval()


__all__ = ["Network", "build_network", "first_layer_shape", "load_model"]
