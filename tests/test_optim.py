"""optim.py: one builder per optimizer option, each fed only its own schema's keys."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from agop_sweep.config import OPTIMIZERS, OptimizerName
from agop_sweep.model.mlp import build_model, loss_fn
from agop_sweep.model.muon_seed import MuonSeed
from agop_sweep.model.optim import BUILDERS, Muon, build_optimizer


def _model(depth: int = 3):
    torch.manual_seed(0)
    return build_model(16, width=8, depth=depth, n_classes=10, act="relu")


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_every_option_has_a_builder() -> None:
    assert set(BUILDERS) == set(OPTIMIZERS) == {n.value for n in OptimizerName}


def test_muon_seed_is_the_original_scripts_muon_with_the_configured_settings(compose_config) -> None:
    model = _model()
    cfg = compose_config("optimizer=muon_seed", "optimizer.lr=0.02", "optimizer.momentum=0.5",
                         "optimizer.nesterov=false", "optimizer.ns_steps=4", "optimizer.eps=1e-6",
                         "optimizer.renormalize=false").optimizer
    opt = build_optimizer(cfg, model)
    (seed,) = opt.optimizers.values()
    assert type(seed) is MuonSeed and list(opt.optimizers) == ["muon_seed"]
    (group,) = seed.param_groups
    assert {k: group[k] for k in ("lr", "momentum", "nesterov", "ns_steps", "eps", "renormalize")} == {
        "lr": 0.02, "momentum": 0.5, "nesterov": False, "ns_steps": 4, "eps": 1e-6, "renormalize": False}
    assert _ids(group["params"]) == _ids(model.parameters())
    defaults = build_optimizer(compose_config("optimizer=muon_seed").optimizer, model).optimizers["muon_seed"]
    (group,) = defaults.param_groups
    assert (group["lr"], group["momentum"], group["nesterov"], group["ns_steps"], group["eps"],
            group["renormalize"]) == (0.01, 0.6, True, 3, 1e-7, True)


def test_muon_seed_is_imported_only_when_built() -> None:
    code = "import sys, agop_sweep.model.optim; assert 'agop_sweep.model.muon_seed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("scope", ["middle", "hidden"])
def test_muon_middle_scope_gives_the_auxiliary_adam_its_own_settings(compose_config, scope: str) -> None:
    model = _model(depth=4)
    cfg = compose_config("optimizer=muon", f"optimizer.scope={scope}", "optimizer.aux_lr=0.002",
                         "optimizer.aux_betas=[0.8,0.99]", "optimizer.aux_eps=1e-6",
                         "optimizer.momentum=0.9").optimizer
    opt = build_optimizer(cfg, model)
    muon, adam = opt.optimizers["muon"], opt.optimizers["adam"]
    assert (type(muon), type(adam)) == (Muon, torch.optim.Adam)
    assert isinstance(muon, torch.optim.Muon) and muon.ns_dtype == opt.ns_dtype
    (mg,), (ag,) = muon.param_groups, adam.param_groups
    assert _ids(mg["params"]) == _ids(layer.weight for layer in model.middle)
    assert _ids(ag["params"]) == {id(model.first.weight), id(model.last.weight)}
    assert (mg["lr"], mg["momentum"], mg["weight_decay"]) == (0.01, 0.9, 0.0)
    assert (ag["lr"], ag["betas"], ag["eps"], ag["weight_decay"]) == (0.002, (0.8, 0.99), 1e-6, 0.0)
    assert ag["fused"]


def test_muon_adjust_lr_fn_reaches_torch_as_a_plain_string(compose_config) -> None:
    cfg = compose_config("optimizer=muon", "optimizer.adjust_lr_fn=match_rms_adamw").optimizer
    (muon,) = build_optimizer(cfg, _model()).optimizers.values()
    fn = muon.param_groups[0]["adjust_lr_fn"]
    assert fn == "match_rms_adamw" and type(fn) is str


def test_muon_seed_steps_and_its_state_round_trips(compose_config) -> None:
    model = _model()
    cfg = compose_config("optimizer=muon_seed").optimizer
    opt = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(32, 16), torch.randint(0, 10, (32,))
    opt.zero_grad()
    loss_fn("mse", model(x), y).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    other = build_optimizer(cfg, model)
    other.load_state_dict(opt.state_dict())
    for a, b in zip(opt.optimizers["muon_seed"].state.values(),
                    other.optimizers["muon_seed"].state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    with pytest.raises(ValueError, match="expected"):
        build_optimizer(compose_config("optimizer=sgd").optimizer, model).load_state_dict(opt.state_dict())


def test_an_unknown_optimizer_is_a_clear_error() -> None:
    from omegaconf import OmegaConf

    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'; expected one of sgd, adam, muon, "):
        build_optimizer(OmegaConf.create({"name": "rmsprop", "lr": 0.1}), _model())
