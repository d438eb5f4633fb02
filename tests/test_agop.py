"""The exact AGOP pass against per-sample autograd (torch.func), chunking, and its loss/accuracy."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev, vmap

from agop_sweep.analyze import agop
from agop_sweep.analyze.agop import jacobian_kernels
from agop_sweep.analyze.nfa import agop_from_kernel
from agop_sweep.model.mlp import ACTIVATIONS, MLP, build_model, loss_fn


def _net(d_in: int, width: int, depth: int, act: str, classes: int = 10, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    model = build_model(d_in, width, depth, classes, act).double()
    # Larger weights than the default init so that deep nets' Jacobians are not vanishing.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


def _inputs(n: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _reference_agops(model: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """(1/n) sum_i J_i^T J_i per hidden layer, J_i = df(x_i)/dh_l by per-sample autograd."""
    weights = model.hidden_weights()
    act = model.act
    readout = model.last.weight

    def above(l: int):
        def f(h: torch.Tensor) -> torch.Tensor:
            for w in weights[l:]:
                h = act(h @ w.T)
            return h @ readout.T
        return f

    agops, h = [], x
    with torch.no_grad():
        for l, w in enumerate(weights):
            jac = vmap(jacrev(above(l)))(h)  # (n, c, d_in of layer l)
            agops.append(torch.einsum("nci,ncj->ij", jac, jac) / x.shape[0])
            h = act(h @ w.T)
    return agops


def _pass(model: MLP, x: torch.Tensor, chunk_size: int, y: torch.Tensor | None = None, loss: str = "mse"):
    with torch.no_grad():
        return jacobian_kernels(
            [w.detach() for w in model.hidden_weights()], model.last.weight.detach(),
            model.act, model.act_grad, x, y, loss=loss, chunk_size=chunk_size,
        )


NETS = [
    # d_in, width, depth, act, classes, n, chunk, panel rows
    (7, 8, 1, "relu", 10, 37, 5, None),
    (12, 16, 2, "tanh", 10, 29, 8, None),
    (10, 32, 3, "gelu", 3, 41, 6, None),
    (40, 8, 4, "gelu", 10, 19, 7, None),
    (6, 64, 5, "relu", 10, 23, 10, None),
    (20, 24, 5, "tanh", 4, 33, 9, None),
    (9, 30, 3, "relu", 10, 25, 4, 7),  # several panels, the last one partial
    (13, 20, 2, "gelu", 10, 17, 6, 3),
]


@pytest.mark.parametrize(("d_in", "width", "depth", "act", "classes", "n", "chunk", "panel"), NETS)
def test_closed_form_equals_per_sample_autograd(monkeypatch, d_in, width, depth, act, classes, n, chunk,
                                                panel) -> None:
    if panel is not None:
        monkeypatch.setattr(agop, "PANEL_ROWS", panel)
    model = _net(d_in, width, depth, act, classes)
    x = _inputs(n, d_in)
    assert n % chunk != 0
    kp = _pass(model, x, chunk)
    assert kp.n == n and len(kp.kernels) == depth
    reference = _reference_agops(model, x)
    for l, (w, k, ref) in enumerate(zip(model.hidden_weights(), kp.kernels, reference, strict=True)):
        assert k.dtype == torch.float64 and k.shape == (w.shape[0], w.shape[0])
        torch.testing.assert_close(k, k.T, rtol=0, atol=0)
        got = agop_from_kernel(w.detach(), k)
        scale = float(ref.abs().max())
        assert scale > 1e-8, f"layer {l}: degenerate test net"
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6 * scale, msg=f"layer {l}")


def test_kernels_do_not_depend_on_the_chunk_size(monkeypatch) -> None:
    monkeypatch.setattr(agop, "PANEL_ROWS", 5)
    model = _net(11, 12, 3, "tanh")
    x = _inputs(26, 11)
    base = _pass(model, x, 26).kernels
    for chunk in (1, 3, 7, 25, 100):
        for k, b in zip(_pass(model, x, chunk).kernels, base, strict=True):
            torch.testing.assert_close(k, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_loss_and_accuracy_equal_a_plain_forward(loss: str) -> None:
    model = _net(10, 16, 2, "relu", seed=4)
    x = _inputs(53, 10)
    y = torch.randint(0, 10, (53,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(x)
    expected_loss = float(loss_fn(loss, logits, y))
    expected_acc = float((logits.argmax(1) == y).double().mean())
    kp = _pass(model, x, 8, y, loss=loss)
    assert kp.loss == pytest.approx(expected_loss, rel=1e-6)
    assert kp.accuracy == pytest.approx(expected_acc, abs=1e-12)
    assert 0 < expected_acc < 1  # a test that can tell a wrong count from a right one


def test_float32_pass_matches_float64() -> None:
    model = _net(12, 24, 3, "relu", seed=2)
    x = _inputs(40, 12)
    exact = _pass(model, x, 7).kernels
    m32 = _net(12, 24, 3, "relu", seed=2).float()
    with torch.no_grad():
        approx = jacobian_kernels([w.detach() for w in m32.hidden_weights()], m32.last.weight.detach(),
                                  m32.act, m32.act_grad, x.float(), chunk_size=7).kernels
    for a, e in zip(approx, exact, strict=True):
        assert a.dtype == torch.float64  # accumulated in float64 whatever the compute dtype
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))


def test_on_chunk_sees_every_chunk_start() -> None:
    model = _net(5, 8, 2, "relu")
    seen: list[int] = []
    with torch.no_grad():
        jacobian_kernels([w.detach() for w in model.hidden_weights()], model.last.weight.detach(),
                         model.act, model.act_grad, _inputs(23, 5), chunk_size=6, on_chunk=seen.append)
    assert seen == [0, 6, 12, 18]


def test_relu_kernel_of_one_layer_by_hand() -> None:
    """Depth 1: G_i = R diag(1[z_i > 0]), so K = (1/n) sum_i diag(a_i) R^T R diag(a_i)."""
    model = _net(4, 6, 1, "relu", classes=3)
    x = _inputs(15, 4)
    w, r = model.first.weight.detach(), model.last.weight.detach()
    a = ACTIVATIONS["relu"][1](x @ w.T)
    expected = sum(torch.diag(ai) @ r.T @ r @ torch.diag(ai) for ai in a) / 15
    torch.testing.assert_close(_pass(model, x, 4).kernels[0], expected, rtol=1e-12, atol=1e-14)
