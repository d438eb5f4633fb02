"""NFA mathematics: AGOP from its kernel, PSD square roots and spectra, effective rank,
correlations, the eight metric variants of one layer, the centered NFA, weight change and
the best AGOP exponent alpha_star."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.func import jacrev, vmap

from agop_sweep.analyze.names import ALPHAS, CENTERED_VARIANTS, METRICS, VARIANTS, metric_kinds
from agop_sweep.analyze.nfa import (
    Spectrum,
    agop_from_kernel,
    compare_layer,
    correlation,
    denoise_psd_eigenvalues,
    effective_rank,
    gram,
    nfm_spectrum,
    top_eigvec_cosine,
)
from agop_sweep.store.record import finite_or_none


def spectrum_of_gram(x: torch.Tensor) -> Spectrum:
    return nfm_spectrum(x, gram(x), 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _psd(d: int, rank: int | None = None, seed: int = 0) -> torch.Tensor:
    b = torch.randn(rank or d, d, dtype=torch.float64, generator=_gen(seed))
    return b.T @ b / d


def _sqrt_by_eigh(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_agop_from_kernel_is_wt_k_w() -> None:
    w = torch.randn(5, 3, dtype=torch.float64, generator=_gen(1))
    k = _psd(5)
    np.testing.assert_allclose(agop_from_kernel(w, k).numpy(), w.numpy().T @ k.numpy() @ w.numpy(),
                               rtol=1e-12)


def test_readout_agop_is_wt_w() -> None:
    """f = R h: every sample's Jacobian is R, so the kernel is the identity and AGOP = R^T R."""
    r = torch.randn(10, 16, dtype=torch.float64, generator=_gen(2))
    h = torch.randn(30, 16, dtype=torch.float64, generator=_gen(3))
    jac = vmap(jacrev(lambda v: r @ v))(h)
    assert torch.equal(jac, r.expand(30, 10, 16))
    per_sample = torch.einsum("nci,ncj->ij", jac, jac) / 30
    closed = agop_from_kernel(r, torch.eye(10, dtype=torch.float64))
    assert torch.equal(closed, r.T @ r)
    torch.testing.assert_close(per_sample, closed, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("d_out", "d_in"), [(8, 5), (6, 6), (4, 9), (1, 7)])
