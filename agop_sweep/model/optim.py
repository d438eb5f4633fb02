"""Optimizers from the ``optimizer`` config group: SGD, Adam, torch.optim.Muon, and the
original script's Muon (``muon_seed``). One builder per option, each reading only the keys
of that option's schema (agop_sweep.config.schema)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from agop_sweep.config.schema import MuonScope
from agop_sweep.config.validate import check_muon_scope
from agop_sweep.model.mlp import MLP
from agop_sweep.model.ns_precision import DTYPES, resolve_ns_dtype

Params = list[torch.nn.Parameter]


class OptimizerSet:
    """One or more torch optimizers stepped together (Muon's ``middle`` scope needs two)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], ns_dtype: str | None = None):
        self.optimizers = optimizers
        # The dtype Newton-Schulz runs in (bf16 | fp32) for the Muon variants, else None.
        self.ns_dtype = ns_dtype

    def orthogonalized_shapes(self) -> list[tuple[int, int]]:
        """The (rows, cols) of every matrix whose update goes through Newton-Schulz."""
        return [(p.shape[0], p.shape[1]) for opt in self.optimizers.values()
                if isinstance(opt, Muon) or type(opt).__name__ == "MuonSeed"
                for group in opt.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def _fused(params: Params, cfg: DictConfig) -> bool | None:
    """Whether to ask for torch's fused kernel: configured, and the parameters' device has one
    (CPU and CUDA do; torch raises for others, so they get the default instead)."""
    if not cfg.fused:
        return None
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None


def _adam(params: Params, cfg: DictConfig, lr: float, betas: list[float], eps: float) -> torch.optim.Adam:
    return torch.optim.Adam(
        params, lr=lr, betas=(betas[0], betas[1]), eps=eps, weight_decay=cfg.weight_decay,
        fused=_fused(params, cfg),
    )


def zeropower(grad: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
              dtype: torch.dtype) -> torch.Tensor:
    """torch.optim.Muon's Newton-Schulz orthogonalisation of ``grad`` (rows, cols) in ``dtype``:
    the operations of torch/optim/_muon.py in the same order, so that with bfloat16 it is
    torch's own result bit for bit (tests/test_optim.py). Returns (rows, cols) in ``dtype``."""
    a, b, c = coefficients
    x = grad.to(dtype, copy=True)  # a copy: the in-place scaling must not touch the momentum
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's shape-dependent learning rate (``optimizer.adjust_lr_fn``)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """torch.optim.Muon with Newton-Schulz in ``ns_dtype``. ``bf16`` is torch's own step,
    unchanged; ``fp32`` is the same step (torch's single-tensor algorithm, the same state
    and state_dict) with :func:`zeropower` in float32."""

    def __init__(self, params: Params, ns_dtype: str = "bf16", **kwargs: Any):
        super().__init__(params, **kwargs)
        if ns_dtype not in DTYPES:
            raise ValueError(f"ns_dtype must be one of {', '.join(DTYPES)}, got {ns_dtype!r}")
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if self.ns_dtype == "bf16":
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._step_in(DTYPES[self.ns_dtype])
        return loss

    @torch.no_grad()
    def _step_in(self, dtype: torch.dtype) -> None:
        for group in self.param_groups:
            momentum, lr = group["momentum"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = zeropower(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))


def _muon(params: Params, cfg: DictConfig, ns_dtype: str) -> torch.optim.Optimizer:
    return Muon(
        params,
        ns_dtype=ns_dtype,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,  # torch's default is 0.1; the experiment uses 0
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps,
        adjust_lr_fn=str(cfg.adjust_lr_fn),
    )


def _ns_dtype(cfg: DictConfig, params: Params) -> str:
    return resolve_ns_dtype(str(cfg.ns_dtype), params[0].device.type if params else "cpu")


def build_sgd(cfg: DictConfig, model: MLP) -> OptimizerSet:
    params = list(model.parameters())
    opt = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=_fused(params, cfg),
    )
    return OptimizerSet({"sgd": opt})


def build_adam(cfg: DictConfig, model: MLP) -> OptimizerSet:
    return OptimizerSet({"adam": _adam(list(model.parameters()), cfg, cfg.lr, cfg.betas, cfg.eps)})


def build_muon(cfg: DictConfig, model: MLP) -> OptimizerSet:
    """scope=all: every weight matrix on Muon; scope=middle: the middle layers on Muon, the
    first and last layer on Adam(aux_lr, aux_betas, aux_eps)."""
    if cfg.scope == MuonScope.all:
        params = list(model.parameters())
        ns_dtype = _ns_dtype(cfg, params)
        return OptimizerSet({"muon": _muon(params, cfg, ns_dtype)}, ns_dtype)
    check_muon_scope(MuonScope.middle, len(model.hidden))  # also for a node that skipped validate
    middle = [p for layer in model.middle for p in layer.parameters()]
    outer = [*model.first.parameters(), *model.last.parameters()]
    adam = _adam(outer, cfg, cfg.aux_lr, cfg.aux_betas, cfg.aux_eps)
    ns_dtype = _ns_dtype(cfg, middle)
    return OptimizerSet({"muon": _muon(middle, cfg, ns_dtype), "adam": adam}, ns_dtype)


def build_muon_seed(cfg: DictConfig, model: MLP) -> OptimizerSet:
    from agop_sweep.model.muon_seed import MuonSeed

    params = list(model.parameters())
    ns_dtype = _ns_dtype(cfg, params)
    opt = MuonSeed(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps, eps=cfg.eps, renormalize=cfg.renormalize, ns_dtype=ns_dtype,
        compile=cfg.compile,
    )
    return OptimizerSet({"muon_seed": opt}, ns_dtype)


BUILDERS: dict[str, Callable[[DictConfig, MLP], OptimizerSet]] = {
    "sgd": build_sgd, "adam": build_adam, "muon": build_muon, "muon_seed": build_muon_seed,
}


def build_optimizer(cfg: DictConfig, model: MLP) -> OptimizerSet:
    """The optimizer(s) for ``model`` from ``cfg`` (the ``optimizer`` node)."""
    builder = BUILDERS.get(str(cfg.name))
    if builder is None:
        raise ValueError(f"unknown optimizer {str(cfg.name)!r}; expected one of {', '.join(BUILDERS)}")
    return builder(cfg, model)
