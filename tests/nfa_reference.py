"""agop_sweep.analyze.nfa as it was before the per-layer analysis was rebuilt on factorisations
(eigendecompositions of K, of B B^T and of the (d_in, d_in) AGOP, all eigenvectors formed),
kept unchanged as the reference the new code must equal to 1e-10 (tests/test_nfa.py).

The Neural Feature Ansatz mathematics: NFM, AGOP from its kernel, spectra, correlations.

Pure functions on tensors; all of them work in the dtype they are given (float64 in the
analysis). Notation: W is a hidden layer's weight, shape (d_out, d_in); W0 its initial value;
D = W - W0; K is the kernel (1/n) sum_i G_i^T G_i of that layer's pre-activation Jacobians,
shape (d_out, d_out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The metric names: {nfm}_{corr}_{target}. The NFM is W^T W ("raw") or (W - W0)^T (W - W0)
# ("delta"); the correlation a cosine ("cos") or a cosine of mean-removed entries ("pearson");
# the target the AGOP itself or its square root.
NFM_KINDS = ("raw", "delta")
CORR_KINDS = ("cos", "pearson")
TARGETS = ("agop", "sqrt")
VARIANTS = tuple(f"{n}_{c}_{t}" for n in NFM_KINDS for c in CORR_KINDS for t in TARGETS)
# Centered NFA (Beaglehole et al. 2024, "Feature learning as alignment"): the delta NFM
# D^T D against the centered AGOP CAGOP = D^T K D.
CENTERED_VARIANTS = tuple(f"delta_{c}_cagop" for c in CORR_KINDS)
# Every name in LayerComparison.metrics; each one is a valid analysis.primary.
METRICS = VARIANTS + CENTERED_VARIANTS
# The reference code's choice, and the default of analysis.primary.
DEFAULT_METRIC = "delta_cos_agop"
# alpha_star: the exponents a tried in corr(NFM, AGOP^a), 0..2 in steps of 0.01, and the
# fraction of the largest eigenvalue below which an AGOP eigenvalue counts as 0 in AGOP^a.
ALPHAS = tuple(i / 100 for i in range(201))
POWER_FLOOR = 1e-6


def metric_kinds(metric: str) -> tuple[str, str]:
    """The NFM kind (raw|delta) and correlation kind (cos|pearson) of a name in METRICS."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    nfm_kind, corr_kind, _ = metric.split("_")
    return nfm_kind, corr_kind


