"""The Neural Feature Ansatz mathematics: NFM, AGOP from its kernel, spectra, correlations.

Pure functions on tensors; all of them work in the dtype they are given (float64 in the
analysis). Notation: W is a hidden layer's weight, shape (d_out, d_in); W0 its initial value;
D = W - W0; K is the kernel (1/n) sum_i G_i^T G_i of that layer's pre-activation Jacobians,
shape (d_out, d_out).

Every matrix of a layer has rank at most min(d_out, d_in): W^T W and D^T D are grams of
(d_out, d_in) factors, and the AGOP W^T K W lives in W's row space. So no (d_in, d_in) matrix
is formed or decomposed when d_out < d_in (layer 0: 1024 x 3072): spectra come from the
(d_out, d_out) side, and the correlations from traces of products (docs/results.md: results.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from agop_sweep.analyze.eigen import eigh_descending, eigvalsh_with_top
from agop_sweep.analyze.names import (
    ALPHAS,
    CORR_KINDS,
    DEFAULT_METRIC,
    METRICS,
    NFM_KINDS,
    TARGETS,
    metric_kinds,
)

# alpha_star: the fraction of the largest eigenvalue below which an AGOP eigenvalue counts
# as 0 in AGOP^a.
POWER_FLOOR = 1e-6


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


@dataclass
class Spectrum:
    """Eigenvalues of a PSD matrix A (d, d) and its leading eigenvectors: ``values`` (m,)
    descending (eigenvalues left out are zero), ``vectors`` (d, t) orthonormal columns for the
    t <= m largest (only those are ever used: alignment and features)."""

    values: torch.Tensor
    vectors: torch.Tensor
    dim: int

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


def gram(x: torch.Tensor) -> torch.Tensor:
    """The smaller gram of X (r, c): X X^T (r, r) when r < c, else X^T X (c, c) itself. Both
    have the nonzero eigenvalues of X^T X and its Frobenius norm."""
    return x @ x.T if x.shape[0] < x.shape[1] else x.T @ x


def nfm_spectrum(x: torch.Tensor, g: torch.Tensor, top: int) -> Spectrum:
    """Spectrum of the NFM X^T X for X (r, d), from ``g`` = :func:`gram` (X): all eigenvalues
    and the ``top`` leading eigenvectors. For r < d the eigenvectors u of X X^T map to
    v = X^T u / sqrt(l); eigenvalues below 10 max(r, d) eps x the largest are rounding noise
    there and are dropped (their eigenvectors are undefined)."""
    r, d = x.shape
    values, vectors = eigvalsh_with_top(g, top)
    values = values.clamp_min(0)
    if r < d:
        rel_tol = 10 * d * torch.finfo(x.dtype).eps
        values = values[values > rel_tol * values.max()]
        t = min(vectors.shape[1], values.numel())
        vectors = (x.T @ vectors[:, :t]) / values[:t].sqrt()
    return Spectrum(values, vectors, d)


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
    alphas: (alpha_star, alpha_corr) for every NFM and correlation kind, keyed
    ``{raw,delta}_{cos,pearson}``: one AGOP spectrum serves all four.
    """

    metrics: dict[str, float | None]
    spectra: dict[str, Spectrum]
    weight_change: float | None = None
    alpha_star: float | None = None
    alpha_corr: float | None = None
    alphas: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # Why the layer has no numbers, when it has none (non-finite input, a failed decomposition).
    error: str | None = None


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


def _target(ones: torch.Tensor, s: torch.Tensor) -> _Target:
    """The targets with weights ``s`` (p, m) or (m,), for 1^T v_j = ``ones`` (m,)."""
    return _Target(s, (s * s).sum(-1), (s * ones * ones).sum(-1))


def _agop_powers(values: torch.Tensor, ones: torch.Tensor) -> _Target | None:
    """AGOP^a for every a in ALPHAS (weights (201, m)) from its eigenvalues ``values`` (m,):
    eigenvalues below POWER_FLOOR x the largest count as 0 for every a (so AGOP^0 is the
    projector on the others). None when the AGOP is 0."""
    e = values
    if e.numel() == 0 or not e.max() > 0:
        return None
    keep = e >= POWER_FLOOR * e.max()
    a = torch.tensor(ALPHAS, dtype=e.dtype, device=e.device)[:, None]
    s = torch.where(keep, e.clamp_min(torch.finfo(e.dtype).tiny) ** a, 0)
    return _target(ones, s)


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


def _alpha_star(nfm: _Nfm, powers: _Target | None, d: int, kind: str) -> tuple[float | None, float | None]:
    """(a*, corr at a*): the a in ALPHAS maximising corr(X^T X, AGOP^a), the smallest on a
    tie; (None, None) where no a gives a defined correlation. O(201 m) from the spectrum."""
    if powers is None:
        return None, None
    corr = nfm.corr(powers, d, kind)  # (201,)
    if bool(corr.isnan().all()):
        return None, None
    best = int(torch.argmax(corr.nan_to_num(nan=-math.inf)))
    return ALPHAS[best], _finite(corr[best])


