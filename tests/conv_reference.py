"""An independent float64 patch AGOP of the conv net: per sample, ``torch.func.jacrev`` of the
network output with respect to the unfolded input patches of one layer (the conv-NFA papers'
"patch network"), summed over positions, never through F^T K F."""

from __future__ import annotations

import torch
from torch.func import jacrev
from torch.nn import functional as F

from agop_sweep.model.cnn import CNN


def _rest(model: CNN, layer: int, z: torch.Tensor) -> torch.Tensor:
    """The logits (c,) of one sample from hidden layer ``layer``'s pre-activation ``z``."""
    n_convs = len(model.convs)
    if layer < n_convs:
        h = model.pooled(model.act(z[None]))
        for conv in model.convs[layer + 1:]:
            h = model.pooled(model.act(conv(h)))
        h = model.headed(h)[0]
        fcs = model.fcs
    else:
        h = model.act(z)
        fcs = model.fcs[layer - n_convs + 1:]
    for fc in fcs:
        h = model.act(fc(h))
    return model.last(h)


def _input_of(model: CNN, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The input of hidden layer ``layer`` for one image ``x`` (C, H, W): (C_in, H, W) or (d,)."""
    h = x[None]
    for conv in model.convs[:layer]:
        h = model.pooled(model.act(conv(h)))
    if layer < len(model.convs):
        return h[0]
    h = model.headed(h)
    for fc in model.fcs[: layer - len(model.convs)]:
        h = model.act(fc(h))
    return h[0]


def patch_agop(model: CNN, x: torch.Tensor, layer: int) -> torch.Tensor:
    """(1/n) sum_i sum_s J_is^T J_is, J_is = df(x_i)/dp_s (c, C_in k^2), for the float64
    ``model`` and images ``x`` (n, C, H, W); for an fc layer the plain input AGOP."""
    weight = model.hidden[layer].weight
    total = torch.zeros(weight.shape[1], weight.shape[1], dtype=torch.float64)
    for xi in x:
        h = _input_of(model, layer, xi)
        if layer < len(model.convs):
            conv = model.convs[layer]
            # (P, C_in k^2): the s-th patch as the layer's padding and stride cut it
            patches = F.unfold(h[None], conv.kernel, padding=conv.padding, stride=conv.stride)[0].T
            _, ho, wo = model.conv_shapes[layer]

            def f(p: torch.Tensor, conv=conv, ho=ho, wo=wo) -> torch.Tensor:
                z = (p @ conv.weight.T).T.reshape(conv.c_out, ho, wo)
                return _rest(model, layer, z)

            j = jacrev(f)(patches)  # (c, P, C_in k^2)
            total += torch.einsum("csi,csj->ij", j, j)
        else:
            j = jacrev(lambda v: _rest(model, layer, v @ weight.T))(h)  # (c, d_in)
            total += j.T @ j
    return total / len(x)