def agop_from_kernel(w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """AGOP = W^T K W, shape (d_in, d_in), for W (d_out, d_in) and K (d_out, d_out)."""
    return w.T @ (k @ w)


# Eigenvalues up to this multiple of the most negative one's size are rounding noise.
NOISE_FACTOR = 4.0


def denoise_psd_eigenvalues(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (m,) of a matrix that is PSD by construction but was summed in finite
    precision, with the rounding noise set to zero.

    The kernel comes from float32 products G^T G: its rounding error E is symmetric but not
    PSD, so where K has (near-)zero eigenvalues, K + E has noise eigenvalues of either sign,
    ~1e-7 of the largest. The most negative one measures the noise; the largest positive one
    was up to 4x its size in 300 random rank-deficient products (more often the fewer zero
    eigenvalues there are), so values up to NOISE_FACTOR x its size are dropped. They matter
    for AGOP^(1/2), which turns an eigenvalue at 1e-7 of the largest into 3e-4 of the largest
    root. A kernel with no negative eigenvalue (full rank, as with n x classes >> width) or
    one summed in float64 loses nothing real.
    """
    if values.numel() == 0:
        return values
    floor = NOISE_FACTOR * (-values.min()).clamp_min(0)
    return torch.where(values > floor, values, torch.zeros_like(values))


def psd_factor(k: torch.Tensor) -> torch.Tensor:
    """F (d, d) with F^T F = K for a symmetric PSD K (d, d), K's rounding noise dropped
    (:func:`denoise_psd_eigenvalues`)."""
    evals, evecs = torch.linalg.eigh(k)
    return denoise_psd_eigenvalues(evals).sqrt()[:, None] * evecs.T


@dataclass
class Spectrum:
    """Eigen-decomposition of a PSD matrix A (d, d): ``values`` (m,) descending, ``vectors``
    (d, m) orthonormal columns, m <= d. Eigenvalues left out are zero."""

    values: torch.Tensor
    vectors: torch.Tensor
    dim: int

    def sqrt(self) -> torch.Tensor:
        """A^(1/2), the symmetric PSD square root, shape (d, d)."""
        return (self.vectors * self.values.sqrt()) @ self.vectors.T

    def effective_rank(self) -> float | None:
        """exp(entropy of the normalised eigenvalues): d for the identity, 1 for rank one."""
        return effective_rank(self.values)

    def shares(self, k: int) -> list[float]:
        """The top-``k`` eigenvalues as fractions of the trace (zero-padded to k)."""
        total = float(self.values.sum())
        if total <= 0:
            return [0.0] * k
        top = (self.values[:k] / total).tolist()
        return top + [0.0] * (k - len(top))


def spectrum_of_gram(b: torch.Tensor, rel_tol: float | None = None) -> Spectrum:
    """Spectrum of A = B^T B for B (r, d) at the cost of an eigh of size min(r, d).

    For r < d (layer 0: 1024 rows, 3072 columns) it decomposes B B^T = U L U^T and maps
    the eigenvectors back, V = B^T U L^(-1/2); eigenvalues below ``rel_tol`` x the largest
    are rounding noise and are dropped (their eigenvectors are undefined).
    """
    r, d = b.shape
    if rel_tol is None:
        rel_tol = 10 * max(r, d) * torch.finfo(b.dtype).eps
    if r >= d:
        values, vectors = torch.linalg.eigh(b.T @ b)
        values = values.clamp_min(0)
    else:
        values, u = torch.linalg.eigh(b @ b.T)
        keep = values > rel_tol * values.max().clamp_min(0)
        values, u = values[keep], u[:, keep]
        vectors = (b.T @ u) / values.sqrt()
    order = torch.argsort(values, descending=True)
    return Spectrum(values[order], vectors[:, order], d)


def effective_rank(values: torch.Tensor) -> float | None:
    """exp(-sum p log p), p = values / sum(values), for non-negative ``values`` (m,).

    None when all values are zero (the rank of the zero matrix is not a useful number).
    """
    values = values.clamp_min(0)
    total = values.sum()
    if total <= 0:
        return None
    p = values[values > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def correlation(a: torch.Tensor, b: torch.Tensor, kind: str) -> float | None:
    """Cosine of the flattened matrices (``cos``) or the same after removing each one's mean
    entry (``pearson``). None when either side has zero norm: the value is undefined."""
    a, b = a.reshape(-1), b.reshape(-1)
    if kind == "pearson":
        a, b = a - a.mean(), b - b.mean()
    elif kind != "cos":
        raise ValueError(f"unknown correlation kind {kind!r}")
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return None
    value = float(a @ b / (na * nb))
    return value if math.isfinite(value) else None


def top_eigvec_cosine(s1: Spectrum, s2: Spectrum) -> float | None:
    """|cos| between the leading eigenvectors (sign-free); None when either is the zero matrix."""
    if s1.values.numel() == 0 or s2.values.numel() == 0 or s1.values[0] <= 0 or s2.values[0] <= 0:
        return None
    return float((s1.vectors[:, 0] @ s2.vectors[:, 0]).abs())


@dataclass
class LayerComparison:
    """What :func:`compare_layer` finds for one hidden layer.

    metrics: every name in METRICS, None where undefined. spectra: ``agop``, ``nfm_raw`` and
    ``nfm_delta`` (see compare_layer). weight_change: |W - W0|_F / |W0|_F. alpha_star: the
    exponent a in ALPHAS that maximises corr(NFM, AGOP^a) and alpha_corr that maximum, for
    the NFM and correlation kinds of the primary metric; both None where it is undefined.
    """

    metrics: dict[str, float | None]
    spectra: dict[str, Spectrum]
    weight_change: float | None = None
    alpha_star: float | None = None
    alpha_corr: float | None = None


def _spectrum_of_psd(a: torch.Tensor) -> Spectrum:
    """Spectrum of a symmetric PSD matrix A (d, d) itself, rounding noise dropped
    (:func:`denoise_psd_eigenvalues`)."""
    values, vectors = torch.linalg.eigh(a)
    order = torch.argsort(values, descending=True)
    return Spectrum(denoise_psd_eigenvalues(values)[order], vectors[:, order], a.shape[0])


def weight_change(w: torch.Tensor, w0: torch.Tensor) -> float | None:
    """|W - W0|_F / |W0|_F for W, W0 (d_out, d_in): 0 when W == W0, None when W0 = 0 != W."""
    change = torch.linalg.matrix_norm(w - w0)
    if change == 0:
        return 0.0
    return _finite(change / torch.linalg.matrix_norm(w0))


def _finite(value: torch.Tensor) -> float | None:
    """A 0-d tensor as a float, None when it is NaN or infinite (an undefined value)."""
    v = float(value)
    return v if math.isfinite(v) else None


def _corr_from_terms(
    inner: torch.Tensor, na2: torch.Tensor, nb2: torch.Tensor, sum_a: torch.Tensor,
    sum_b: torch.Tensor, d: int, kind: str,
) -> torch.Tensor:
    """:func:`correlation` of two (d, d) matrices A, B from <A, B>, |A|_F^2, |B|_F^2 and their
    entry sums. The arguments broadcast (B may be a batch of p matrices: shapes (p,));
    the result has their shape, NaN where the correlation is undefined."""
    if kind == "pearson":  # <A - mean A, B - mean B> = <A, B> - sum(A) sum(B) / d^2
        inner = inner - sum_a * sum_b / (d * d)
        na2 = na2 - sum_a * sum_a / (d * d)
        nb2 = nb2 - sum_b * sum_b / (d * d)
    elif kind != "cos":
        raise ValueError(f"unknown correlation kind {kind!r}")
    value = inner / (na2.clamp_min(0).sqrt() * nb2.clamp_min(0).sqrt())
    return torch.where((na2 > 0) & (nb2 > 0), value, torch.nan)


@dataclass
class _Target:
    """p matrices V diag(s) V^T (d, d) on the AGOP's eigenvectors V (d, m), never formed:
    ``weights`` s (p, m) or (m,) for one, ``sq_norm`` |.|_F^2 = sum_j s_j^2 and ``total``
    the entry sum 1^T (.) 1 = sum_j s_j (1^T v_j)^2, each (p,) or 0-d."""

    weights: torch.Tensor
    sq_norm: torch.Tensor
    total: torch.Tensor


def _target(spec: Spectrum, s: torch.Tensor) -> _Target:
    ones = spec.vectors.sum(0)  # 1^T v_j, (m,)
    return _Target(s, (s * s).sum(-1), (s * ones * ones).sum(-1))


def _agop_powers(spec: Spectrum) -> _Target | None:
    """AGOP^a for every a in ALPHAS (weights (201, m)): eigenvalues below POWER_FLOOR x the
    largest count as 0 for every a (so AGOP^0 is the projector on the others). None when
    the AGOP is 0."""
    e = spec.values
    if e.numel() == 0 or not e.max() > 0:
        return None
    keep = e >= POWER_FLOOR * e.max()
    a = torch.tensor(ALPHAS, dtype=e.dtype, device=e.device)[:, None]
    s = torch.where(keep, e.clamp_min(torch.finfo(e.dtype).tiny) ** a, 0)
    return _target(spec, s)


@dataclass
class _Nfm:
    """An NFM X^T X (d, d) seen from the AGOP's eigenvectors V (d, m), never formed:
    ``sq_norm`` |X^T X|_F^2, ``total`` its entry sum |X 1|^2 (both 0-d) and ``weights``
    |X v_j|^2 (m,), so that <X^T X, V diag(s) V^T> = weights @ s."""

    sq_norm: torch.Tensor
    total: torch.Tensor
    weights: torch.Tensor

    def corr(self, t: _Target, d: int, kind: str) -> torch.Tensor:
        """corr(X^T X, each target matrix): shape (p,) or 0-d as ``t.sq_norm``."""
        inner = t.weights @ self.weights
        return _corr_from_terms(inner, self.sq_norm, t.sq_norm, self.total, t.total, d, kind)


def _alpha_star(nfm: _Nfm, spec: Spectrum, kind: str) -> tuple[float | None, float | None]:
    """(a*, corr at a*): the a in ALPHAS maximising corr(X^T X, AGOP^a), the smallest on a
    tie; (None, None) where no a gives a defined correlation. O(201 m) from the spectrum."""
    powers = _agop_powers(spec)
    if powers is None:
        return None, None
    corr = nfm.corr(powers, spec.dim, kind)  # (201,)
    if bool(corr.isnan().all()):
        return None, None
    best = int(torch.argmax(corr.nan_to_num(nan=-math.inf)))
    return ALPHAS[best], _finite(corr[best])


def _centered_metrics(delta: torch.Tensor, k: torch.Tensor) -> dict[str, float | None]:
    """``delta_{cos,pearson}_cagop``: corr(D^T D, D^T K D) for D (d_out, d_in), K (d_out, d_out).

    For d_out <= d_in only (d_out, d_out) matrices are formed: with G = D D^T,
    <D^T D, D^T K D> = tr(G K G), |D^T D|_F^2 = |G|_F^2, |D^T K D|_F^2 = tr(K G K G), and
    the entry sums are |D 1|^2 and (D 1)^T K (D 1). None (both) when D = 0.
    """
    d_out, d_in = delta.shape
    u = delta.sum(1)  # D 1, (d_out,)
    sum_n, sum_c = u @ u, u @ (k @ u)
    if d_out <= d_in:
        g = delta @ delta.T
        kg = k @ g
        inner, nn2, nc2 = (g * kg).sum(), (g * g).sum(), (kg * kg.T).sum()
    else:  # the (d_in, d_in) matrices themselves are the smaller ones
        n, c = delta.T @ delta, delta.T @ (k @ delta)
        inner, nn2, nc2 = (n * c).sum(), (n * n).sum(), (c * c).sum()
    return {
        f"delta_{kind}_cagop": _finite(_corr_from_terms(inner, nn2, nc2, sum_n, sum_c, d_in, kind))
        for kind in CORR_KINDS
    }


def compare_layer(
    w: torch.Tensor, w0: torch.Tensor, k: torch.Tensor, with_spectra: bool = True,
    primary: str = DEFAULT_METRIC,
) -> LayerComparison:
    """All NFM/AGOP correlation metrics for one hidden layer.

    Args:
        w: weight (d_out, d_in) now; w0: weight at initialisation, same shape.
        k: the layer's Jacobian kernel (d_out, d_out).
        primary: a name in METRICS; its NFM and correlation kinds are those of alpha_star.
    Returns:
        metrics: every name in METRICS; the ``delta`` ones are None when W == W0 (epoch 0).
        spectra: ``agop``, ``nfm_raw`` and (when defined) ``nfm_delta``, shared by the
        ``sqrt`` variants and the spectral summaries. weight_change, alpha_star, alpha_corr:
        see LayerComparison.

    No (d_in, d_in) matrix beyond the AGOP of a square layer is formed: with the AGOP's
    spectrum V diag(l) V^T and an NFM X^T X (X = W or W - W0), <X^T X, AGOP^p> =
    sum_j l_j^p |X v_j|^2 needs one product X V for both targets and every power of
    alpha_star, a third of the cost of forming X^T X for layer 0 (1024 x 3072).
    """
    alpha_nfm, alpha_corr_kind = metric_kinds(primary)
    w, w0, k = w.double(), w0.double(), k.double()
    d = w.shape[1]
    if w.shape[0] >= d:  # AGOP no larger than K: one eigh of the AGOP instead of K's and B^T B's
        agop_spec = _spectrum_of_psd(agop_from_kernel(w, k))
    else:
        agop_spec = spectrum_of_gram(psd_factor(k) @ w)
    spectra = {"agop": agop_spec}
    targets = {"agop": _target(agop_spec, agop_spec.values),
               "sqrt": _target(agop_spec, agop_spec.values.sqrt())}
    metrics: dict[str, float | None] = {}
    nfms: dict[str, _Nfm] = {}
    delta = w - w0
    for nfm_kind, x in (("raw", w), ("delta", delta)):
        if with_spectra and bool(x.any()):
            spectrum = spectra[f"nfm_{nfm_kind}"] = spectrum_of_gram(x)
            na2 = (spectrum.values * spectrum.values).sum()
        else:
            g = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
            na2 = (g * g).sum()  # |X^T X|_F = |X X^T|_F
        ones = x.sum(1)  # X 1: 1^T X^T X 1 = |X 1|^2
        proj = x @ agop_spec.vectors
        nfm = nfms[nfm_kind] = _Nfm(na2, ones @ ones, (proj * proj).sum(0))  # |X v_j|^2
        for corr_kind in CORR_KINDS:
            for target in TARGETS:
                metrics[f"{nfm_kind}_{corr_kind}_{target}"] = _finite(
                    nfm.corr(targets[target], d, corr_kind)
                )
    metrics.update(_centered_metrics(delta, k))
    alpha_star, alpha_corr = _alpha_star(nfms[alpha_nfm], agop_spec, alpha_corr_kind)
    return LayerComparison(metrics, spectra, weight_change(w, w0), alpha_star, alpha_corr)
