"""Layer-0 features: effective ranks, the image layout of input-space vectors, features.npz
round trips, and the saved numbers against an independent autograd computation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import composing

from agop_sweep.analyze.layers import Analysis
from agop_sweep.analyze.nfa import effective_rank, gram, nfm_spectrum
from agop_sweep.run.device import Placement
from agop_sweep.store import checkpoint as ckpt
from agop_sweep.store.features import FeatureLog, load_features, nearest_epochs, orient, to_image


def spectrum_of_gram(x: torch.Tensor):
    return nfm_spectrum(x, gram(x), 1)


# -- effective rank ------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 7, 64])
def test_effective_rank_of_identity_is_d(d: int) -> None:
    assert effective_rank(torch.ones(d, dtype=torch.float64)) == pytest.approx(d)
    # Through the Gram route too: I = I^T I.
    assert spectrum_of_gram(torch.eye(d, dtype=torch.float64)).effective_rank() == pytest.approx(d)


@pytest.mark.parametrize(("rows", "cols"), [(5, 12), (12, 5), (1, 30)])
def test_effective_rank_of_rank_one_is_one(rows: int, cols: int) -> None:
    """Both branches of nfm_spectrum (rows < cols and rows >= cols) for B = u v^T."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(rows, 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, cols, generator=g, dtype=torch.float64)
    s = spectrum_of_gram(u @ v)
    assert s.effective_rank() == pytest.approx(1.0, abs=1e-9)
    assert s.dim == cols


def test_effective_rank_between_and_undefined() -> None:
    # Two equal eigenvalues and zeros: exactly 2; unequal ones: strictly between 1 and 2.
    assert effective_rank(torch.tensor([3.0, 3.0, 0.0, 0.0], dtype=torch.float64)) == pytest.approx(2.0)
    assert 1.0 < effective_rank(torch.tensor([3.0, 1.0], dtype=torch.float64)) < 2.0
    assert effective_rank(torch.zeros(4, dtype=torch.float64)) is None


# -- image layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("c", "r", "k"), [(0, 0, 0), (1, 3, 7), (2, 31, 0), (2, 5, 31)])
def test_to_image_follows_channel_row_column_order(c: int, r: int, k: int) -> None:
    """README: an image is flattened in (channel, row, column) order, so entry
    c*H*W + r*W + k is pixel (r, k) of channel c."""
    shape = (3, 32, 32)
    v = np.zeros(3 * 32 * 32)
    v[c * 32 * 32 + r * 32 + k] = 1.0
    per_channel = to_image(v, shape, per_channel=True)
    assert per_channel.shape == shape
    assert list(zip(*np.nonzero(per_channel), strict=True)) == [(c, r, k)]
    summed = to_image(v, shape)
    assert summed.shape == (32, 32)
    assert list(zip(*np.nonzero(summed), strict=True)) == [(r, k)]


def test_to_image_inverts_torch_flattening() -> None:
    """The data flatten an image tensor (C, H, W) with reshape(-1) (as ToTensor + flatten)."""
    img = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4) ** 1.5
    flat = img.reshape(-1).numpy()
    np.testing.assert_array_equal(to_image(flat, (2, 3, 4), per_channel=True), img.numpy())
    np.testing.assert_allclose(to_image(flat, (2, 3, 4)), img.sum(0).numpy())


def test_to_image_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="not an image of shape"):
        to_image(np.zeros(65), (1, 8, 8))


def test_orient_and_nearest_epochs() -> None:
    np.testing.assert_array_equal(orient(np.array([0.1, -0.9, 0.3])), [-0.1, 0.9, -0.3])
    np.testing.assert_array_equal(orient(np.array([0.1, 0.9, -0.3])), [0.1, 0.9, -0.3])
    paper = [*range(21), 40, 60, 80, 100]
    assert nearest_epochs(paper, [0, 20, 100]) == [0, 20, 100]
    assert nearest_epochs([0, 1, 2, 3], [0, 20, 3]) == [0, 3]  # repeats dropped
    assert nearest_epochs([0, 10, 30], [0, 20, 30]) == [0, 10, 30]  # a tie goes to the earlier
    assert nearest_epochs([], [0]) == []


# -- features.npz ----------------------------------------------------------------------------------
def _fake_analysis(epoch: int, d: int, rng: np.random.Generator, n_layers: int = 3) -> Analysis:
    layer0 = {k: rng.random(d) for k in ("nfm_diag", "nfm_delta_diag", "agop_diag")}
    layer0 |= {k: rng.standard_normal((4, d)).astype(np.float32)
               for k in ("nfm_eigvecs", "agop_eigvecs", "nfm_delta_eigvecs")}
    eigvals = {k: [np.sort(rng.random(d))[::-1] for _ in range(n_layers)] for k in ("agop", "nfm_raw")}
    return Analysis({"epoch": epoch}, 0.0, 0.0, layer0, eigvals)


