"""MuonSeed, the original script's Muon: step by step against a re-implementation written
here from its description, resume through state_dict, and the 2-D-only rule."""

from __future__ import annotations

import io
import math

import pytest
import torch

from agop_sweep.model.muon_seed import MuonSeed, orthogonalize

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]


def _reference_step(weights, grads, bufs, lr, momentum, nesterov, ns_steps, eps, renormalize):
    """One step of the described optimizer, out of place: returns (new weights, new buffers).

    Rescale each W to |W|_F = sqrt(d_out); buf = m buf + g; direction g + m buf (Nesterov) or
    buf; quintic Newton-Schulz (3.4445, -4.7750, 2.0315) in bfloat16 on direction / (|.|_F +
    eps), on the transpose of a tall matrix; W - lr update.
    """
    new_weights, new_bufs = [], []
    for w, g, buf in zip(weights, grads, bufs, strict=True):
        if renormalize:
            w = w * (math.sqrt(w.shape[0]) / torch.linalg.matrix_norm(w))
        buf = momentum * buf + g
        direction = g + momentum * buf if nesterov else buf
        x = direction.to(torch.bfloat16)
        x = x / (torch.linalg.matrix_norm(x) + eps)
        transposed = x.shape[0] > x.shape[1]
        if transposed:
            x = x.mT
        for _ in range(ns_steps):
            a = x @ x.mT
            x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
        update = x.mT if transposed else x
        new_weights.append(w - lr * update.to(w.dtype))
        new_bufs.append(buf)
    return new_weights, new_bufs


def _problem(device: str) -> tuple[list[torch.nn.Parameter], torch.Tensor, torch.Tensor]:
    """A wide (5, 8) and a tall (9, 5) weight matrix, and a regression batch for them."""
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(5, 8, generator=gen) / math.sqrt(8)
    w2 = torch.randn(9, 5, generator=gen) / math.sqrt(5)
    x, y = torch.randn(32, 8, generator=gen), torch.randn(32, 9, generator=gen)
    params = [torch.nn.Parameter(w.to(device)) for w in (w1, w2)]
    return params, x.to(device), y.to(device)


def _grads(params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, step: int) -> list[torch.Tensor]:
    w1, w2 = params
    loss = ((torch.relu(x @ w1.T) @ w2.T - y * (1 + 0.1 * step)) ** 2).mean()
    return list(torch.autograd.grad(loss, params))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("nesterov", "renormalize"), [(True, True), (False, True), (True, False)])
