"""The bias-free MLP, its activations' derivatives, the losses, and the optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from agop_sweep.model.mlp import ACTIVATIONS, MLP, build_model, loss_fn
from agop_sweep.model.optim import Muon, _fused, build_optimizer

REFERENCE_ACTS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": lambda z: F.gelu(z, approximate="none")}


@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_depth_plus_one_bias_free_matrices_in_forward_order(depth: int, act: str) -> None:
    torch.manual_seed(0)
    model = build_model(12, width=8, depth=depth, n_classes=10, act=act)
    state = model.state_dict()
    weights = list(state.values())
    assert len(weights) == depth + 1 and len(list(model.parameters())) == depth + 1
    assert all(w.ndim == 2 for w in weights)  # no bias vectors anywhere
    assert [tuple(w.shape) for w in weights] == [(8, 12)] + [(8, 8)] * (depth - 1) + [(10, 8)]
    assert [w.data_ptr() for w in model.hidden_weights()] == [w.data_ptr() for w in weights[:-1]]
    # The state_dict order is the forward order: chaining the matrices reproduces forward().
    x = torch.randn(5, 12)
    h = x
    for w in weights[:-1]:
        h = REFERENCE_ACTS[act](h @ w.T)
    torch.testing.assert_close(model(x), h @ weights[-1].T)


def test_init_is_pytorch_default_and_seeded() -> None:
    torch.manual_seed(3)
    a = build_model(20, width=16, depth=3, n_classes=10, act="relu")
    torch.manual_seed(3)
    b = build_model(20, width=16, depth=3, n_classes=10, act="relu")
    for wa, wb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb)
        bound = 1 / np.sqrt(wa.shape[1])  # Kaiming-uniform(a=sqrt 5) = U(-1/sqrt(fan_in), ..)
        assert float(wa.abs().max()) <= bound and float(wa.abs().max()) > 0.9 * bound


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu"])
def test_activation_derivatives_match_autograd(act: str) -> None:
    fn, grad = ACTIVATIONS[act]
    z = torch.cat([torch.linspace(-6, 6, 1201, dtype=torch.float64), torch.randn(500, dtype=torch.float64)])
    z.requires_grad_(True)
    (auto,) = torch.autograd.grad(fn(z).sum(), z)
    torch.testing.assert_close(grad(z.detach()), auto, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fn(z), REFERENCE_ACTS[act](z))


def test_mse_is_mean_over_samples_and_classes_against_one_hot() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 4))
    y = rng.integers(0, 4, 7)
    onehot = np.eye(4)[y]
    expected = ((logits - onehot) ** 2).sum() / (7 * 4)
    got = loss_fn("mse", torch.from_numpy(logits), torch.from_numpy(y))
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_ce_is_cross_entropy() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((9, 10))
    y = rng.integers(0, 10, 9)
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(9), y].mean()
    got = loss_fn("ce", torch.from_numpy(logits), torch.from_numpy(y))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    assert float(got) == pytest.approx(float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y))))


@pytest.mark.parametrize("name", ["mse", "ce"])
def test_sum_over_chunks_divided_by_n_is_the_mean(name: str) -> None:
    torch.manual_seed(2)
    logits, y = torch.randn(23, 10, dtype=torch.float64), torch.randint(0, 10, (23,))
    total = sum(loss_fn(name, logits[s : s + 5], y[s : s + 5], reduction="sum") for s in range(0, 23, 5))
    assert float(total) / 23 == pytest.approx(float(loss_fn(name, logits, y)), rel=1e-12)


# -- optimizers -------------------------------------------------------------------------------


def _model(depth: int = 3) -> MLP:
    torch.manual_seed(0)
    return build_model(16, width=8, depth=depth, n_classes=10, act="relu")


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_sgd_and_adam_settings(compose_config) -> None:
    model = _model()
    opt = build_optimizer(compose_config("optimizer=sgd").optimizer, model)
    (sgd,) = opt.optimizers.values()
    assert type(sgd) is torch.optim.SGD
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.0, 0.0)
    assert _ids(group["params"]) == _ids(model.parameters())

    opt = build_optimizer(compose_config("optimizer=adam", "optimizer.lr=0.003").optimizer, model)
    (adam,) = opt.optimizers.values()
    assert type(adam) is torch.optim.Adam
    group = adam.param_groups[0]
    settings = (group["lr"], group["betas"], group["eps"], group["weight_decay"])
    assert settings == (0.003, (0.9, 0.999), 1e-8, 0.0)
    assert sgd.param_groups[0]["fused"] and group["fused"]  # torch's one-kernel step by default


def test_fused_only_where_torch_has_it(compose_config) -> None:
    cfg = compose_config("optimizer=adam").optimizer
    assert _fused([torch.nn.Parameter(torch.zeros(2))], cfg) is True
    meta = [torch.nn.Parameter(torch.empty(2, device="meta"))]  # no fused kernel: torch's default
    assert _fused(meta, cfg) is None
    meta[0].grad = torch.empty(2, device="meta")
    torch.optim.Adam(meta, fused=_fused(meta, cfg)).step()  # fused=True raises here
    with pytest.raises(RuntimeError, match="fused=True"):
        torch.optim.Adam(meta, fused=True).step()
    off = compose_config("optimizer=adam", "optimizer.fused=false").optimizer
    assert _fused([torch.nn.Parameter(torch.zeros(2))], off) is None


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_fused_step_matches_the_default_kernels(compose_config, name: str) -> None:
    """optimizer.fused=false gives torch's default step (a loop on CPU): the same update up to
    rounding."""
    weights = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = _model()
        cfg = compose_config(f"optimizer={name}", f"optimizer.fused={str(fused).lower()}").optimizer
        opt = build_optimizer(cfg, model)
        (inner,) = opt.optimizers.values()
        assert bool(inner.param_groups[0]["fused"]) is fused
        x, y = torch.randn(32, 16), torch.randint(0, 10, (32,))
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights[fused] = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(0)  # the same initial weights: every one of them moved, equally both ways
    start = [p.detach() for p in _model().parameters()]
    for a, b, s in zip(weights[True], weights[False], start, strict=True):
        assert not torch.equal(a, s)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_muon_all_is_torch_muon_without_weight_decay(compose_config) -> None:
    model = _model()
    opt = build_optimizer(compose_config("optimizer=muon").optimizer, model)
    (muon,) = opt.optimizers.values()
    # torch.optim.Muon itself, with its Newton-Schulz dtype chosen (optim.Muon: bf16 is torch's step)
    assert type(muon) is Muon and isinstance(muon, torch.optim.Muon) and muon.ns_dtype == opt.ns_dtype
    (group,) = muon.param_groups
    assert group["weight_decay"] == 0.0  # torch's default would be 0.1
    assert (group["lr"], group["momentum"], group["nesterov"], group["ns_steps"]) == (0.01, 0.95, True, 5)
    assert group["adjust_lr_fn"] in ("original", None)
    assert _ids(group["params"]) == _ids(model.parameters())


def test_muon_hidden_scope_splits_layers(compose_config) -> None:
    model = _model(depth=4)
    cfg = compose_config("optimizer=muon", "optimizer.scope=hidden", "optimizer.aux_lr=0.002").optimizer
    opt = build_optimizer(cfg, model)
    types = {type(o) for o in opt.optimizers.values()}
    assert types == {Muon, torch.optim.Adam}
    muon = next(o for o in opt.optimizers.values() if isinstance(o, torch.optim.Muon))
    adam = next(o for o in opt.optimizers.values() if isinstance(o, torch.optim.Adam))
    muon_params = [p for g in muon.param_groups for p in g["params"]]
    adam_params = [p for g in adam.param_groups for p in g["params"]]
    assert _ids(muon_params) == _ids(layer.weight for layer in model.middle) and len(muon_params) == 3
    assert _ids(adam_params) == {id(model.first.weight), id(model.last.weight)}
    assert all(g["lr"] == 0.002 for g in adam.param_groups)
    assert all(g["lr"] == 0.01 and g["weight_decay"] == 0.0 for g in muon.param_groups)


@pytest.mark.parametrize("name", ["sgd", "adam", "muon"])
def test_one_step_changes_every_weight_and_state_round_trips(compose_config, name: str) -> None:
    model = _model()
    opt = build_optimizer(compose_config(f"optimizer={name}").optimizer, model)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(32, 16), torch.randint(0, 10, (32,))
    opt.zero_grad()
    loss_fn("mse", model(x), y).backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    state = opt.state_dict()
    other = build_optimizer(compose_config(f"optimizer={name}").optimizer, model)
    other.load_state_dict(state)
    assert set(other.state_dict()) == set(state)