def test_features_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    log = FeatureLog()
    analyses = {e: _fake_analysis(e, 12, rng) for e in (0, 2, 1)}
    for e, a in analyses.items():
        log.add(e, a)
    analyses[1] = _fake_analysis(1, 12, rng)
    log.add(1, analyses[1])  # a re-analysis replaces the epoch
    assert len(log) == 3
    log.save(tmp_path, (3, 2, 2))
    z = load_features(tmp_path / "features.npz")
    np.testing.assert_array_equal(z["epochs"], [0, 1, 2])
    np.testing.assert_array_equal(z["image_shape"], [3, 2, 2])
    for i, e in enumerate((0, 1, 2)):
        for k in ("nfm_diag", "nfm_delta_diag", "agop_diag"):
            np.testing.assert_allclose(z[k][i], analyses[e].layer0[k], rtol=1e-6)
    # Eigenvectors and spectra come from the last analysed epoch.
    assert int(z["eigvec_epoch"]) == 2
    for k in ("nfm_eigvecs", "agop_eigvecs", "nfm_delta_eigvecs"):  # any *_eigvecs is kept
        np.testing.assert_array_equal(z[k], analyses[2].layer0[k])
    for l in range(3):
        np.testing.assert_array_equal(z[f"eigvals_nfm_{l}"], analyses[2].eigvals["nfm_raw"][l])
        np.testing.assert_array_equal(z[f"eigvals_agop_{l}"], analyses[2].eigvals["agop"][l])
    # The resumable state (to_dict / from_dict) gives back the same file contents.
    again = FeatureLog.from_dict(log.to_dict()).arrays((3, 2, 2))
    assert sorted(again) == sorted(z)
    for k, v in z.items():
        np.testing.assert_array_equal(again[k], v)


def test_empty_log_writes_nothing(tmp_path: Path) -> None:
    FeatureLog().save(tmp_path, (1, 8, 8))
    assert not (tmp_path / "features.npz").exists()
    assert len(FeatureLog.from_dict({})) == 0


# -- the numbers of a real run ---------------------------------------------------------------------
@pytest.fixture
def tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, object]]:
    from agop_sweep.figures import run as figures_run
    from agop_sweep.run.trainer import Trainer

    monkeypatch.setattr(figures_run, "save_run_figures", lambda *a, **k: None)  # figures: test_plots
    with composing() as compose:
        cfg = compose(
            "data=synthetic", "data.n_train=96", "data.n_val=16", "data.n_features=48",
            "data.image_shape=[3,4,4]", "model.width=12", "model.depth=2", "optimizer=adam",
            "schedule=smoke", "trainer.precision=fp32", "trainer.plots=end",
        )
    Trainer(cfg, tmp_path, Placement("cpu", torch.get_num_threads())).run()  # a fresh dir: no claim needed
    yield tmp_path, cfg


def test_saved_features_match_autograd(tiny_run) -> None:
    """features.npz against an independent computation from the checkpoints: diag(W^T W),
    diag((W-W0)^T (W-W0)) and diag(AGOP) with AGOP = mean_i J_i^T J_i, J_i = d f(x_i) / d x_i
    by autograd over all training samples."""
    from agop_sweep.data.datasets import load_dataset
    from agop_sweep.model.mlp import build_model

    run_dir, cfg = tiny_run
    z = load_features(run_dir / "features.npz")
    np.testing.assert_array_equal(z["epochs"], [0, 1, 2, 3])
    data = load_dataset(cfg.data, torch.device("cpu"))
    x = data.x_train.flatten(1).double()
    states = {}
    for path in (run_dir / ckpt.MODELS_DIR).glob("model_epoch_*.pth"):
        state = ckpt.load(path)
        states[state["epoch"]] = state["state_dict"]
    w0 = states[0]["first.weight"].double()
    for i, epoch in enumerate(z["epochs"]):
        model = build_model(48, 12, 2, 10, "relu").double().requires_grad_(False)
        model.load_state_dict({k: v.double() for k, v in states[int(epoch)].items()})

        def f(xi: torch.Tensor, model: torch.nn.Module = model) -> torch.Tensor:
            return model(xi[None])[0]

        jac = torch.func.vmap(torch.func.jacrev(f))(x)  # (n, c, d)
        agop = torch.einsum("ncd,nce->de", jac, jac) / x.shape[0]
        w = model.first.weight.detach()
        np.testing.assert_allclose(z["agop_diag"][i], torch.diagonal(agop).numpy(), rtol=1e-4, atol=1e-12)
        np.testing.assert_allclose(z["nfm_diag"][i], (w * w).sum(0).numpy(), rtol=1e-5)
        np.testing.assert_allclose(z["nfm_delta_diag"][i], ((w - w0) ** 2).sum(0).numpy(), rtol=1e-4,
                                   atol=1e-12)
        if i == len(z["epochs"]) - 1:
            # The top AGOP eigenvector, up to sign, and the spectrum of layer 0.
            evals, evecs = torch.linalg.eigh(agop)
            top = evecs[:, -1].numpy()
            got = z["agop_eigvecs"][0]
            assert abs(float(got @ top)) == pytest.approx(1.0, abs=1e-4)
            np.testing.assert_allclose(np.sort(z["eigvals_agop_0"])[::-1][:5],
                                       evals.flip(0)[:5].numpy(), rtol=1e-4)
