"""The library API: nfa() on agop_sweep's models and on nn.Sequential models of one's own,
against independent float64 per-sample Jacobians and against the app's own results.json;
load_runs() and load_run()."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import finished_tiny_run
from omegaconf import OmegaConf
from torch import nn
from torch.func import jacrev
from torch.nn import functional as F

import agop_sweep
from agop_sweep import LayerNFA, load_model, load_run, load_runs, nfa
from agop_sweep.api import UnsupportedModelError
from agop_sweep.data.datasets import load_dataset
from agop_sweep.model.cnn import CNN
from agop_sweep.model.mlp import MLP


def _user_net() -> nn.Sequential:
    """Conv with bias and stride, nested Sequential, every kind of layer nfa() takes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=True),
        nn.LeakyReLU(0.1),
        nn.Sequential(nn.MaxPool2d(2), nn.Dropout(0.5), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.SiLU()),
        nn.AvgPool2d(2, ceil_mode=False),
        nn.Identity(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 6),
        nn.Tanh(),
        nn.Linear(6, 5, bias=True),
    ).double()


def _reference_agops(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """Per sample, jacrev of the output with respect to each hidden layer's unfolded input
    patches (Conv2d) or input (Linear), float64, summed over positions, mean over samples."""
    mods = list(net[:2]) + list(net[2]) + list(net[3:])
    weighted = [i for i, m in enumerate(mods) if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    out = []
    for i in weighted:
        m = mods[i]
        total = 0
        for xi in x:
            h = xi[None]
            for before in mods[:i]:
                h = before(h)

            def rest(z: torch.Tensor, i: int = i) -> torch.Tensor:
                for after in mods[i + 1:]:
                    z = after(z)
                return z[0]

            if isinstance(m, nn.Conv2d):
                p = F.unfold(h, m.kernel_size, padding=m.padding, stride=m.stride)[0].T  # (P, C_in k k)
                ho = (h.shape[2] + 2 * m.padding[0] - m.kernel_size[0]) // m.stride[0] + 1
                wo = (h.shape[3] + 2 * m.padding[1] - m.kernel_size[1]) // m.stride[1] + 1

                def f(p: torch.Tensor, m: nn.Conv2d = m, ho: int = ho, wo: int = wo,
                      rest=rest) -> torch.Tensor:
                    z = (p @ m.weight.reshape(m.out_channels, -1).T + m.bias).T.reshape(1, -1, ho, wo)
                    return rest(z)

                j = jacrev(f)(p)
                total = total + torch.einsum("csi,csj->ij", j, j)
            else:
                j = jacrev(lambda v, m=m, rest=rest: rest(m(v)))(h)[:, 0]
                total = total + j.T @ j
        out.append(total / len(x))
    return out


def test_own_sequential_equals_independent_jacobians() -> None:
    net = _user_net().train()
    x = torch.rand(6, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    layers = nfa(net, x, chunk_size=4)
    assert net.training  # the training flag is restored
    assert [(e.layer, e.kind) for e in layers] == [(0, "conv"), (1, "conv"), (2, "linear")]
    assert [e.entry.get("positions") for e in layers] == [144, 9, None]
    net.eval()
    for got, expected in zip(layers, _reference_agops(net, x), strict=True):
        assert isinstance(got, LayerNFA) and got.agop.dtype == torch.float64
        error = torch.linalg.matrix_norm(got.agop - expected)
        assert error <= 1e-8 * torch.linalg.matrix_norm(expected), got.layer
        assert got.metrics["delta_cos_agop"] is None and got.weight_change is None  # no init
        assert got.metrics["raw_cos_agop"] is not None


def test_init_defines_the_delta_metrics_and_weight_change() -> None:
    net0 = _user_net()
    net = _user_net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = torch.rand(5, 2, 12, 12, dtype=torch.float64)
    layers = nfa(net, x, init=net0)
    for e in layers:
        assert all(v is not None for v in e.metrics.values()), e.metrics
        w0 = [m for m in net0.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][e.layer].weight.detach()
        w = e.weight
        expected = float(torch.linalg.norm(w - w0.reshape(w.shape)) / torch.linalg.norm(w0))
        assert e.weight_change == pytest.approx(expected, rel=1e-12)
    with pytest.raises(UnsupportedModelError, match="not the same architecture"):
        nfa(net, x, init=nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2)).double())


def test_cnn_and_mlp_fast_passes_equal_the_generic_one() -> None:
    torch.manual_seed(2)
    cnn = CNN((2, 8, 8), [3, 4], 5, "relu", pool="avg", fc=[6]).double()
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AvgPool2d(2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6, bias=False), nn.ReLU(),
                        nn.Linear(6, 5, bias=False)).double()
    with torch.no_grad():
        seq[0].weight.copy_(cnn.convs[0].filters)
        seq[3].weight.copy_(cnn.convs[1].filters)
        seq[8].weight.copy_(cnn.fcs[0].weight)
        seq[10].weight.copy_(cnn.last.weight)
    x = torch.rand(7, 2, 8, 8, dtype=torch.float64)
    for a, b in zip(nfa(cnn, x), nfa(seq, x), strict=True):
        assert torch.allclose(a.kernel, b.kernel, rtol=1e-12, atol=1e-15)
        undefined = [k for k, v in a.metrics.items() if v is None]
        assert undefined == [k for k, v in b.metrics.items() if v is None]
        defined = {k: v for k, v in a.metrics.items() if v is not None}
        assert defined == pytest.approx({k: b.metrics[k] for k in defined}, rel=1e-9)
    torch.manual_seed(3)
    mlp = MLP(12, 8, 2, 4, "gelu").double()
    seq = nn.Sequential(nn.Flatten(), mlp.first, nn.GELU(), mlp.middle[0], nn.GELU(), mlp.last)
    x = torch.rand(9, 3, 2, 2, dtype=torch.float64)
    for a, b in zip(nfa(mlp, x), nfa(seq, x), strict=True):
        assert torch.allclose(a.kernel, b.kernel, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize(("net", "named"), [
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)), "module 1 (BatchNorm1d)"),
    (nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Softmax(1)), nn.Linear(4, 2)), "module 0.1 (Softmax)"),
    (nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 2)), "module 0 "),
    (nn.Sequential(nn.Linear(4, 2)), "needs a hidden layer"),
    (nn.GRU(4, 2), "got GRU"),
])
def test_a_model_it_cannot_take_is_named_in_one_line(net: nn.Module, named: str) -> None:
    with pytest.raises(UnsupportedModelError) as err:
        nfa(net, torch.rand(3, 2, 4, 4) if isinstance(net[0] if isinstance(net, nn.Sequential) else net,
                                                      nn.Conv2d) else torch.rand(3, 4))
    assert named in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_tiny_run(tmp_path_factory.mktemp("api"))


