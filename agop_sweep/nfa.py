"""The Neural Feature Ansatz mathematics: NFM, AGOP from its kernel, spectra, correlations.

Pure functions on tensors; all of them work in the dtype they are given (float64 in the
analysis). Notation: W is a hidden layer's weight, shape (d_out, d_in); K is the kernel
(1/n) sum_i G_i^T G_i of that layer's pre-activation Jacobians, shape (d_out, d_out).
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
# The reference code's choice, and the default of analysis.primary.
DEFAULT_METRIC = "delta_cos_agop"


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
    metrics: dict[str, float | None]
    spectra: dict[str, Spectrum]


def _spectrum_of_psd(a: torch.Tensor) -> Spectrum:
    """Spectrum of a symmetric PSD matrix A (d, d) itself, rounding noise dropped
    (:func:`denoise_psd_eigenvalues`)."""
    values, vectors = torch.linalg.eigh(a)
    order = torch.argsort(values, descending=True)
    return Spectrum(denoise_psd_eigenvalues(values)[order], vectors[:, order], a.shape[0])


@dataclass
class _Target:
    """The AGOP (``power`` 1) or its square root (1/2) as V diag(s) V^T from the AGOP's
    spectrum, with |A|_F^2 and the sum of its entries, so that it is never formed."""

    weights: torch.Tensor
    sq_norm: torch.Tensor
    total: torch.Tensor


def _target(spec: Spectrum, power: float) -> _Target:
    s = spec.values if power == 1 else spec.values**power
    ones = spec.vectors.sum(0)  # 1^T v_j: 1^T A 1 = sum_j s_j (1^T v_j)^2
    return _Target(s, (s * s).sum(), (s * ones * ones).sum())


def _correlation(
    inner: torch.Tensor, na2: torch.Tensor, sum_a: torch.Tensor, t: _Target, d: int, kind: str
) -> float | None:
    """:func:`correlation` from <A, B>, |A|_F^2, |B|_F^2 and the entry sums (equal up to rounding)."""
    nb2 = t.sq_norm
    if kind == "pearson":  # <A - mean A, B - mean B> = <A, B> - sum(A) sum(B) / d^2
        inner = inner - sum_a * t.total / (d * d)
        na2 = na2 - sum_a * sum_a / (d * d)
        nb2 = nb2 - t.total * t.total / (d * d)
    elif kind != "cos":
        raise ValueError(f"unknown correlation kind {kind!r}")
    if na2 <= 0 or nb2 <= 0:
        return None
    value = float(inner / (na2.sqrt() * nb2.sqrt()))
    return value if math.isfinite(value) else None


def compare_layer(
    w: torch.Tensor, w0: torch.Tensor, k: torch.Tensor, with_spectra: bool = True
) -> LayerComparison:
    """All NFM/AGOP correlation variants for one hidden layer.

    Args:
        w: weight (d_out, d_in) now; w0: weight at initialisation, same shape.
        k: the layer's Jacobian kernel (d_out, d_out).
    Returns:
        metrics ``{raw,delta}_{cos,pearson}_{agop,sqrt}``; ``delta`` variants are None when
        W == W0 (epoch 0). ``spectra``: ``agop``, ``nfm_raw`` and (when defined) ``nfm_delta``,
        shared by the ``sqrt`` variants and the spectral summaries.

    No (d_in, d_in) matrix beyond the AGOP of a square layer is formed: with the AGOP's
    spectrum V diag(l) V^T and an NFM X^T X (X = W or W - W0), <X^T X, AGOP^p> =
    sum_j l_j^p |X v_j|^2 needs one product X V for both targets, a third of the cost of
    forming X^T X for layer 0 (1024 x 3072).
    """
    w, w0, k = w.double(), w0.double(), k.double()
    d = w.shape[1]
    if w.shape[0] >= d:  # AGOP no larger than K: one eigh of the AGOP instead of K's and B^T B's
        agop_spec = _spectrum_of_psd(agop_from_kernel(w, k))
    else:
        agop_spec = spectrum_of_gram(psd_factor(k) @ w)
    spectra = {"agop": agop_spec}
    targets = {"agop": _target(agop_spec, 1), "sqrt": _target(agop_spec, 0.5)}
    metrics: dict[str, float | None] = {}
    nfm_factors = {"raw": w, "delta": w - w0}
    for nfm_kind in NFM_KINDS:
        x = nfm_factors[nfm_kind]
        if with_spectra and bool(x.any()):
            spectrum = spectra[f"nfm_{nfm_kind}"] = spectrum_of_gram(x)
            na2 = (spectrum.values * spectrum.values).sum()
        else:
            g = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
            na2 = (g * g).sum()  # |X^T X|_F = |X X^T|_F
        ones = x.sum(1)  # X 1: 1^T X^T X 1 = |X 1|^2
        proj = x @ agop_spec.vectors
        col = (proj * proj).sum(0)  # |X v_j|^2
        inners = {target: col @ targets[target].weights for target in TARGETS}
        for corr_kind in CORR_KINDS:
            for target in TARGETS:
                metrics[f"{nfm_kind}_{corr_kind}_{target}"] = _correlation(
                    inners[target], na2, ones @ ones, targets[target], d, corr_kind
                )
    return LayerComparison(metrics, spectra)
