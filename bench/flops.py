"""Exact matmul FLOP counts of what each code path performs.

Matmul FLOPs (2 per multiply-add); elementwise work (activations, masks, losses, optimizer
updates) is not counted: it is memory-bound and under 0.1 % of the matmul FLOPs here.
MatmulFlops counts the same thing at run time, from the aten matmuls dispatched, and
tests/test_bench.py checks every formula against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten


def train_flops(shapes: Sequence[tuple[int, int]], batch: int) -> dict[str, int]:
    """Matmul FLOPs of one training step (forward, loss, backward) of the bias-free MLP with
    weights of ``shapes`` (d_out, d_in), forward order, at ``batch`` samples.

    forward: 2 b d_in d_out per layer; backward: the weight gradient (2 b d_in d_out) of
    every layer and the input gradient (2 b d_in d_out) of every layer but the first: the
    input does not require grad, so autograd never computes d loss / d x.
    """
    macs = [o * i for o, i in shapes]
    out = {"forward": 2 * batch * sum(macs), "weight_grads": 2 * batch * sum(macs),
           "input_grads": 2 * batch * sum(macs[1:])}
    out["total"] = sum(out.values())
    out["naive_6x"] = 6 * batch * sum(macs)  # the usual 6 x params x batch count, for comparison
    return out


def eval_flops(shapes: Sequence[tuple[int, int]], n: int) -> int:
    """Matmul FLOPs of evaluating ``n`` samples (forward only)."""
    return 2 * n * sum(o * i for o, i in shapes)


def ns_flops(shape: Sequence[int], steps: int) -> int:
    """Matmul FLOPs of torch.optim.Muon's Newton-Schulz on one (rows, cols) matrix.

    torch/optim/_muon.py works on X (m, k), m = min(rows, cols) (tall matrices transposed);
    each of the ``steps`` iterations is gram = X X^T (2 m^2 k), addmm(gram, gram, gram)
    (2 m^3) and addmm(X, update, X) (2 m^2 k).
    """
    m, k = min(shape), max(shape)
    return steps * (4 * m * m * k + 2 * m**3)


class MatmulFlops(TorchDispatchMode):
    """Counts the matmul FLOPs that are actually dispatched (mm, addmm, bmm, baddbmm, and
    the vector forms), under autograd and torch.func transforms alike; ``by_op`` splits them.

    torch.utils.flop_counter.FlopCounterMode does the same for plain autograd but cannot run
    under torch.func.jacrev (its module hooks break autograd.grad), which the reference uses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        op = func._overloadpacket
        flops = 0
        if op in (aten.mm, aten.bmm):
            a, b = args[0], args[1]
            flops = 2 * a.numel() * b.shape[-1]
        elif op in (aten.addmm, aten.baddbmm):
            a, b = args[1], args[2]
            flops = 2 * a.numel() * b.shape[-1]
        elif op in (aten.mv, aten.addmv, aten.dot, aten.vdot):
            a = args[1] if op is aten.addmv else args[0]
            flops = 2 * a.numel()
        if flops:
            self.total += flops
            self.by_op[str(op)] = self.by_op.get(str(op), 0) + flops
        return out
