"""The exact AGOP pass of the conv net: every hidden layer's kernel in one forward and one
backward sweep per chunk, for all c outputs at once.

For a conv layer with filter matrix F (C_out, C_in k^2), pre-activation z_s = F p_s at output
position s (p_s the s-th input patch as ``F.unfold`` cuts it, with the layer's padding and
stride), the patch AGOP of the network output f (c classes) is

    AGOP = (1/n) sum_i sum_s J_is^T J_is = F^T K F,  K = (1/n) sum_i sum_s G_is^T G_is,

with J_is = df(x_i)/dp_s (c, C_in k^2) = G_is F and G_is = df(x_i)/dz_s (c, C_out): a sum over
positions and a mean over samples. A hidden Linear layer is the MLP's case (one position).

The G of every layer follow from the readout downwards as tensors of c x b rows (the c
output cotangents of a chunk of b samples side by side): through an fc layer (G W, times
act'), the head (gap: spread evenly over positions; flatten: a view), a pooling (max: to the
position each window chose; avg: a quarter to each of the four), act' and a conv's
input-gradient (``conv2d_input``, its transposed convolution). No per-sample autograd. The
kernels' products G^T G are taken in float64 (for a conv layer they are a fraction of the
sweep's convolutions) and summed across chunks in float64, so they do not drift with n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from agop_sweep.analyze.agop import KernelPass, Scores, chunk_starts
from agop_sweep.model.cnn import CNN


@dataclass
class _Stage:
    """What the backward sweep needs of a conv stage's forward: act'(z) (b, C, H, W), the
    pooling's indices (max) and the shape of the stage's input (b, C_in, H_in, W_in)."""

    act_grad: torch.Tensor
    indices: torch.Tensor | None
    input_shape: torch.Size


def _forward(model: CNN, x: torch.Tensor
             ) -> tuple[torch.Tensor, list[_Stage], list[torch.Tensor], torch.Size]:
    """Logits (b, c) of ``x`` (b, C, H, W), the stages' saved tensors, the fc layers' act'(z)
    (b, d_out) and the shape of the head's input (b, C, H, W)."""
    stages, h = [], x
    for conv in model.convs:
        shape = h.shape
        z = conv(h)
        a = model.act(z)
        indices = None
        if model.pool == "max":
            h, indices = F.max_pool2d_with_indices(a, 2)
        else:
            h = model.pooled(a)
        stages.append(_Stage(model.act_grad(z), indices, shape))
    head_shape = h.shape
    h = model.headed(h)
    fc_grads = []
    for fc in model.fcs:
        z = fc(h)
        fc_grads.append(model.act_grad(z))
        h = model.act(z)
    return model.last(h), stages, fc_grads, head_shape


def float64_gram(g: torch.Tensor) -> torch.Tensor:
    """sum over rows of g g^T for g (..., d) with the feature axis last (a view of any
    layout), in float64: (d, d). One copy lays g out as float64 rows."""
    flat = torch.empty(g.shape, dtype=torch.float64, device=g.device)
    flat.copy_(g)
    flat = flat.view(-1, g.shape[-1])
    return flat.T @ flat


def _unpool(model: CNN, g: torch.Tensor, stage: _Stage, out_hw: tuple[int, int]) -> torch.Tensor:
    """The gradient (c, b, C, H, W) at the activation of a stage from ``g`` (c, b, C, Hp, Wp)
    at its pooled output; pixels that no 2x2 window covers (odd sizes) get 0."""
    h, w = out_hw
    c, b, ch, hp, wp = g.shape
    if model.pool == "max":
        assert stage.indices is not None
        out = g.new_zeros(c, b, ch, h * w)
        index = stage.indices.reshape(1, b, ch, hp * wp).expand(c, -1, -1, -1)
        return out.scatter_(3, index, g.reshape(c, b, ch, hp * wp)).view(c, b, ch, h, w)
    if model.pool == "avg":
        up = g.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4) * 0.25
        return F.pad(up, (0, w - 2 * wp, 0, h - 2 * hp))
    return g


def _chunk_kernels(model: CNN, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits (b, c) of the chunk ``x`` and, per hidden layer in forward order, the sum over
    its samples, positions and the c outputs of G^T G (d_out, d_out) in float64."""
    logits, stages, fc_grads, head_shape = _forward(model, x)
    readout = model.last.weight  # (c, d)
    c, b = readout.shape[0], x.shape[0]
    grams: list[torch.Tensor] = []
    g = readout[:, None, :].expand(c, b, readout.shape[1])  # df_j/dh at the readout's input
    for fc, a in zip(reversed(model.fcs), reversed(fc_grads), strict=True):
        g = g * a  # G at the fc layer's pre-activation (c, b, d_out)
        grams.append(float64_gram(g))
        g = g @ fc.weight  # at its input
    _, ch, hp, wp = head_shape
    if model.head == "gap":
        g = (g / (hp * wp))[..., None, None].expand(c, b, ch, hp, wp)
    else:
        g = g.reshape(c, b, ch, hp, wp)
    for l in range(len(model.convs) - 1, -1, -1):
        conv, stage = model.convs[l], stages[l]
        h, w = stage.act_grad.shape[2:]
        g = _unpool(model, g, stage, (h, w)) * stage.act_grad  # G at z (c, b, C_out, H, W)
        grams.append(float64_gram(g.permute(0, 1, 3, 4, 2)))
        if l:
            g = torch.nn.grad.conv2d_input(
                (c * b, *stage.input_shape[1:]), conv.filters, g.reshape(c * b, conv.c_out, h, w),
                stride=conv.stride, padding=conv.padding,
            ).view(c, b, *stage.input_shape[1:])
    return logits, grams[::-1]


def conv_kernels(
    model: CNN,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    loss: str = "mse",
    chunk_size: int = 256,
    progress: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> KernelPass:
    """K (d_out, d_out) float64 of every hidden layer of ``model`` (convs then fcs, each
    divided by n) over all n images of ``x`` (n, C, H, W), ``chunk_size`` at a time; with
    labels ``y`` (n,) also the loss and accuracy of the same forward. The pass holds about
    c x chunk_size x (the largest C x H x W) numbers of G at once, twice."""
    n = x.shape[0]
    dtype = model.last.weight.dtype
    device = model.last.weight.device
    acc = [torch.zeros(w.shape[0], w.shape[0], dtype=torch.float64, device=device)
           for w in model.hidden_weights()]
    scores = Scores(y, loss)
    with torch.no_grad():
        for start in chunk_starts(n, chunk_size, progress):
            xb = x[start : start + chunk_size].to(dtype)
            if xb.dim() == 2:
                xb = xb.view(len(xb), *model.image_shape)
            logits, grams = _chunk_kernels(model, xb)
            for a, g in zip(acc, grams, strict=True):
                a += g
            scores.add(start, logits)
            if on_chunk is not None:
                on_chunk(start)
    return scores.result([a / n for a in acc], n)
