"""The exact AGOP pass: all hidden layers' Jacobian kernels in one forward + backward sweep.

For hidden layer l with pre-activation z_l = W_l h_l, the AGOP of the network output f
(c classes) with respect to h_l is

    AGOP_l = (1/n) sum_i J_i^T J_i = W_l^T K_l W_l,  K_l = (1/n) sum_i G_i^T G_i,

with J_i = df(x_i)/dh_l (c, d_in) = G_i W_l and G_i = df(x_i)/dz_l (c, d_out). The G_i of
every layer follow from the readout downwards, G_l = (G_{l+1} W_{l+1}) * act'(z_l), as
batched matmuls over a chunk of samples: no per-sample autograd. Chunk kernels are summed
in the compute dtype and accumulated across chunks in float64, so the result does not
drift with n, and the extra memory is bounded by the chunk size.

Three things keep the pass at matmul speed without changing what it computes:

- K_l is symmetric, so only its upper triangle is multiplied out, in row panels
  S[r0:r1, r0:] = G[:, r0:r1]^T G[:, r0:] (about 60 % of the full product at width 1024);
  the lower triangle is mirrored once at the end.
- The top hidden layer has G_i = R diag(a_i) (R the readout, a_i = act'(z_i)), so
  sum_i G_i^T G_i = (R^T R) * (A^T A), elementwise: a (b, d) gram instead of a (b c, d) one.
- G and G W live in two slabs allocated once per pass, and the act' mask is applied in
  place: no large allocation (and page faults) per layer and chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.profiler import record_function
from tqdm import tqdm

from agop_sweep.model.mlp import Activation, loss_fn

# Rows per panel of the symmetric products. Narrower panels skip more of the lower
# triangle but run at a lower matmul rate; 256 was fastest at width 1024 on a CPU.
PANEL_ROWS = 256


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


class Scores:
    """The loss sum and correct count of a pass's chunks, kept on the device (one host sync at
    the end), for labels ``y`` (n,); nothing without labels."""

    def __init__(self, y: torch.Tensor | None, loss: str):
        self.y, self.loss = y, loss
        device = y.device if y is not None else None
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, start: int, logits: torch.Tensor) -> None:
        """The chunk of samples ``start`` .. ``start + len(logits)``."""
        if self.y is not None:
            yb = self.y[start : start + len(logits)]
            self.loss_sum += loss_fn(self.loss, logits.float(), yb, reduction="sum").double()
            self.correct += (logits.argmax(1) == yb).sum()

    def result(self, kernels: list[torch.Tensor], n: int) -> KernelPass:
        return KernelPass(kernels, float(self.loss_sum) / n, float(self.correct) / n, n)


def chunk_starts(n: int, chunk_size: int, progress: bool) -> Iterator[int]:
    """The first sample of every chunk, with a tqdm bar for a long pass when ``progress``."""
    hide = None if progress and n > 8 * chunk_size else True  # tqdm: None = hide unless a tty
    return iter(tqdm(range(0, n, chunk_size), desc="AGOP", unit="chunk", disable=hide, leave=False))


def panel_rows(d: int) -> list[tuple[int, int]]:
    """Row ranges [r0, r1) whose panels S[r0:r1, r0:] cover the upper triangle of S (d, d)."""
    return [(r0, min(r0 + PANEL_ROWS, d)) for r0 in range(0, d, PANEL_ROWS)]


def panel_area(d: int) -> int:
    """Entries of the upper panels of a (d, d) symmetric product: what the pass multiplies out."""
    return sum((r1 - r0) * (d - r0) for r0, r1 in panel_rows(d))


class _Workspace:
    """Buffers reused across the chunks of one pass (``rows`` samples at most per chunk)."""

    def __init__(self, hidden: Sequence[torch.Tensor], n_classes: int, rows: int,
                 dtype: torch.dtype, device: torch.device):
        # G of layers L-1 .. 0 alternate between the slabs; one layer needs none (no propagation).
        d_max = max(w.shape[0] for w in hidden) if len(hidden) > 1 else 0
        size = rows * n_classes * d_max
        self.slabs = [torch.empty(size, dtype=dtype, device=device) for _ in range(2)]
        self.panels = [
            [torch.empty(r1 - r0, w.shape[0] - r0, dtype=dtype, device=device)
             for r0, r1 in panel_rows(w.shape[0])]
            for w in hidden
        ]


def _upper_gram(g: torch.Tensor, out: list[torch.Tensor]) -> None:
    """The upper panels of g^T g (g of shape (m, d)) into ``out``."""
    for (r0, r1), panel in zip(panel_rows(g.shape[1]), out, strict=True):
        torch.mm(g[:, r0:r1].T, g[:, r0:], out=panel)


def _chunk_panels(
    hidden: Sequence[torch.Tensor], readout: torch.Tensor, act: Activation, act_grad: Activation,
    x: torch.Tensor, ws: _Workspace,
) -> torch.Tensor:
    """Fill ``ws.panels[l]`` with the upper panels of sum_i G_i^T G_i over the chunk ``x``
    for l < L-1, and of A^T A for the top layer l = L-1 (to be multiplied by R^T R).
    Returns the logits (b, c)."""
    derivs = []
    h = x
    for l, w in enumerate(hidden):
        with record_function(f"agop/layer{l}"):
            z = h @ w.T
            derivs.append(act_grad(z))
            h = act(z)
    logits = h @ readout.T
    b, c = x.shape[0], readout.shape[0]
    top = len(hidden) - 1
    with record_function(f"agop/layer{top}"):
        _upper_gram(derivs[top], ws.panels[top])
        if top == 0:
            return logits
        d = hidden[top].shape[0]
        g = ws.slabs[0][: b * c * d].view(b, c, d)
        torch.mul(readout, derivs[top][:, None, :], out=g)  # G_i = R diag(a_i)
    cur = 0
    for l in range(top, 0, -1):
        with record_function(f"agop/layer{l - 1}"):
            d_in = hidden[l].shape[1]
            u = ws.slabs[1 - cur][: b * c * d_in].view(b * c, d_in)
            torch.mm(g.view(b * c, -1), hidden[l], out=u)  # df/dh_l = G_l W_l
            u.view(b, c, d_in).mul_(derivs[l - 1][:, None, :])  # G_{l-1}, in place
            _upper_gram(u, ws.panels[l - 1])
            g, cur = u, 1 - cur
    return logits


def _symmetric(upper: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose upper triangle (diagonal included) is that of ``upper``."""
    return upper.triu() + upper.triu(1).T


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
    device = hidden[0].device
    acc = [torch.zeros(w.shape[0], w.shape[0], dtype=torch.float64, device=device) for w in hidden]
    scores = Scores(y, loss)
    ws = _Workspace(hidden, readout.shape[0], min(chunk_size, n), dtype, device)
    with torch.no_grad():
        for start in chunk_starts(n, chunk_size, progress):
            xb = x[start : start + chunk_size].to(dtype)
            logits = _chunk_panels(hidden, readout, act, act_grad, xb, ws)
            for a, w, panels in zip(acc, hidden, ws.panels, strict=True):
                for (r0, r1), p in zip(panel_rows(w.shape[0]), panels, strict=True):
                    a[r0:r1, r0:] += p
            scores.add(start, logits)
            if on_chunk is not None:
                on_chunk(start)
        r = readout.double()
        acc[-1] *= r.T @ r  # the top layer's sum_chunks (A^T A), see the module docstring
    return scores.result([_symmetric(a) / n for a in acc], n)


