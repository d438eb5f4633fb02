"""The original script's own Muon (``optimizer=muon_seed``), for every weight matrix.

It differs from ``torch.optim.Muon`` in four ways: every weight is rescaled to Frobenius
norm sqrt(d_out) before each step; the momentum buffer is buf = m buf + g (no dampening)
with the Nesterov direction g + m buf; the Newton-Schulz iteration runs in bfloat16 on the
direction normalised in bfloat16 (``ns_dtype=fp32``: in float32, for CPUs without fast
bf16); and the step is lr x the orthogonalised direction, with no shape-dependent scaling of
the learning rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch

from agop_sweep.errors import one_line
from agop_sweep.model.ns_precision import DTYPES as _DTYPES

log = logging.getLogger(__name__)

# The quintic Newton-Schulz coefficients (a, b, c) of Keller Jordan's Muon.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately U V^T for G = U S V^T (d_out, d_in), in ``dtype``, shape (d_out, d_in).

    X = G / (|G|_F + eps) in ``dtype`` (transposed when d_out > d_in, so that X X^T is the
    smaller Gram matrix), then ``steps`` times X <- a X + (b A + c A A) X with A = X X^T.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    x = x / (x.norm() + eps)
    tall = g.shape[0] > g.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonSeed(torch.optim.Optimizer):
    """Muon as in the original script, for 2-D parameters only (a bias-free MLP's weights).

    Per step and weight W (d_out, d_in) with gradient g (a weight without one is skipped):
        W <- W sqrt(d_out) / |W|_F                      (``renormalize``)
        buf <- momentum buf + g                         (buf starts at 0)
        u <- g + momentum buf if ``nesterov`` else buf
        W <- W - lr orthogonalize(u, ns_steps, eps, ns_dtype)
    The momentum buffers live in ``self.state``, so state_dict/load_state_dict resume exactly.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.01,
        momentum: float = 0.6,
        nesterov: bool = True,
        ns_steps: int = 3,
        eps: float = 1e-7,
        renormalize: bool = True,
        ns_dtype: str = "bf16",
        compile: bool = False,
    ):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, eps=eps,
                        renormalize=renormalize)
        super().__init__(params, defaults)
        if ns_dtype not in _DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(_DTYPES)}, got {ns_dtype!r}")
        self.ns_dtype = ns_dtype
        # The original runs Newton-Schulz under torch.compile, which rounds differently from
        # eager bf16 (fused elementwise work in float32): 1.4-1.9 % of the update per call.
        # With the same torch, the compiled function gives the original's update bit for bit.
        self.orthogonalize: Callable[..., torch.Tensor] = torch.compile(orthogonalize) if compile \
            else orthogonalize
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"MuonSeed updates weight matrices only; got a parameter of shape "
                        f"{tuple(p.shape)}"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # as the original: a weight without a gradient is left as it is
                    continue
                if group["renormalize"]:
                    norm = p.norm()
                    if norm > 0:
                        p.mul_(math.sqrt(p.shape[0]) / norm)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                u = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                update = self._orthogonalized(u, group["ns_steps"], group["eps"])
                p.sub_(update, alpha=group["lr"])
        return loss

    def _orthogonalized(self, u: torch.Tensor, steps: int, eps: float) -> torch.Tensor:
        dtype = _DTYPES[self.ns_dtype]
        if self.orthogonalize is orthogonalize:
            return orthogonalize(u, steps, eps, dtype)
        try:
            return self.orthogonalize(u, steps, eps, dtype)
        except Exception as e:  # no C++ compiler, an unsupported device: run eagerly from now on
            log.warning("torch.compile of Newton-Schulz failed (%s); running it eagerly", one_line(e))
            self.orthogonalize = orthogonalize
            return orthogonalize(u, steps, eps, dtype)