def test_steps_match_the_description(device: str, nesterov: bool, renormalize: bool) -> None:
    params, x, y = _problem(device)
    hyper = dict(lr=0.05, momentum=0.6, nesterov=nesterov, ns_steps=3, eps=1e-7, renormalize=renormalize)
    opt = MuonSeed(params, **hyper)
    weights = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(w) for w in weights]
    for step in range(4):
        grads = _grads(params, x, y, step)
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        weights, bufs = _reference_step(weights, grads, bufs, **hyper)
        for p, w, buf in zip(params, weights, bufs, strict=True):
            # The buffers and bfloat16 updates depend on the gradients alone: identical. The
            # weights may differ in the last float32 bit: the optimizer subtracts lr x update
            # in one rounding (p.sub_(u, alpha=lr)), the description in two.
            assert torch.equal(opt.state[p]["momentum_buffer"], buf)
            torch.testing.assert_close(p.detach(), w, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    start = _problem(device)[0]
    for p, p0 in zip(params, start, strict=True):
        assert float((p.detach() - p0.detach()).abs().max()) > 0.01  # the steps did move the weights


def test_default_hyperparameters() -> None:
    opt = MuonSeed([torch.nn.Parameter(torch.ones(2, 3))])
    group = opt.param_groups[0]
    assert {k: group[k] for k in ("lr", "momentum", "nesterov", "ns_steps", "eps", "renormalize")} == {
        "lr": 0.01, "momentum": 0.6, "nesterov": True, "ns_steps": 3, "eps": 1e-7, "renormalize": True}


@pytest.mark.parametrize("device", DEVICES)
def test_renormalizes_every_weight_before_the_step(device: str) -> None:
    params, x, y = _problem(device)
    opt = MuonSeed(params, lr=0.0)
    for p, g in zip(params, _grads(params, x, y, 0), strict=True):
        p.grad = g
    opt.step()
    for p in params:
        assert float(torch.linalg.matrix_norm(p.detach())) == pytest.approx(math.sqrt(p.shape[0]), rel=1e-6)


def test_orthogonalize_shapes_dtype_and_transpose() -> None:
    g = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    wide = orthogonalize(g, steps=5)
    assert wide.shape == (6, 10) and wide.dtype == torch.bfloat16
    assert torch.equal(orthogonalize(g.T, steps=5), wide.T)  # a tall matrix runs on its transpose
    sv = torch.linalg.svdvals(wide.float())
    assert float(sv.min()) > 0.5 and float(sv.max()) < 1.3  # Muon's approximate U V^T


def test_resume_from_state_dict_continues_identically() -> None:
    params, x, y = _problem("cpu")
    straight = MuonSeed(params, lr=0.05)
    snapshot = None
    for step in range(5):
        if step == 2:
            buffer = io.BytesIO()
            torch.save({"weights": [p.detach().clone() for p in params],
                        "optimizer": straight.state_dict()}, buffer)
            snapshot = buffer.getvalue()
        for p, g in zip(params, _grads(params, x, y, step), strict=True):
            p.grad = g
        straight.step()

    saved = torch.load(io.BytesIO(snapshot), weights_only=True)
    resumed = [torch.nn.Parameter(w) for w in saved["weights"]]
    opt = MuonSeed(resumed, lr=0.05)
    opt.load_state_dict(saved["optimizer"])
    assert len(opt.state) == 2  # the momentum buffers came back
    for step in range(2, 5):
        for p, g in zip(resumed, _grads(resumed, x, y, step), strict=True):
            p.grad = g
        opt.step()
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_refuses_parameters_that_are_not_matrices() -> None:
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        MuonSeed(torch.nn.Linear(3, 4).parameters())  # the bias
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\)"):
        MuonSeed([torch.nn.Parameter(torch.ones(2, 3, 4))])


def test_a_weight_without_gradient_is_left_alone() -> None:
    """As the original: no renormalisation either for a weight whose gradient is None."""
    params, x, y = _problem("cpu")
    before = params[1].detach().clone()
    opt = MuonSeed(params, lr=0.05)
    params[0].grad = _grads(params, x, y, 0)[0]
    opt.step()
    assert torch.equal(params[1].detach(), before)
    assert float(torch.linalg.matrix_norm(params[0].detach())) != pytest.approx(
        float(torch.linalg.matrix_norm(_problem("cpu")[0][0])))


@torch.compile
def _original_compiled_ns(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """The original script's Newton-Schulz as it wrote it, under torch.compile."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = g.bfloat16()
    x /= x.norm() + eps
    if g.size(0) > g.size(1):
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    if g.size(0) > g.size(1):
        x = x.T
    return x


@pytest.mark.slow  # three compiles, 20-60 s on a CPU
def test_compile_gives_the_originals_compiled_updates() -> None:
    gen = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(24, 40, generator=gen))
    compiled = MuonSeed([w], lr=0.0, compile=True)
    for shape in [(24, 40), (40, 24)]:
        g = torch.randn(*shape, generator=gen)
        ours = compiled._orthogonalized(g, 3, 1e-7)
        assert torch.equal(ours, _original_compiled_ns(g))
        eager = orthogonalize(g, 3)
        rel = float((eager.float() - ours.float()).norm() / ours.float().norm())
        assert 0.005 < rel < 0.05  # what compiling changes: 1.4-1.9 % measured