def _centered_metrics(delta: torch.Tensor, k: torch.Tensor, g: torch.Tensor) -> dict[str, float | None]:
    """``delta_{cos,pearson}_cagop``: corr(D^T D, D^T K D) for D (d_out, d_in), K (d_out, d_out)
    and g = :func:`gram` (D).

    For d_out < d_in only (d_out, d_out) matrices are formed: with G = D D^T,
    <D^T D, D^T K D> = tr(G K G), |D^T D|_F^2 = |G|_F^2, |D^T K D|_F^2 = tr(K G K G), and
    the entry sums are |D 1|^2 and (D 1)^T K (D 1). None (both) when D = 0.
    """
    d_out, d_in = delta.shape
    u = delta.sum(1)  # D 1, (d_out,)
    sum_n, sum_c = u @ u, u @ (k @ u)
    if d_out < d_in:
        kg = k @ g
        inner, nn2, nc2 = (g * kg).sum(), (g * g).sum(), (kg * kg.T).sum()
    else:  # the (d_in, d_in) matrices themselves are the smaller ones: g = D^T D
        c = delta.T @ (k @ delta)
        inner, nn2, nc2 = (g * c).sum(), (g * g).sum(), (c * c).sum()
    return {
        f"delta_{kind}_cagop": _finite(_corr_from_terms(inner, nn2, nc2, sum_n, sum_c, d_in, kind))
        for kind in CORR_KINDS
    }


@dataclass
class _AgopView:
    """The AGOP's spectrum V diag(l) V^T, V (d, m), seen from what the metrics need, with V
    formed for the leading eigenvectors only: ``spectrum`` (values l, top vectors), ``ones``
    1^T v_j (m,) and ``weights`` |X v_j|^2 (m,) for X = W (``raw``) and W - W0 (``delta``)."""

    spectrum: Spectrum
    ones: torch.Tensor
    weights: dict[str, torch.Tensor]


# The row-space route needs the Cholesky factor of W W^T; it loses about cond(W W^T) x eps of
# accuracy. Above this condition number (1e5: < 2.3e-11) the AGOP is decomposed directly.
MAX_GRAM_CONDITION = 1e5


def _agop_direct(w: torch.Tensor, k: torch.Tensor, xs: dict[str, torch.Tensor], top: int) -> _AgopView:
    """The AGOP W^T K W (d, d) decomposed itself: for d_out >= d_in, where it is no larger
    than K, or a W too ill-conditioned for :func:`_agop_in_row_space`."""
    values, vectors = eigh_descending(agop_from_kernel(w, k))
    values = denoise_psd_eigenvalues(values)
    weights = {name: ((x @ vectors) ** 2).sum(0) for name, x in xs.items()}
    return _AgopView(Spectrum(values, vectors[:, :top], w.shape[1]), vectors.sum(0), weights)


def _agop_in_row_space(w: torch.Tensor, k: torch.Tensor, xs: dict[str, torch.Tensor], top: int,
                       ww: torch.Tensor) -> _AgopView | None:
    """The AGOP through an orthonormal basis of W's row space, for d_out < d_in.

    With W W^T = ``ww`` = L L^T (Cholesky) and Q = W^T L^-T (d_in, d_out), Q^T Q = I and
    W = L Q^T, so AGOP = Q (L^T K L) Q^T: its nonzero spectrum is that of T = L^T K L
    (d_out, d_out) = M diag(l) M^T, with v_j = Q m_j. Then W v_j = L m_j, X v_j =
    (X W^T) L^-T m_j, 1^T v_j = (L^-1 W 1)^T m_j: one eigh at d_out and products of
    (d_out, d_out) matrices. None when W W^T is not safely positive definite.
    """
    factor, info = torch.linalg.cholesky_ex(ww)
    if int(info) != 0:
        return None
    t = factor.T @ (k @ factor)
    values, m = eigh_descending(t)
    values = denoise_psd_eigenvalues(values)
    weights = {}
    for name, x in xs.items():
        xq = factor if x is w else torch.linalg.solve_triangular(factor, w @ x.T, upper=False).T
        weights[name] = ((xq @ m) ** 2).sum(0)
    ones = torch.linalg.solve_triangular(factor, w.sum(1, keepdim=True), upper=False)[:, 0] @ m
    vectors = w.T @ torch.linalg.solve_triangular(factor.T, m[:, :top], upper=True)
    return _AgopView(Spectrum(values, vectors, w.shape[1]), ones, weights)


def _well_conditioned(values: torch.Tensor) -> bool:
    """Whether a PSD matrix with eigenvalues ``values`` has condition <= MAX_GRAM_CONDITION."""
    return values.numel() > 0 and bool(values[-1] * MAX_GRAM_CONDITION >= values[0] > 0)