@pytest.mark.parametrize("top", [1, 3])
def test_agop_spectrum_is_the_agops(d_out: int, d_in: int, top: int) -> None:
    """Both routes: an eigh of W^T K W (d_out >= d_in) and of L^T K L in W's row space
    (d_out < d_in): descending eigenvalues of the AGOP, orthonormal leading eigenvectors."""
    w = torch.randn(d_out, d_in, dtype=torch.float64, generator=_gen(d_out * 10 + d_in))
    k = _psd(d_out, seed=d_in)
    agop = agop_from_kernel(w, k)
    spectrum = compare_layer(w, w, k, top=top).spectra["agop"]
    values = spectrum.values
    assert spectrum.dim == d_in and values.numel() == min(d_out, d_in)
    assert bool((values[:-1] >= values[1:]).all())
    expected = np.sort(np.linalg.eigvalsh(agop.numpy()))[::-1][: values.numel()]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-9, atol=1e-10)
    vecs = spectrum.vectors
    t = min(top, values.numel())
    assert vecs.shape == (d_in, t)
    torch.testing.assert_close(vecs.T @ vecs, torch.eye(t, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(agop @ vecs, vecs * values[:t], atol=1e-9 * float(values[0]), rtol=0)


def test_effective_rank() -> None:
    assert spectrum_of_gram(torch.eye(7, dtype=torch.float64)).effective_rank() == pytest.approx(7)
    u = torch.randn(1, 9, dtype=torch.float64, generator=_gen(4))
    assert spectrum_of_gram(u).effective_rank() == pytest.approx(1)  # rank one (low-rank route)
    assert spectrum_of_gram(torch.cat([u, 3 * u])).effective_rank() == pytest.approx(1)
    assert effective_rank(torch.tensor([2.0, 2.0, 0.0, 0.0])) == pytest.approx(2)
    p = np.array([3.0, 1.0]) / 4
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert effective_rank(torch.zeros(4)) is None


def test_shares_and_top_eigvec_cosine() -> None:
    a = Spectrum(torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.eye(4), 4)
    assert a.shares(2) == pytest.approx([0.4, 0.3])
    assert a.shares(6) == pytest.approx([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    v = torch.tensor([[0.6], [-0.8], [0.0], [0.0]])
    b = Spectrum(torch.tensor([5.0]), v, 4)
    assert top_eigvec_cosine(a, b) == pytest.approx(0.6)
    flipped = Spectrum(torch.tensor([5.0]), -v, 4)
    assert top_eigvec_cosine(a, flipped) == pytest.approx(0.6)  # sign-free
    zero = Spectrum(torch.tensor([0.0]), v, 4)
    assert top_eigvec_cosine(a, zero) is None


def test_correlations_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    b = torch.tensor([[4.0, 3.0], [2.0, 1.0]], dtype=torch.float64)
    assert correlation(a, b, "cos") == pytest.approx(20 / 30)  # (4+6+6+4) / (sqrt 30)^2
    assert correlation(a, b, "pearson") == pytest.approx(-1.0)
    eye, ones = torch.eye(2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.float64)
    assert correlation(eye, ones, "cos") == pytest.approx(1 / math.sqrt(2))
    assert correlation(eye, ones, "pearson") is None  # a constant matrix has no spread
    c = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # pearson by hand: a - 2.5 = (-1.5, -.5, .5, 1.5); c - 1 = (1, -1, 0, 0) -> -1 / (sqrt 5 * sqrt 2)
    assert correlation(a, c, "pearson") == pytest.approx(-1 / math.sqrt(10))
    assert correlation(a, c, "cos") == pytest.approx(9 / (math.sqrt(30) * math.sqrt(6)))  # 2+0+3+4
    assert correlation(torch.zeros(2, 2), a, "cos") is None
    with pytest.raises(ValueError, match="spearman"):
        correlation(a, b, "spearman")


def _layer(d_out: int, d_in: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w0 = torch.randn(d_out, d_in, dtype=torch.float64, generator=_gen(seed))
    w = w0 + 0.3 * torch.randn(d_out, d_in, dtype=torch.float64, generator=_gen(seed + 1))
    return w, w0, _psd(d_out, seed=seed + 2)


@pytest.mark.parametrize(("d_out", "d_in"), [(6, 4), (3, 8)])
def test_compare_layer_all_eight_variants(d_out: int, d_in: int) -> None:
    w, w0, k = _layer(d_out, d_in, seed=d_in)
    cmp = compare_layer(w, w0, k)
    assert len(VARIANTS) == 8 and CENTERED_VARIANTS == ("delta_cos_cagop", "delta_pearson_cagop")
    assert METRICS == VARIANTS + CENTERED_VARIANTS and set(cmp.metrics) == set(METRICS)
    wn, dn, kn = w.numpy(), (w - w0).numpy(), k.numpy()
    agop = wn.T @ kn @ wn
    targets = {"agop": agop, "sqrt": _sqrt_by_eigh(agop)}
    nfms = {"raw": wn.T @ wn, "delta": dn.T @ dn}
    corrs = {"cos": _cos, "pearson": _pearson}
    for nfm in nfms:
        for corr in corrs:
            for target in targets:
                expected = corrs[corr](nfms[nfm], targets[target])
                got = cmp.metrics[f"{nfm}_{corr}_{target}"]
                assert got == pytest.approx(expected, abs=1e-7), (nfm, corr, target)
    assert set(cmp.spectra) == {"agop", "nfm_raw", "nfm_delta"}
    np.testing.assert_allclose(cmp.spectra["nfm_raw"].values.numpy(),
                               np.sort(np.linalg.eigvalsh(wn.T @ wn))[::-1][: min(d_out, d_in)], atol=1e-9)


def test_delta_is_none_at_epoch_zero_and_null_in_json() -> None:
    w, _, k = _layer(5, 4, seed=9)
    cmp = compare_layer(w, w.clone(), k)
    for name, value in cmp.metrics.items():
        if name.startswith("delta_"):
            assert value is None, name
        else:
            assert isinstance(value, float) and math.isfinite(value), name
    assert "nfm_delta" not in cmp.spectra
    doc = json.loads(json.dumps(finite_or_none({"metrics": cmp.metrics}), allow_nan=False))
    assert all(doc["metrics"][n] is None for n in VARIANTS if n.startswith("delta_"))


def test_zero_matrices_give_none_not_nan() -> None:
    w, w0, _ = _layer(5, 4, seed=11)
    cmp = compare_layer(w, w0, torch.zeros(5, 5, dtype=torch.float64))  # AGOP = 0
    assert all(v is None for v in cmp.metrics.values()), cmp.metrics
    zero = torch.zeros(3, 6, dtype=torch.float64)
    cmp = compare_layer(zero, zero, _psd(3))  # W = W0 = 0: both NFMs and the AGOP vanish
    assert all(v is None for v in cmp.metrics.values()), cmp.metrics


def test_denoise_drops_values_within_four_times_the_most_negative() -> None:
    values = torch.tensor([-1e-9, 3e-9, 5e-9, 1.0], dtype=torch.float64)
    assert denoise_psd_eigenvalues(values).tolist() == [0.0, 0.0, 5e-9, 1.0]
    positive = torch.tensor([1e-12, 1e-3, 2.0], dtype=torch.float64)  # full rank: nothing is noise
    assert torch.equal(denoise_psd_eigenvalues(positive), positive)
    assert denoise_psd_eigenvalues(torch.zeros(0, dtype=torch.float64)).numel() == 0


@pytest.mark.parametrize(("d_out", "d_in"), [(96, 96), (48, 144)])
def test_float32_kernel_noise_does_not_move_the_sqrt_variants(d_out: int, d_in: int) -> None:
    """A kernel of rank r < d_out (fewer samples x classes than the width) computed in float32,
    as the analysis does, has d_out - r eigenvalues of rounding noise, ~1e-7 of the largest,
    of either sign. AGOP^(1/2) turns each into ~3e-4 of the largest root; they are dropped,
    so that every variant stays as close to the float64 kernel's value as the AGOP ones."""
    g = torch.randn(12, d_out, dtype=torch.float64, generator=_gen(5))  # rank 12
    g *= torch.logspace(0, -2, d_out, dtype=torch.float64)  # an uneven spectrum, as in training
    k64 = g.T @ g
    g32 = g.float()
    k32 = (g32.T @ g32).double()
    assert torch.linalg.eigvalsh(k32)[0] < 0  # the float32 product is PSD only up to rounding
    w0 = torch.randn(d_out, d_in, dtype=torch.float64, generator=_gen(6)) / math.sqrt(d_in)
    w = (w0 + 0.5 * torch.randn(d_out, d_in, dtype=torch.float64, generator=_gen(7)) / math.sqrt(d_in))
    w, w0 = w.float().double(), w0.float().double()  # float32 weights, as trained
    exact = compare_layer(w, w0, k64).metrics
    noisy = compare_layer(w, w0, k32).metrics
    for name in METRICS:
        assert noisy[name] == pytest.approx(exact[name], abs=2e-6), name


# -- centered NFA, weight change, alpha_star: against explicit float64 matrices -------------------


def _relu_net(v: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """relu(W_{L-1} ... relu(W_0 v)) then the readout, weights[-1]: a bias-free ReLU MLP."""
    for w in weights[:-1]:
        v = torch.relu(w @ v)
    return weights[-1] @ v


@pytest.fixture(scope="module")
def tiny_net() -> list[dict[str, np.ndarray]]:
    """A trained-looking bias-free ReLU MLP 8 -> 6 -> 9 -> 9 -> 3 (hidden layers wide, narrow
    and square) on 40 samples, and per hidden layer, by per-sample autograd (torch.func):
    W, W0, K = mean G_i^T G_i (G_i = df/dz_i), AGOP = mean J_i^T J_i (J_i = df/dh_i) and
    CAGOP = mean (G_i D)^T (G_i D), D = W - W0."""
    dims = [8, 6, 9, 9, 3]
    init = [torch.randn(o, i, dtype=torch.float64, generator=_gen(20 + l)) / math.sqrt(i)
            for l, (i, o) in enumerate(itertools.pairwise(dims))]
    steps = [torch.randn(w0.shape, dtype=torch.float64, generator=_gen(30 + l)) for l, w0 in enumerate(init)]
    weights = [w0 + 0.4 * s / math.sqrt(w0.shape[1]) for w0, s in zip(init, steps, strict=True)]
    x = torch.randn(40, dims[0], dtype=torch.float64, generator=_gen(40))
    layers, h = [], x
    for l in range(len(weights) - 1):
        w, w0 = weights[l], init[l]
        z = h @ w.T

        def from_z(v: torch.Tensor, l: int = l) -> torch.Tensor:
            return _relu_net(torch.relu(v), [torch.eye(len(v), dtype=v.dtype), *weights[l + 1:]])

        def from_h(v: torch.Tensor, l: int = l) -> torch.Tensor:
            return _relu_net(v, weights[l:])

        g = vmap(jacrev(from_z))(z)  # (n, c, d_out)
        j = vmap(jacrev(from_h))(h)  # (n, c, d_in)
        jc = g @ (w - w0)  # the per-sample Jacobians with W replaced by W - W0
        layers.append({
            "w": w.numpy(), "w0": w0.numpy(),
            "k": torch.einsum("nci,ncj->ij", g, g).numpy() / len(x),
            "agop": torch.einsum("nci,ncj->ij", j, j).numpy() / len(x),
            "cagop": torch.einsum("nci,ncj->ij", jc, jc).numpy() / len(x),
        })
        h = torch.relu(z)
    return layers


def _corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    return _cos(a, b) if kind == "cos" else _pearson(a, b)


def _brute_force_alpha(nfm: np.ndarray, agop: np.ndarray, kind: str) -> tuple[float, float]:
    """max over a = 0, 0.01, .., 2 of corr(NFM, AGOP^a), AGOP^a formed from scipy's eigh with
    eigenvalues below 1e-6 x the largest set to 0."""
    vals, vecs = scipy.linalg.eigh(agop)
    keep = vals >= 1e-6 * vals.max()
    best = (-math.inf, math.nan)
    for i in range(201):
        a = i / 100
        power = (vecs * np.where(keep, np.abs(vals) ** a, 0.0)) @ vecs.T
        best = max(best, (_corr(nfm, power, kind), -a))  # the smallest a on a tie
    return -best[1], best[0]


def test_tiny_net_kernels_are_the_closed_form(tiny_net) -> None:
    """The fixture's autograd AGOP is W^T K W, and its CAGOP D^T K D: the definitions agree."""
    for layer in tiny_net:
        w, d, k = layer["w"], layer["w"] - layer["w0"], layer["k"]
        np.testing.assert_allclose(layer["agop"], w.T @ k @ w, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(layer["cagop"], d.T @ k @ d, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("l", [0, 1, 2])  # (6, 8) wide, (9, 6) tall, (9, 9) square
def test_centered_nfa_and_weight_change(tiny_net, l: int) -> None:
    layer = tiny_net[l]
    w, w0 = layer["w"], layer["w0"]
    d = w - w0
    cmp = compare_layer(torch.from_numpy(w), torch.from_numpy(w0), torch.from_numpy(layer["k"]))
    for kind in ("cos", "pearson"):
        expected = _corr(d.T @ d, layer["cagop"], kind)
        assert cmp.metrics[f"delta_{kind}_cagop"] == pytest.approx(expected, abs=1e-10), kind
    assert cmp.weight_change == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w0), rel=1e-12)


@pytest.mark.parametrize("l", [0, 1, 2])
@pytest.mark.parametrize("primary", ["raw_cos_agop", "raw_pearson_sqrt", "delta_cos_agop",
                                     "delta_pearson_sqrt", "delta_pearson_cagop"])
def test_alpha_star_against_a_brute_force_grid(tiny_net, l: int, primary: str) -> None:
    layer = tiny_net[l]
    w, w0 = layer["w"], layer["w0"]
    nfm_kind, corr_kind = metric_kinds(primary)
    x = w if nfm_kind == "raw" else w - w0
    expected_a, expected_corr = _brute_force_alpha(x.T @ x, layer["agop"], corr_kind)
    cmp = compare_layer(torch.from_numpy(w), torch.from_numpy(w0), torch.from_numpy(layer["k"]),
                        primary=primary)
    assert cmp.alpha_star == expected_a
    assert cmp.alpha_corr == pytest.approx(expected_corr, abs=1e-8)
    # The target metric does not matter, only the NFM and correlation kinds.
    same = compare_layer(torch.from_numpy(w), torch.from_numpy(w0), torch.from_numpy(layer["k"]),
                         with_spectra=False, primary=f"{nfm_kind}_{corr_kind}_agop")
    assert (same.alpha_star, same.alpha_corr) == pytest.approx((cmp.alpha_star, cmp.alpha_corr), abs=1e-12)


def test_metric_kinds() -> None:
    assert metric_kinds("raw_pearson_sqrt") == ("raw", "pearson")
    assert metric_kinds("delta_cos_cagop") == ("delta", "cos")
    assert [metric_kinds(m) for m in METRICS]  # every metric name parses
    with pytest.raises(ValueError, match="raw_cos_foo"):
        metric_kinds("raw_cos_foo")
    w, w0, k = _layer(4, 3, seed=3)
    with pytest.raises(ValueError, match="spearman"):
        compare_layer(w, w0, k, primary="raw_spearman_agop")


@pytest.mark.parametrize(("d_out", "d_in"), [(7, 7), (3, 8), (8, 5)])
@pytest.mark.parametrize("kind", ["cos", "pearson"])
def test_alpha_star_is_one_half_when_the_nfm_is_the_agop_root(d_out: int, d_in: int, kind: str) -> None:
    """With K = W W^T, AGOP = W^T W W^T W = NFM^2 exactly, so NFM = AGOP^(1/2): the ansatz."""
    w = torch.randn(d_out, d_in, dtype=torch.float64, generator=_gen(d_out + d_in))
    cmp = compare_layer(w, torch.zeros_like(w), w @ w.T, primary=f"raw_{kind}_agop")
    assert cmp.alpha_star == 0.5
    assert cmp.alpha_corr == pytest.approx(1.0, abs=1e-12)
    assert cmp.metrics[f"raw_{kind}_sqrt"] == pytest.approx(1.0, abs=1e-12)
    assert ALPHAS[50] == 0.5 and len(ALPHAS) == 201 and ALPHAS[-1] == 2.0


def test_new_values_at_epoch_zero_and_for_degenerate_layers() -> None:
    w, _, k = _layer(5, 4, seed=9)
    start = compare_layer(w, w.clone(), k)  # epoch 0: the default primary is delta_cos_agop
    assert start.weight_change == 0.0
    assert start.alpha_star is None and start.alpha_corr is None
    assert all(start.metrics[m] is None for m in CENTERED_VARIANTS)
    raw = compare_layer(w, w.clone(), k, primary="raw_cos_agop")  # the raw NFM is defined
    assert raw.alpha_star is not None and 0 <= raw.alpha_star <= 2 and -1 <= raw.alpha_corr <= 1
    zero_agop = compare_layer(w, w + 1, torch.zeros(5, 5, dtype=torch.float64), primary="raw_cos_agop")
    assert zero_agop.alpha_star is None and zero_agop.alpha_corr is None
    assert all(zero_agop.metrics[m] is None for m in CENTERED_VARIANTS)
    from_zero = compare_layer(w, torch.zeros_like(w), k)  # |W0| = 0: the relative change is undefined
    assert from_zero.weight_change is None
    doc = json.loads(json.dumps(finite_or_none(vars(start) | {"spectra": None}), allow_nan=False))
    assert doc["alpha_star"] is None and doc["weight_change"] == 0.0


# -- the factorised analysis equals the one it replaced ------------------------------------------


def _trained(d_out: int, d_in: int, seed: int, rank: int | None = None) -> tuple[torch.Tensor, ...]:
    """A float32 weight pair as training leaves it and a float64-summed kernel of ``rank``."""
    w0 = torch.randn(d_out, d_in, generator=_gen(seed)) / math.sqrt(d_in)
    w = w0 + 0.3 * torch.randn(d_out, d_in, generator=_gen(seed + 1)) / math.sqrt(d_in)
    g = torch.randn(rank or 3 * d_out, d_out, dtype=torch.float64, generator=_gen(seed + 2))
    g *= torch.logspace(0, -2, d_out, dtype=torch.float64)  # an uneven spectrum, as in training
    return w, w0, g.T @ g / g.shape[0]


def _assert_same(new, old, sqrt_rel: float = 1e-10) -> float:
    """Every number of compare_layer equal to the reference's to 1e-10 relative (the ``sqrt``
    variants to ``sqrt_rel``); the worst."""
    worst = 0.0
    for m in METRICS:
        rel = sqrt_rel if m.endswith("_sqrt") else 1e-10
        assert new.metrics[m] == pytest.approx(old.metrics[m], rel=rel, abs=0), m
    pairs = [(new.weight_change, old.weight_change), (new.alpha_corr, old.alpha_corr)]
    for key in ("agop", "nfm_raw", "nfm_delta"):
        a, b = new.spectra[key], old.spectra[key]
        n = min(a.values.numel(), b.values.numel())
        scale = float(b.values[0])
        assert float((a.values[:n] - b.values[:n]).abs().max()) <= 1e-10 * scale, key
        for rest in (a.values[n:], b.values[n:]):  # what one side left out is rounding noise
            assert float(rest.abs().sum()) <= 1e-10 * scale, key
        pairs += [(a.effective_rank(), b.effective_rank()), *zip(a.shares(5), b.shares(5), strict=True)]
    pairs.append((top_eigvec_cosine(new.spectra["nfm_raw"], new.spectra["agop"]),
                  top_eigvec_cosine(old.spectra["nfm_raw"], old.spectra["agop"])))
    for got, want in pairs:
        rel = abs(got - want) / max(abs(want), 1e-300)
        assert rel <= 1e-10, (got, want)
        worst = max(worst, rel)
    assert new.alpha_star == old.alpha_star
    return worst


@pytest.mark.parametrize(("d_out", "d_in", "rank"), [
    (64, 192, None),  # d_in > d_out: the row-space route, as layer 0
    (96, 48, None),  # d_in < d_out: the AGOP itself is the smaller side
    (80, 80, None),  # square, as the middle layers
    (64, 192, 20),  # n x classes < d_out: a rank-20 kernel
    (80, 80, 12),
])
def test_equals_the_implementation_it_replaced(d_out: int, d_in: int, rank: int | None) -> None:
    import nfa_reference

    w, w0, k = _trained(d_out, d_in, seed=d_out + d_in + (rank or 0), rank=rank)
    # A rank-deficient AGOP decomposed itself (d_out >= d_in) has d_in - rank eigenvalues of
    # float64 rounding noise, ~1e-16 of the largest; the few that survive denoising differ
    # between LAPACK drivers (syevr here, syevd before), and AGOP^(1/2) lifts them to ~1e-8 of
    # the largest root: the sqrt variants are determined to 2e-9 there (measured), by either.
    sqrt_rel = 5e-9 if rank is not None and d_out >= d_in else 1e-10
    for primary in ("delta_cos_agop", "raw_pearson_sqrt"):
        new = compare_layer(w, w0, k, primary=primary, top=4)
        old = nfa_reference.compare_layer(w, w0, k, primary=primary)
        _assert_same(new, old, sqrt_rel)
        kinds = metric_kinds(primary)
        assert new.alphas[f"{kinds[0]}_{kinds[1]}"] == (new.alpha_star, new.alpha_corr)
        for kind, (a, c) in new.alphas.items():  # every kind's alpha_star is the reference's
            ref = nfa_reference.compare_layer(w, w0, k, primary=f"{kind}_agop")
            assert a == ref.alpha_star and c == pytest.approx(ref.alpha_corr, rel=1e-10)


def test_an_ill_conditioned_weight_takes_the_direct_route() -> None:
    """W W^T with condition above MAX_GRAM_CONDITION: the Cholesky basis would lose accuracy,
    so the AGOP is decomposed itself, and every number still equals the reference's."""
    import nfa_reference

    from agop_sweep.analyze import nfa

    w, w0, k = _trained(32, 96, seed=5)
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    s[-1] = s[0] * 1e-4  # condition of W W^T: 1e8
    w = (u * s) @ vh
    calls = []
    direct = nfa._agop_direct
    nfa._agop_direct = lambda *a: calls.append(1) or direct(*a)
    try:
        new = compare_layer(w, w0, k)
    finally:
        nfa._agop_direct = direct
    assert calls == [1]
    _assert_same(new, nfa_reference.compare_layer(w, w0, k))


def test_layers_side_by_side_give_the_numbers_of_one_after_another() -> None:
    """analysis.compare_layers runs the layers on threads of one torch thread each."""
    from omegaconf import OmegaConf

    from agop_sweep.analyze.layers import compare_layers
    from agop_sweep.config import AnalysisConfig

    cfg = OmegaConf.structured(AnalysisConfig())
    layers = [_trained(24, 40, seed=1), _trained(24, 24, seed=2), _trained(24, 24, seed=3)]
    ws, w0s, ks = (list(t) for t in zip(*layers, strict=True))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        side_by_side = compare_layers(ws, w0s, ks, cfg)
        assert torch.get_num_threads() == 2  # restored
        torch.set_num_threads(1)
        sequential = compare_layers(ws, w0s, ks, cfg)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(side_by_side, sequential, strict=True):
        for m in METRICS:
            assert a.metrics[m] == pytest.approx(b.metrics[m], rel=1e-12, abs=0)
        assert a.alpha_star == b.alpha_star
        assert a.spectra["agop"].vectors.shape == b.spectra["agop"].vectors.shape
    assert side_by_side[0].spectra["agop"].vectors.shape[1] == cfg.top_eigvecs  # layer 0: the features'