def test_nfa_of_a_checkpoint_equals_the_apps_results(tiny_run: Path) -> None:
    res = json.loads((tiny_run / "results.json").read_text())
    data = load_dataset(OmegaConf.create(res["config"]["data"]), torch.device("cpu"))
    last = max(a["epoch"] for a in res["analysis"])
    model = load_model(tiny_run / res["checkpoints"][str(last)])
    init = load_model(tiny_run / res["checkpoints"]["0"])
    layers = nfa(model, data.x_train, init=init)
    recorded = next(a for a in res["analysis"] if a["epoch"] == last)["layers"]
    assert len(layers) == len(recorded)
    for got, entry in zip(layers, recorded, strict=True):
        assert got.metrics == pytest.approx(entry["metrics"], rel=1e-9, abs=1e-12)
        for key in ("weight_change", "alpha_star", "alpha_corr"):
            assert got.entry[key] == pytest.approx(entry[key], rel=1e-9), key
        assert (got.entry["kind"], got.entry["shape"]) == (entry["kind"], entry["shape"])


def test_load_runs_is_aggregates_tidy_table_and_load_run_the_record(tiny_run: Path) -> None:
    df = load_runs(tiny_run.parent)
    assert isinstance(df, pd.DataFrame)
    assert {"run", "optimizer", "epoch", "layer", "metric", "value"} <= set(df.columns)
    res = json.loads((tiny_run / "results.json").read_text())
    last = res["analysis"][-1]
    row = df[(df.epoch == last["epoch"]) & (df.layer == 1) & (df.metric == "delta_cos_agop")]
    assert row["value"].item() == pytest.approx(last["layers"][1]["metrics"]["delta_cos_agop"])
    record = load_run(tiny_run)
    assert record.status == "completed"
    assert load_run(tiny_run / "results.json").document() == record.document()
    with pytest.raises(Exception, match="no runs"):
        load_runs(tiny_run / "models")
    assert agop_sweep.nfa is nfa


def test_the_issues_own_sequential_on_64_cifar_sized_images() -> None:
    """Biases on, conv -> relu -> avg pool -> flatten -> linear -> silu -> linear, 3 x 32 x 32."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 16 * 16, 32), nn.SiLU(), nn.Linear(32, 10)).double()
    x = torch.rand(64, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    layers = nfa(net, x, chunk_size=16)
    assert [(e.kind, tuple(e.agop.shape)) for e in layers] == [("conv", (27, 27)), ("linear", (2048, 2048))]
    conv = net[0]
    expected = torch.zeros(27, 27, dtype=torch.float64)
    for xi in x:  # jacrev with respect to the 1024 unfolded 3 x 3 x 3 patches of one image
        patches = F.unfold(xi[None], 3, padding=1)[0].T

        def f(p: torch.Tensor) -> torch.Tensor:
            z = (p @ conv.weight.reshape(8, -1).T + conv.bias).T.reshape(1, 8, 32, 32)
            return net[1:](z)[0]

        j = jacrev(f)(patches)  # (10, 1024, 27)
        expected += torch.einsum("csi,csj->ij", j, j).detach()
    expected /= len(x)
    assert torch.linalg.matrix_norm(layers[0].agop - expected) <= 1e-10 * torch.linalg.matrix_norm(expected)
