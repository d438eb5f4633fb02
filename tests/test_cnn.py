"""The conv net and its convolutional NFA: the closed-form patch AGOP against an independent
float64 computation (per-sample jacrev with respect to the unfolded patches), the model, Muon
on filter banks, load_model, the config rules, and a real CLI run checked number by number."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_svhn_files, one_line_message, run_cli
from conv_reference import patch_agop
from omegaconf import OmegaConf
from torch import nn
from torch.func import jacrev

from agop_sweep import load_model
from agop_sweep.analyze.conv import conv_kernels
from agop_sweep.analyze.names import ALPHAS, METRICS
from agop_sweep.config import ConfigError, validate
from agop_sweep.data.datasets import load_dataset
from agop_sweep.model.cnn import CNN, FilterBank
from agop_sweep.model.optim import build_optimizer

# (pool, head, stride, kernel, act, fc): padding (k // 2), stride 2, every pooling, both heads,
# fc layers and three activations; 11 x 11 inputs leave odd sizes for the poolings.
CASES = [
    ("max", "gap", 1, 3, "relu", []),
    ("avg", "flatten", 2, 3, "tanh", [6]),
    ("none", "gap", 1, 3, "gelu", [5, 4]),
    ("max", "flatten", 1, 5, "relu", [7]),
    ("avg", "gap", 2, 1, "gelu", []),
]


def _cnn(pool: str, head: str, stride: int, kernel: int, act: str, fc: list[int], seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    net = CNN((2, 11, 11), [3, 4], 5, act, kernel=kernel, stride=stride, pool=pool, fc=fc, head=head)
    return net.double()


@pytest.mark.parametrize(("pool", "head", "stride", "kernel", "act", "fc"), CASES)
def test_closed_form_equals_the_patch_jacobians(pool, head, stride, kernel, act, fc) -> None:
    model = _cnn(pool, head, stride, kernel, act, fc)
    x = torch.rand(7, 2, 11, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kp = conv_kernels(model, x, chunk_size=3)  # 3 chunks, the last one short
    assert len(kp.kernels) == 2 + len(fc)
    with torch.no_grad():
        for layer, (w, k) in enumerate(zip(model.hidden_weights(), kp.kernels, strict=True)):
            agop = w.T @ k @ w
            expected = patch_agop(model, x, layer)
            error = torch.linalg.matrix_norm(agop - expected)
            assert error <= 1e-8 * torch.linalg.matrix_norm(expected), layer


def test_loss_and_accuracy_come_from_the_same_forward() -> None:
    model = _cnn("max", "gap", 1, 3, "relu", [])
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(9, 2, 11, 11, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 5, (9,), generator=gen)
    kp = conv_kernels(model, x, y, loss="ce", chunk_size=4)
    with torch.no_grad():
        logits = model(x)
    # The loss is summed from float32 logits, as the MLP pass and training do.
    assert kp.loss == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert kp.accuracy == float((logits.argmax(1) == y).double().mean())


def test_filter_bank_is_conv2d_with_its_init_and_output() -> None:
    torch.manual_seed(3)
    bank = FilterBank(3, 5, 3, stride=2)
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False)
    assert torch.equal(bank.filters, conv.weight)
    x = torch.rand(2, 3, 9, 9)
    assert torch.allclose(bank(x), conv(x), atol=1e-6)
    assert bank.weight.shape == (5, 27) and bank.weight.ndim == 2  # what Muon orthogonalises


def test_layers_in_forward_order_with_kinds_shapes_and_positions() -> None:
    model = CNN((3, 32, 32), [4, 8], 10, stride=1, pool="max", fc=[16], head="flatten")
    assert [info.entry() for info in model.layer_infos()] == [
        {"kind": "conv", "shape": [4, 27], "positions": 32 * 32},
        {"kind": "conv", "shape": [8, 36], "positions": 16 * 16},
        {"kind": "linear", "shape": [16, 8 * 8 * 8]},
    ]
    assert model.first is model.convs[0] and model.middle == [model.convs[1], model.fcs[0]]
    flat = torch.rand(2, 3 * 32 * 32)
    assert torch.equal(model(flat), model(flat.view(2, 3, 32, 32)))


@pytest.mark.parametrize("scope", ["all", "middle"])
def test_muon_orthogonalises_every_filter_bank_as_a_matrix(compose_config, scope: str) -> None:
    cfg = compose_config("optimizer=muon", f"optimizer.scope={scope}", "model=cnn", "model.channels=[4,8]",
                         "model.fc=[6]", "optimizer.ns_dtype=fp32")
    model = CNN((1, 8, 8), [4, 8], 10, fc=[6])
    opt = build_optimizer(cfg.optimizer, model)
    shapes = {(4, 9), (8, 36), (6, 8), (10, 6)} if scope == "all" else {(8, 36), (6, 8)}
    assert set(opt.orthogonalized_shapes()) == shapes
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.rand(5, 1, 8, 8)).square().sum().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_muon_seed_steps_a_cnn(compose_config) -> None:
    cfg = compose_config("optimizer=muon_seed", "model=cnn", "model.channels=[4]")
    model = CNN((1, 8, 8), [4], 10)
    opt = build_optimizer(cfg.optimizer, model)
    before = model.convs[0].weight.detach().clone()
    model(torch.rand(5, 1, 8, 8)).square().sum().backward()
    opt.step()
    assert not torch.equal(before, model.convs[0].weight)


@pytest.mark.parametrize(("overrides", "key"), [
    (["model.channels=[]"], "model.channels"),
    (["model.channels=[4,0]"], "model.channels"),
    (["model.fc=[-1]"], "model.fc"),
    (["model.kernel=0"], "model.kernel"),
    (["model.stride=0"], "model.stride"),
    (["model.init=seed"], "model.init"),
    (["model.init=shared_middle"], "model.init"),
    (["data.order=seed"], "data.order"),
    (["model.channels=[4,4,4,4]"], "model.channels"),  # 8 -> 4 -> 2 -> 1 -> 0 pixels
    (["optimizer=muon", "optimizer.scope=middle", "model.channels=[4]"], "optimizer.scope"),
])
def test_every_bad_cnn_setting_is_one_line(compose_config, overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_config("data=digits", "model=cnn", *overrides))
    assert one_line_message(err).startswith(f"Invalid config: {key}=")


def test_the_default_cnn_validates_on_svhn_and_digits(compose_config) -> None:
    cfg = compose_config("model=cnn")
    validate(cfg)
    assert list(cfg.model.channels) == [64, 128, 256] and cfg.model.kernel == 3 and cfg.model.head == "gap"
    validate(compose_config("model=cnn", "data=digits"))  # 8 x 8 -> 4 -> 2 -> 1 pixel
    with pytest.raises(ConfigError, match=r"^Invalid config: model.channels=\[64, 128, 256, 8\]: "
                       r"stage 3 leaves no pixels of the \[1, 8, 8\] inputs"):
        validate(compose_config("model=cnn", "data=digits", "model.channels=[64,128,256,8]"))


# -- the real CLI, every number against an independent float64 computation --------------------------


def _pre_activation_kernel(model: CNN, x: torch.Tensor, layer: int) -> torch.Tensor:
    """(1/n) sum_i sum_s G_is^T G_is with G_is = df(x_i)/dz_s by per-sample jacrev (float64)."""
    from conv_reference import _input_of, _rest

    conv = model.convs[layer]
    total = torch.zeros(conv.c_out, conv.c_out, dtype=torch.float64)
    for xi in x:
        z = conv(_input_of(model, layer, xi)[None])[0]
        g = jacrev(lambda v: _rest(model, layer, v))(z)  # (c, C_out, H, W)
        g = g.permute(0, 2, 3, 1).reshape(-1, conv.c_out)
        total += g.T @ g
    return total / len(x)


def _corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    a, b = a.ravel(), b.ravel()
    if kind == "pearson":
        a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _power(vals: np.ndarray, vecs: np.ndarray, a: float) -> np.ndarray:
    keep = vals >= 1e-6 * vals.max()  # README: eigenvalues below 1e-6 of the largest count as 0
    return (vecs[:, keep] * vals[keep] ** a) @ vecs[:, keep].T


def _effective_rank(vals: np.ndarray) -> float:
    p = np.clip(vals, 0, None)
    p = p[p > 1e-12 * p.max()] / p.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _expected_layer(f: np.ndarray, f0: np.ndarray, agop: np.ndarray, kernel: np.ndarray, epoch: int) -> dict:
    vals, vecs = np.linalg.eigh(agop)
    vals = np.where(vals > 1e-9 * vals.max(), vals, 0.0)  # the PSD AGOP's rounding noise
    nfms = {"raw": f.T @ f}
    if epoch:
        d = f - f0
        nfms["delta"] = d.T @ d
    targets = {"agop": agop, "sqrt": _power(vals, vecs, 0.5)}
    metrics = {f"{n}_{c}_{t}": _corr(nfm, targets[t], c) for n, nfm in nfms.items()
               for c in ("cos", "pearson") for t in targets}
    if epoch:
        cagop = (f - f0).T @ kernel @ (f - f0)
        metrics.update({f"delta_{c}_cagop": _corr(nfms["delta"], cagop, c) for c in ("cos", "pearson")})
    alphas = {}
    for n, nfm in nfms.items():
        for c in ("cos", "pearson"):
            corrs = [_corr(nfm, _power(vals, vecs, a), c) for a in ALPHAS]
            best = int(np.argmax(corrs))
            alphas[f"{n}_{c}"] = (ALPHAS[best], corrs[best])
    return {"metrics": metrics, "alphas": alphas,
            "weight_change": float(np.linalg.norm(f - f0) / np.linalg.norm(f0)),
            "agop_effective_rank": _effective_rank(np.linalg.eigvalsh(agop)),
            "nfm_effective_rank": _effective_rank(np.linalg.eigvalsh(nfms["raw"]))}


@pytest.fixture(scope="module")
def cnn_cli_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Muon CNN run (channels [4, 8], fc [6]) on SVHN-format files, through the CLI."""
    root = tmp_path_factory.mktemp("cnn")
    make_svhn_files(root / "svhn", n_train=24, n_test=8)
    proc = run_cli("data=svhn", f"data.root={root / 'svhn'}", "data.download=false", "data.verify=false",
                   "model=cnn", "model.channels=[4,8]", "model.fc=[6]", "optimizer=muon", "optimizer.lr=0.05",
                   "optimizer.ns_dtype=fp32", "schedule=smoke", "trainer.plots=end", "device=cpu",
                   f"hydra.run.dir={root / 'run'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def test_cli_run_equals_an_independent_float64_patch_computation(cnn_cli_run: Path) -> None:
    res = json.loads((cnn_cli_run / "results.json").read_text())
    assert res["status"] == "completed" and res["run"]["model"] == "cnn"
    data = load_dataset(OmegaConf.create(res["config"]["data"]), torch.device("cpu"))
    assert tuple(data.x_train.shape) == (24, 3, 32, 32)
    x = data.x_train.double()
    checked = 0
    f0 = None
    last = max(a["epoch"] for a in res["analysis"])
    for entry in res["analysis"]:
        epoch = entry["epoch"]
        if epoch not in (0, last):  # the reference is per-sample autograd: two epochs suffice
            continue
        model = load_model(cnn_cli_run / res["checkpoints"][str(epoch)]).double()
        weights = [w.detach().numpy() for w in model.hidden_weights()]
        f0 = weights if epoch == 0 else f0
        assert [layer["kind"] for layer in entry["layers"]] == ["conv", "conv", "linear"]
        assert [layer.get("positions") for layer in entry["layers"]] == [32 * 32, 16 * 16, None]
        for l in (0, 1):  # the conv layers
            layer = entry["layers"][l]
            agop = patch_agop(model, x, l).detach().numpy()
            kernel = _pre_activation_kernel(model, x, l).detach().numpy()
            exp = _expected_layer(weights[l], f0[l], agop, kernel, epoch)
            assert layer["shape"] == list(weights[l].shape)
            assert set(layer["metrics"]) == set(METRICS)
            for name, value in layer["metrics"].items():
                if name not in exp["metrics"]:
                    assert value is None and epoch == 0, name
                    continue
                assert value == pytest.approx(exp["metrics"][name], abs=1e-6), (epoch, l, name)
            for kind, (a_star, a_corr) in exp["alphas"].items():
                got = layer["alphas"][kind]
                assert got["alpha_corr"] == pytest.approx(a_corr, abs=1e-6), (epoch, l, kind)
                assert math.isclose(got["alpha_star"], a_star) or got["alpha_corr"] == pytest.approx(
                    a_corr, abs=1e-9), (epoch, l, kind)  # a tie on the grid may pick a neighbour
            if epoch:
                assert layer["weight_change"] == pytest.approx(exp["weight_change"], rel=1e-9)
            spectra = layer["spectra"]
            assert spectra["agop"]["effective_rank"] == pytest.approx(exp["agop_effective_rank"], rel=1e-6)
            assert spectra["nfm_raw"]["effective_rank"] == pytest.approx(exp["nfm_effective_rank"], rel=1e-6)
            checked += 1
    assert checked == 4


def test_cli_run_files_figures_and_checkpoints(cnn_cli_run: Path) -> None:
    res = json.loads((cnn_cli_run / "results.json").read_text())
    names = sorted(p.name for p in (cnn_cli_run / "models").iterdir())
    epochs = res["config"]["schedule"]["checkpoints"]
    assert names == [f"model_epoch_{e}:svhn:cnn:4-8:act:relu:nn.pth" for e in epochs]
    features = np.load(cnn_cli_run / "features.npz")
    assert features["image_shape"].tolist() == [3, 3, 3]  # layer 0's inputs are 3 x 3 RGB patches
    assert features["agop_eigvecs"].shape[1] == 27
    assert (cnn_cli_run / "plots" / "features.png").stat().st_size > 10_000


def test_load_model_rebuilds_any_checkpoint_on_the_cpu_in_eval_mode(cnn_cli_run: Path) -> None:
    res = json.loads((cnn_cli_run / "results.json").read_text())
    last = res["checkpoints"][str(res["config"]["schedule"]["epochs"])]
    model = load_model(cnn_cli_run / last)
    assert isinstance(model, CNN) and not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    state = torch.load(cnn_cli_run / last, weights_only=True)["state_dict"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    resumed = load_model(cnn_cli_run / "state.pt")  # the run's state: the last epoch's weights
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(Exception, match="holds no model weights"):
        torch.save({"foo": 1}, cnn_cli_run.parent / "other.pth")
        load_model(cnn_cli_run.parent / "other.pth")


def test_checkpoint_names_of_a_cnn_in_both_kinds() -> None:
    from agop_sweep.store.checkpoint import PORTABLE_NAMES, checkpoint_epoch, model_checkpoint_name, styled

    name = model_checkpoint_name(7, "svhn", {"name": "cnn", "act": "gelu", "channels": [64, 128]})
    assert name == "model_epoch_7:svhn:cnn:64-128:act:gelu:nn.pth"
    assert styled(name, PORTABLE_NAMES) == "model_epoch_7-svhn-cnn64-128-gelu.pth"
    assert checkpoint_epoch(name) == checkpoint_epoch(styled(name, PORTABLE_NAMES)) == 7
    mlp = model_checkpoint_name(3, "digits", {"name": "mlp", "act": "relu", "width": 16, "depth": 2})
    assert mlp == "model_epoch_3:digits:width:16:depth:2:act:relu:nn.pth"
