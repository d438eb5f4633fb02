"""The bias-free MLP and its activations (with their derivatives, for the AGOP pass)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def _gelu_grad(z: torch.Tensor) -> torch.Tensor:
    # d/dz [z * Phi(z)] = Phi(z) + z * phi(z), exact (erf) GELU as nn.GELU() computes it.
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


# name -> (activation, its derivative with respect to the pre-activation)
ACTIVATIONS: dict[str, tuple[Activation, Activation]] = {
    "relu": (F.relu, lambda z: (z > 0).to(z.dtype)),
    "tanh": (torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2),
    "gelu": (F.gelu, _gelu_grad),
}


@dataclass(frozen=True)
class LayerInfo:
    """A hidden layer as results.json describes it: ``kind`` (conv or linear), the shape of its
    weight matrix (d_out, d_in) and, for a conv layer, its output positions H_out * W_out."""

    kind: str
    shape: tuple[int, int]
    positions: int | None = None

    def entry(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "shape": list(self.shape)}
        if self.positions is not None:
            out["positions"] = self.positions
        return out


class MLP(nn.Module):
    """``first`` Linear(d_in, width), ``depth - 1`` middle Linear(width, width), ``last``
    Linear(width, classes); no biases, activation after every layer but the last.

    The ``depth`` hidden layers (first and middle) are the ones the analysis studies: hidden
    layer l has input h_l, the image for l = 0 and the activation of layer l - 1 otherwise.
    """

    def __init__(self, d_in: int, width: int, depth: int, n_classes: int, act: str = "relu"):
        super().__init__()
        self.act_name = act
        self.act, self.act_grad = ACTIVATIONS[act]
        self.first = nn.Linear(d_in, width, bias=False)
        self.middle = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(depth - 1))
        self.last = nn.Linear(width, n_classes, bias=False)

    @property
    def hidden(self) -> list[nn.Linear]:
        """The hidden layers: first and middle."""
        return [self.first, *self.middle]

    def hidden_weights(self) -> list[torch.Tensor]:
        return [layer.weight for layer in self.hidden]

    def layer_infos(self) -> list[LayerInfo]:
        return [LayerInfo("linear", (layer.out_features, layer.in_features)) for layer in self.hidden]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, classes) of images ``x`` (n, C, H, W), or of flat inputs (n, d) or (d,)."""
        h = x.flatten(1) if x.dim() > 2 else x  # (C, H, W) order: a view of contiguous images
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.last(h)


def build_model(d_in: int, width: int, depth: int, n_classes: int, act: str, init: str = "default") -> MLP:
    """PyTorch's default (Kaiming-uniform) init, drawn from the global RNG: seed it first.

    ``init="shared_middle"`` then copies the first middle layer's weight into the others.
    ``init="seed"`` draws as the original script does after ``torch.manual_seed``: the two
    int64 draws of the DataLoader pass that reads the input size, then its ``Net``: one middle
    layer (copied into every middle layer), the first layer, the readout. With the same seed
    the weights are the original's bit for bit (tests/test_seed_order.py).
    """
    # model.init's closed choices (config.schema.ModelInit; ValueError for another). Imported
    # here: the maths imports this module, and never the app config.
    from agop_sweep.config.schema import ModelInit

    init = ModelInit(init)
    if init == ModelInit.seed:
        from agop_sweep.data.seed_order import draw_int64, draw_linear, original_net_shapes

        with torch.random.fork_rng(devices=[]):  # the module's own init must not draw
            model = MLP(d_in, width, depth, n_classes, act)
        draw_int64(), draw_int64()
        drawn = [draw_linear(shape) for shape in original_net_shapes(d_in, width, depth, n_classes)]
        middle, first, last = drawn if depth > 1 else (None, *drawn)
        with torch.no_grad():
            model.first.weight.copy_(first)
            model.last.weight.copy_(last)
            for layer in model.middle:
                layer.weight.copy_(middle)
        return model
    model = MLP(d_in, width, depth, n_classes, act)
    if init == ModelInit.shared_middle:
        with torch.no_grad():
            for layer in model.middle[1:]:
                layer.weight.copy_(model.middle[0].weight)
    return model


def loss_fn(name: str, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Loss of ``logits`` (n, classes) against labels ``y`` (n,).

    ``mse``: squared error against one-hot targets, mean over all n x classes entries;
    ``ce``: cross-entropy. ``reduction='sum'`` sums the per-sample losses (for mse the
    per-sample loss is the mean over classes), so chunked sums divided by n give the mean.
    """
    if name == "mse":
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        err = (logits - target).pow(2)
        return err.mean() if reduction == "mean" else err.sum() / logits.shape[1]
    return F.cross_entropy(logits, y, reduction=reduction)


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
    loss: str, batch_size: int,
) -> tuple[float | None, float | None]:
    """Mean loss and accuracy of ``model`` over all of ``x`` (n, d) / ``y`` (n,), on the device
    with one host sync; None for n = 0."""
    n = x.shape[0]
    if n == 0:
        return None, None
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            logits = model(x[start : start + batch_size]).float()
            yb = y[start : start + batch_size]
            loss_sum += loss_fn(loss, logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    return float(loss_sum) / n, float(correct) / n


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
