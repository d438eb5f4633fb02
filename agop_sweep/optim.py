"""Optimizers from the ``optimizer`` config group: SGD, Adam, torch.optim.Muon, and the
original script's Muon (``muon_seed``). One builder per option, each reading only the keys
of that option's schema (agop_sweep.config.schema)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig

from agop_sweep.model import MLP

Params = list[torch.nn.Parameter]


class OptimizerSet:
    """One or more torch optimizers stepped together (Muon's ``middle`` scope needs two)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers

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


def _muon(params: Params, cfg: DictConfig) -> torch.optim.Optimizer:
    return torch.optim.Muon(
        params,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,  # torch's default is 0.1; the experiment uses 0
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps,
        adjust_lr_fn=str(cfg.adjust_lr_fn),
    )


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
    if cfg.scope == "all":
        return OptimizerSet({"muon": _muon(list(model.parameters()), cfg)})
    middle = [p for layer in model.middle for p in layer.parameters()]
    outer = [*model.first.parameters(), *model.last.parameters()]
    if not middle:
        raise ValueError("optimizer.scope=middle needs model.depth >= 2 (no middle layers)")
    adam = _adam(outer, cfg, cfg.aux_lr, cfg.aux_betas, cfg.aux_eps)
    return OptimizerSet({"muon": _muon(middle, cfg), "adam": adam})


def build_muon_seed(cfg: DictConfig, model: MLP) -> OptimizerSet:
    from agop_sweep.muon_seed import MuonSeed

    opt = MuonSeed(
        list(model.parameters()), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps, eps=cfg.eps, renormalize=cfg.renormalize,
    )
    return OptimizerSet({"muon_seed": opt})


BUILDERS: dict[str, Callable[[DictConfig, MLP], OptimizerSet]] = {
    "sgd": build_sgd, "adam": build_adam, "muon": build_muon, "muon_seed": build_muon_seed,
}


def build_optimizer(cfg: DictConfig, model: MLP) -> OptimizerSet:
    """The optimizer(s) for ``model`` from ``cfg`` (the ``optimizer`` node)."""
    builder = BUILDERS.get(str(cfg.name))
    if builder is None:
        raise ValueError(f"unknown optimizer {str(cfg.name)!r}; expected one of {', '.join(BUILDERS)}")
    return builder(cfg, model)