def pass_flops(dims: Sequence[int], n_classes: int, n: int) -> dict[str, float]:
    """FLOPs of :func:`jacobian_kernels` for hidden layer sizes ``dims`` = [d_in, d_1, .., d_L].

    forward: 2 n (sum d_in d_out + d_L c); propagation: 2 n c d_out d_in for layers 1..L-1;
    kernels: the matmuls as performed (upper panels only; the top layer's (n, d_L) gram
    instead of an (n c, d_L) one). ``dense_kernels``: 2 n c d_out^2 per layer, the full
    products of the straightforward pass; ``dense_total`` counts the pass with those.
    """
    layers = list(itertools.pairwise(dims))
    forward = 2 * n * (sum(i * o for i, o in layers) + dims[-1] * n_classes)
    propagate = 2 * n * n_classes * sum(i * o for i, o in layers[1:])
    kernels = 2 * n * (n_classes * sum(panel_area(o) for _, o in layers[:-1]) + panel_area(dims[-1]))
    dense_kernels = 2 * n * n_classes * sum(o * o for _, o in layers)
    return {"forward": forward, "propagate": propagate, "kernels": kernels,
            "total": forward + propagate + kernels,
            "dense_kernels": dense_kernels, "dense_total": forward + propagate + dense_kernels}
