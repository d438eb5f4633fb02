"""Optimizers from the ``optimizer`` config group: SGD, Adam, and torch.optim.Muon."""

from __future__ import annotations

import logging
from typing import Any

import torch
from omegaconf import DictConfig

from agop_sweep.model import MLP

log = logging.getLogger(__name__)


class OptimizerSet:
    """One or more torch optimizers stepped together (Muon's ``hidden`` scope needs two)."""

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


def _fused(params: list[torch.nn.Parameter], cfg: DictConfig) -> bool | None:
    """Whether to ask for torch's fused kernel: configured, and the parameters' device has one
    (CPU and CUDA do; torch raises for others, so they get the default instead)."""
    if not cfg.fused:
        return None
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None


def _adam(params: list[torch.nn.Parameter], cfg: DictConfig, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(
        params, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
        fused=_fused(params, cfg),
    )


def _muon(params: list[torch.nn.Parameter], cfg: DictConfig) -> torch.optim.Optimizer:
    return torch.optim.Muon(
        params,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,  # torch's default is 0.1; the experiment uses 0
        momentum=cfg.muon_momentum,
        nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps,
        adjust_lr_fn=cfg.adjust_lr_fn,
    )


def build_optimizer(cfg: DictConfig, model: MLP) -> OptimizerSet:
    if cfg.name == "sgd":
        params = list(model.parameters())
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            fused=_fused(params, cfg),
        )
        return OptimizerSet({"sgd": opt})
    if cfg.name == "adam":
        return OptimizerSet({"adam": _adam(list(model.parameters()), cfg, cfg.lr)})
    if cfg.name == "muon":
        if cfg.scope == "all":
            return OptimizerSet({"muon": _muon(list(model.parameters()), cfg)})
        middle = [p for layer in model.middle for p in layer.parameters()]
        outer = [*model.first.parameters(), *model.last.parameters()]
        if not middle:
            raise ValueError("optimizer.scope=hidden needs model.depth >= 2 (no middle layers)")
        return OptimizerSet({"muon": _muon(middle, cfg), "adam": _adam(outer, cfg, cfg.aux_lr)})
    raise ValueError(f"unknown optimizer {cfg.name!r}")
