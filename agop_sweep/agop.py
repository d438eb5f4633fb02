"""The exact AGOP pass: all hidden layers' Jacobian kernels in one forward + backward sweep.

For hidden layer l with pre-activation z_l = W_l h_l, the AGOP of the network output f
(c classes) with respect to h_l is

    AGOP_l = (1/n) sum_i J_i^T J_i = W_l^T K_l W_l,  K_l = (1/n) sum_i G_i^T G_i,

with J_i = df(x_i)/dh_l (c, d_in) = G_i W_l and G_i = df(x_i)/dz_l (c, d_out). The G_i of
every layer follow from the readout downwards, G_l = (G_{l+1} W_{l+1}) * act'(z_l), as
batched matmuls over a chunk of samples: no per-sample autograd. Chunk kernels are summed
in the compute dtype and accumulated across chunks in float64, so the result does not
drift with n, and the extra memory is bounded by the chunk size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

from agop_sweep.model import Activation, loss_fn


@dataclass
class KernelPass:
    """Result of one pass over the n training samples.

    kernels: K_l (d_out_l, d_out_l) float64 for every hidden layer, already divided by n.
    loss, accuracy: the train loss and accuracy of the same weights, from the same forward.
    """

    kernels: list[torch.Tensor]
    loss: float
    accuracy: float
    n: int


def chunk_kernels(
    hidden: Sequence[torch.Tensor],
    readout: torch.Tensor,
    act: Activation,
    act_grad: Activation,
    x: torch.Tensor,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Unnormalised sum_i G_i^T G_i per hidden layer over one chunk, and the logits.

    Args:
        hidden: weights W_0..W_{L-1}, W_l of shape (d_out_l, d_in_l).
        readout: the last layer's weight (c, d_out_{L-1}).
        x: inputs (b, d_in_0) in the weights' dtype.
    Returns:
        ([S_l (d_out_l, d_out_l)], logits (b, c)).
    """
    derivs = []
    h = x
    for w in hidden:
        z = h @ w.T
        derivs.append(act_grad(z))
        h = act(z)
    logits = h @ readout.T
    b, c = x.shape[0], readout.shape[0]
    sums: list[torch.Tensor] = [None] * len(hidden)  # type: ignore[list-item]
    upstream = readout.expand(b, c, readout.shape[1])  # df/dh_L is W_last for every sample
    for l in range(len(hidden) - 1, -1, -1):
        g = (upstream * derivs[l][:, None, :]).reshape(b * c, -1)  # (b*c, d_out_l)
        sums[l] = g.T @ g
        if l > 0:
            upstream = (g @ hidden[l]).reshape(b, c, -1)  # df/dh_l = G_l W_l
    return sums, logits


def jacobian_kernels(
    hidden: Sequence[torch.Tensor],
    readout: torch.Tensor,
    act: Activation,
    act_grad: Activation,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    loss: str = "mse",
    chunk_size: int = 2048,
    progress: bool = False,
    on_chunk: Callable[[int], None] | None = None,
) -> KernelPass:
    """K_l for every hidden layer over all n samples of ``x`` (n, d_in_0), in chunks.

    When labels ``y`` (n,) are given, the same forward pass also yields the loss and accuracy.
    """
    n = x.shape[0]
    dtype = hidden[0].dtype
    acc = [torch.zeros(w.shape[0], w.shape[0], dtype=torch.float64, device=w.device) for w in hidden]
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    starts = range(0, n, chunk_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="AGOP", unit="chunk", disable=None if progress and n > 8 * chunk_size else True, leave=False):
            xb = x[start : start + chunk_size].to(dtype)
            sums, logits = chunk_kernels(hidden, readout, act, act_grad, xb)
            for a, s in zip(acc, sums, strict=True):
                a += s
            if y is not None:
                yb = y[start : start + chunk_size]
                loss_sum += loss_fn(loss, logits.float(), yb, reduction="sum").double()
                correct += (logits.argmax(1) == yb).sum()
            if on_chunk is not None:
                on_chunk(start)
    kernels = [a / n for a in acc]
    return KernelPass(kernels, float(loss_sum) / n, float(correct) / n, n)


def pass_flops(dims: Sequence[int], n_classes: int, n: int) -> dict[str, float]:
    """FLOPs of :func:`jacobian_kernels` for hidden layer sizes ``dims`` = [d_in, d_1, .., d_L].

    forward: 2 n (sum d_in d_out + d_L c); propagation: 2 n c d_out d_in for layers 1..L-1;
    kernels: 2 n c d_out^2 per layer (the full product, as the matmul computes it).
    """
    layers = list(zip(dims[:-1], dims[1:], strict=True))
    forward = 2 * n * (sum(i * o for i, o in layers) + dims[-1] * n_classes)
    propagate = 2 * n * n_classes * sum(i * o for i, o in layers[1:])
    kernels = 2 * n * n_classes * sum(o * o for _, o in layers)
    return {"forward": forward, "propagate": propagate, "kernels": kernels,
            "total": forward + propagate + kernels}