def compare_layer(
    w: torch.Tensor, w0: torch.Tensor, k: torch.Tensor, with_spectra: bool = True,
    primary: str = DEFAULT_METRIC, top: int = 1,
) -> LayerComparison:
    """All NFM/AGOP correlation metrics for one hidden layer.

    Args:
        w: weight (d_out, d_in) now; w0: weight at initialisation, same shape.
        k: the layer's Jacobian kernel (d_out, d_out).
        primary: a name in METRICS; its NFM and correlation kinds are those of alpha_star.
        top: how many leading eigenvectors each spectrum keeps (at least 1).
    Returns:
        metrics: every name in METRICS; the ``delta`` ones are None when W == W0 (epoch 0).
        spectra: ``agop``, ``nfm_raw`` and (when defined) ``nfm_delta`` (all eigenvalues, the
        ``top`` leading eigenvectors). weight_change, alpha_star, alpha_corr, alphas: see
        LayerComparison.

    With the AGOP's spectrum V diag(l) V^T and an NFM X^T X (X = W or W - W0),
    <X^T X, AGOP^p> = sum_j l_j^p |X v_j|^2: the weights |X v_j|^2 serve both targets and
    every power of alpha_star. For d_out < d_in they come from the (d_out, d_out) side
    (:func:`_agop_in_row_space`); the NFMs' spectra from their smaller gram.
    """
    alpha_nfm, alpha_corr_kind = metric_kinds(primary)
    w, w0, k = w.double(), w0.double(), k.double()
    bad = [name for name, m in (("W", w), ("W0", w0), ("K", k)) if not bool(torch.isfinite(m).all())]
    if bad:
        return _undefined(f"non-finite values in {', '.join(bad)}")
    try:
        return _compare(w, w0, k, with_spectra, alpha_nfm, alpha_corr_kind, max(1, top))
    except np.linalg.LinAlgError as e:  # every driver failed: no numbers rather than a crash
        return _undefined(str(e))


def _undefined(reason: str) -> LayerComparison:
    """A layer without numbers: every metric None, no spectra, and the reason."""
    alphas: dict[str, tuple[float | None, float | None]] = {
        f"{n}_{c}": (None, None) for n in NFM_KINDS for c in CORR_KINDS}
    return LayerComparison(dict.fromkeys(METRICS), {}, None, None, None, alphas, reason)


def _compare(w: torch.Tensor, w0: torch.Tensor, k: torch.Tensor, with_spectra: bool, alpha_nfm: str,
             alpha_corr_kind: str, top: int) -> LayerComparison:
    """:func:`compare_layer` on finite float64 inputs."""
    d_out, d = w.shape
    delta = w - w0
    xs = {"raw": w, "delta": delta}
    grams = {name: gram(x) for name, x in xs.items()}
    spectra: dict[str, Spectrum] = {}
    for name, x in xs.items():
        if with_spectra and bool(x.any()):
            spectra[f"nfm_{name}"] = nfm_spectrum(x, grams[name], top)
    view = None
    if d_out < d:
        raw = spectra.get("nfm_raw")
        values = raw.values if raw is not None else eigvalsh_with_top(grams["raw"], 0)[0]
        if _well_conditioned(values) and values.numel() == d_out:
            view = _agop_in_row_space(w, k, xs, top, grams["raw"])
    if view is None:
        view = _agop_direct(w, k, xs, top)
    spectra["agop"] = view.spectrum
    values = view.spectrum.values
    targets = {"agop": _target(view.ones, values), "sqrt": _target(view.ones, values.sqrt())}
    metrics: dict[str, float | None] = {}
    nfms: dict[str, _Nfm] = {}
    for name, x in xs.items():
        g = grams[name]
        ones = x.sum(1)  # X 1: 1^T X^T X 1 = |X 1|^2
        nfm = nfms[name] = _Nfm((g * g).sum(), ones @ ones, view.weights[name])  # |X^T X|_F = |g|_F
        for corr_kind in CORR_KINDS:
            for target in TARGETS:
                metrics[f"{name}_{corr_kind}_{target}"] = _finite(nfm.corr(targets[target], d, corr_kind))
    metrics.update(_centered_metrics(delta, k, grams["delta"]))
    powers = _agop_powers(values, view.ones)
    alphas = {f"{n}_{c}": _alpha_star(nfms[n], powers, d, c) for n in NFM_KINDS for c in CORR_KINDS}
    alpha_star, alpha_corr = alphas[f"{alpha_nfm}_{alpha_corr_kind}"]
    spectra = {key: spectra[key] for key in ("agop", "nfm_raw", "nfm_delta") if key in spectra}
    return LayerComparison(metrics, spectra, weight_change(w, w0), alpha_star, alpha_corr, alphas)
