"""The bias-free conv net: conv stages, a head, optional fc layers, a linear readout.

A conv layer keeps its filter bank as the matrix F (C_out, C_in * k * k), the shape in
which the convolutional NFA reads it (NFM = F^T F) and in which Muon orthogonalises it;
the forward views it as (C_out, C_in, k, k). Row r of F holds filter r in ``F.unfold``'s
patch order: channel, then kernel row, then kernel column.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from agop_sweep.config.validate import stage_shapes
from agop_sweep.model.mlp import ACTIVATIONS, LayerInfo


class FilterBank(nn.Module):
    """Conv2d without bias whose weight parameter is F (C_out, C_in * k * k).

    Initialised as ``nn.Conv2d`` is (Kaiming-uniform, a = sqrt(5), over fan-in C_in * k * k),
    with the same draws in the same order: equal to an ``nn.Conv2d``'s weight under one seed.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1):
        super().__init__()
        self.c_in, self.c_out, self.kernel, self.stride = c_in, c_out, kernel, stride
        self.padding = kernel // 2
        self.weight = nn.Parameter(torch.empty(c_out, c_in * kernel * kernel))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @property
    def filters(self) -> torch.Tensor:
        """The weight as conv filters (C_out, C_in, k, k): a view of F."""
        return self.weight.view(self.c_out, self.c_in, self.kernel, self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.filters, stride=self.stride, padding=self.padding)

    def extra_repr(self) -> str:
        return (f"{self.c_in}, {self.c_out}, kernel={self.kernel}, stride={self.stride}, "
                f"padding={self.padding}")


class CNN(nn.Module):
    """``convs``: one FilterBank per stage, each followed by act and ``pool`` (max, avg: 2x2
    stride 2; none); ``head``: gap (mean over positions) or flatten; ``fcs``: hidden Linear
    layers, each followed by act; ``last``: the Linear readout. All bias-free.

    The hidden layers (analysed, in forward order) are the convs, then the fcs. ``first`` is
    the first conv and ``middle`` the rest, as for the MLP (Muon's ``scope=middle``).
    """

    def __init__(self, image_shape: tuple[int, int, int], channels: list[int], n_classes: int,
                 act: str = "relu", kernel: int = 3, stride: int = 1, pool: str = "max",
                 fc: list[int] | None = None, head: str = "gap"):
        super().__init__()
        if pool not in ("max", "avg", "none") or head not in ("gap", "flatten"):
            raise ValueError(f"pool {pool!r} or head {head!r} is not one of max|avg|none, gap|flatten")
        self.act_name, self.pool, self.head = act, pool, head
        self.act, self.act_grad = ACTIVATIONS[act]
        self.image_shape = tuple(int(s) for s in image_shape)
        c_in = self.image_shape[0]
        self.convs = nn.ModuleList()
        for c_out in channels:
            self.convs.append(FilterBank(c_in, c_out, kernel, stride))
            c_in = c_out
        shapes = stage_shapes(self.image_shape, channels, kernel, stride, pool != "none")
        # (C, H_out, W_out) of each conv, and (C, H, W) of each stage's output after pooling
        self.conv_shapes = [conv for conv, _ in shapes]
        self.stage_shapes = [stage for _, stage in shapes]
        if any(h < 1 or w < 1 for _, h, w in self.stage_shapes):
            raise ValueError(f"a stage leaves no pixels of the {list(self.image_shape)} inputs")
        c, h, w = self.stage_shapes[-1]
        d = c if head == "gap" else c * h * w
        self.fcs = nn.ModuleList()
        for width in fc or []:
            self.fcs.append(nn.Linear(d, width, bias=False))
            d = width
        self.last = nn.Linear(d, n_classes, bias=False)

    @property
    def hidden(self) -> list[nn.Module]:
        """The hidden layers in forward order: every conv, then every fc."""
        return [*self.convs, *self.fcs]

    @property
    def first(self) -> nn.Module:
        return self.hidden[0]

    @property
    def middle(self) -> list[nn.Module]:
        return self.hidden[1:]

    def hidden_weights(self) -> list[torch.Tensor]:
        """Every hidden layer's weight matrix (d_out, d_in): F for a conv, W for an fc."""
        return [layer.weight for layer in self.hidden]

    def layer_infos(self) -> list[LayerInfo]:
        convs = [LayerInfo("conv", tuple(c.weight.shape), h * w)  # type: ignore[arg-type]
                 for c, (_, h, w) in zip(self.convs, self.conv_shapes, strict=True)]
        return convs + [LayerInfo("linear", tuple(f.weight.shape)) for f in self.fcs]  # type: ignore[misc]

    def pooled(self, a: torch.Tensor) -> torch.Tensor:
        if self.pool == "max":
            return F.max_pool2d(a, 2)
        if self.pool == "avg":
            return F.avg_pool2d(a, 2)
        return a

    def headed(self, h: torch.Tensor) -> torch.Tensor:
        """The last stage's output (n, C, H, W) as the head's vectors (n, C) or (n, C*H*W)."""
        return h.mean((2, 3)) if self.head == "gap" else h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, classes) of images ``x`` (n, C, H, W); flat rows (n, C*H*W) are viewed as images."""
        h = x.view(len(x), *self.image_shape) if x.dim() == 2 else x
        for conv in self.convs:
            h = self.pooled(self.act(conv(h)))
        h = self.headed(h)
        for fc in self.fcs:
            h = self.act(fc(h))
        return self.last(h)
