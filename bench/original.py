"""The original script's methods, written anew for the benchmarks to run side by side with
the project's: its AGOP (the ``egop`` routine of training_100epochs.py: per hidden layer,
``torch.func.vmap(jacrev)`` of the sub-network above the layer in batches of 128) and its
training loop (a DataLoader over per-item tensors, nn.MSELoss, torch's optimizer defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.func import jacrev, vmap
from torch.nn import functional as F

from agop_sweep.model.mlp import MLP, build_model
from agop_sweep.model.optim import build_optimizer
from bench.common import N_CLASSES

ORIGINAL_BATCH = 128  # the original's batch, both for the layer inputs and for egop


def subnetwork(model: MLP, layer: int) -> MLP:
    """The network above hidden layer ``layer``: its first layer is W_layer, then the hidden
    layers above it and the readout, sharing the model's weights (as the original's
    build_subnetwork does with a shallower Net)."""
    hidden = model.hidden_weights()
    width = hidden[layer].shape[0]
    sub = MLP(hidden[layer].shape[1], width, len(hidden) - layer, model.last.weight.shape[0],
              model.act_name).to(device=hidden[0].device, dtype=hidden[0].dtype)
    for linear, w in zip([*sub.hidden, sub.last], [*hidden[layer:], model.last.weight], strict=True):
        linear.weight = w
    return sub.eval()


def layer_inputs(model: MLP, x: torch.Tensor, layer: int, batch: int) -> torch.Tensor:
    """h_layer of every sample, in batches of ``batch``: the correct inputs (the original's
    helper applies one more middle layer for layers 2-4)."""
    hidden = model.hidden_weights()
    out = []
    with torch.no_grad():
        for xb in torch.split(x, batch):
            h = xb
            for w in hidden[:layer]:
                h = model.act(h @ w.T)
            out.append(h)
    return torch.cat(out)


def original_agop(model: MLP, x: torch.Tensor, layer: int, batch: int = ORIGINAL_BATCH) -> torch.Tensor:
    """AGOP of hidden layer ``layer`` over the samples ``x`` by the original's method:
    vmap(jacrev) of the sub-network above the layer at every h_l, in batches of ``batch``,
    sum_i J_i^T J_i accumulated in the model's dtype, divided by n."""
    h = layer_inputs(model, x, layer, batch)
    jac = vmap(jacrev(subnetwork(model, layer)))
    total = None
    with torch.no_grad():
        for hb in torch.split(h, batch):
            j = jac(hb)  # (b, c, d)
            part = torch.einsum("bcp,bcq->pq", j, j)
            total = part if total is None else total + part
    return total / x.shape[0]


def original_layer(model: MLP, w0: torch.Tensor, x: torch.Tensor, layer: int,
                   batch: int = ORIGINAL_BATCH) -> tuple[torch.Tensor, float]:
    """One layer of the original routine: the AGOP, and its one correlation, the cosine of
    the delta NFM (W - W0)^T (W - W0) / d_out with the AGOP (in float64, as its correlate)."""
    agop = original_agop(model, x, layer, batch)
    d = (model.hidden_weights()[layer].detach() - w0).cpu()
    nfm = (d.T @ d / d.shape[0]).double().reshape(-1)
    g = agop.double().cpu().reshape(-1)
    return agop, float(nfm @ g / (nfm.norm() * g.norm()))


def reference_flops(d: Sequence[int], n_classes: int, n: int, layer: int,
                    with_nfm: bool = False) -> dict[str, int]:
    """Matmul FLOPs of :func:`original_agop` for hidden layer ``layer`` over n samples.

    inputs: the forward of the layers below; forward: the sub-network's (readout included);
    vjp: jacrev's backward, one row per class, input gradients only (readout 2 c c d_L, then
    2 c d_out d_in per layer down to ``layer``); jtj: the einsum, 2 c d_l^2 per sample.
    ``with_nfm``: also :func:`original_layer`'s NFM product, 2 d_out d_in^2 once.
    """
    layers = [(d[k], d[k + 1]) for k in range(len(d) - 1)]
    below = sum(i * o for i, o in layers[:layer])
    above = sum(i * o for i, o in layers[layer:])
    out = {
        "inputs": 2 * n * below,
        "forward": 2 * n * (above + d[-1] * n_classes),
        "vjp": 2 * n * n_classes * (n_classes * d[-1] + above),
        "jtj": 2 * n * n_classes * d[layer] ** 2,
    }
    if with_nfm:
        out["nfm"] = 2 * d[layer + 1] * d[layer] ** 2
    out["total"] = sum(out.values())
    return out


def peer_optimizer(cfg: DictConfig, model: nn.Module) -> Any:
    """The configured optimizer (same hyperparameters) with torch's default kernels: the
    project's builder with ``fused=false``, i.e. torch.optim.SGD / Adam / Muon as a plain
    script constructs them."""
    from omegaconf import OmegaConf

    plain = OmegaConf.merge(cfg, {"fused": False}) if "fused" in cfg else cfg
    return build_optimizer(plain, model)


class OriginalLoop:
    """The original script's loop over ``steps`` batches: a DataLoader over per-item tensors
    (on the host, as the original's list of (image, one-hot) pairs), nn.MSELoss, torch's
    optimizer defaults, one loss.item() per step. Same initial model as the Trainer's."""

    def __init__(self, cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, steps: int,
                 device: torch.device, workers: int = 0):
        bs = cfg.trainer.batch_size
        torch.manual_seed(cfg.seed)  # as Trainer.setup: the same initial weights
        self.model = build_model(x.shape[1], cfg.model.width, cfg.model.depth, N_CLASSES, "relu").to(device)
        self.optimizer = peer_optimizer(cfg.optimizer, self.model)
        xs, ys = x[: steps * bs].cpu(), F.one_hot(y[: steps * bs].cpu(), N_CLASSES).float()
        items = [(xs[i].clone(), ys[i].clone()) for i in range(xs.shape[0])]
        self.loader = torch.utils.data.DataLoader(items, batch_size=bs, shuffle=True, num_workers=workers)
        self.criterion = nn.MSELoss()
        self.device = device

    def epoch(self) -> float:
        net, opt, device = self.model, self.optimizer, self.device
        net.train()
        total = 0.0
        for inputs, labels in self.loader:
            opt.zero_grad()  # OptimizerSet: set_to_none=True, as the original
            inputs, labels = inputs.to(device), labels.to(device)
            loss = self.criterion(net(inputs), labels)
            loss.backward()
            opt.step()
            net.zero_grad(set_to_none=True)
            total += loss.item() * len(inputs)
        return total

    def loading(self) -> None:
        """The DataLoader alone: batches collated and moved, no compute."""
        for inputs, labels in self.loader:
            inputs.to(self.device), labels.to(self.device)
