"""The analysis's symmetric eigenproblems: every eigenpair, or every eigenvalue with only the
leading eigenvectors.

On the CPU they go to LAPACK through SciPy, which offers what torch.linalg does not: the
MRRR driver (``syevr``), and eigenvectors for a subset of the spectrum at a fraction of the
cost of all of them. They run on one thread: at d = 1024 the divide-and-conquer driver behind
torch.linalg.eigh took 0.24 s on two idle cores but 2-15 s while one other process was busy
(its threads wait on each other at every merge), and two-threaded ``syevr`` 1.7-4 s; one
thread of ``syevr`` stayed at 0.35-0.45 s. On a GPU torch.linalg.eigh serves both. Inputs and
results are torch tensors on the input's device, in its dtype (float64 in the analysis).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import torch
from threadpoolctl import ThreadpoolController


@functools.cache
def _controller() -> ThreadpoolController:
    """The BLAS libraries loaded (SciPy's among them), found once: a search costs ~2 ms."""
    return ThreadpoolController()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    with _controller().limit(limits=1, user_api="blas"):
        yield


def _cpu(a: torch.Tensor) -> bool:
    return a.device.type == "cpu"


def eigh_descending(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All eigenpairs of a symmetric ``a`` (d, d): values (d,) descending, vectors (d, d) as
    columns in the same order."""
    if a.shape[0] == 0:
        return a.new_zeros(0), a.new_zeros(0, 0)
    if not bool(torch.isfinite(a).all()):
        raise np.linalg.LinAlgError("the matrix has non-finite entries")
    if _cpu(a):
        values, vectors = _lapack_eigh(a.numpy())
        values, vectors = torch.from_numpy(values), torch.from_numpy(vectors)
    else:
        values, vectors = torch.linalg.eigh(a)
    return values.flip(0).to(a), vectors.flip(1).to(a)


# LAPACK drivers in the order tried: MRRR, then the QR iteration, the slowest and the most
# robust, where MRRR fails to converge (extreme dynamic range).
DRIVERS = ("evr", "ev")


def _lapack_eigh(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every eigenpair of ``m`` (d, d), ascending, by the first of DRIVERS that converges."""
    for driver in DRIVERS:
        try:
            with _one_thread():
                return scipy.linalg.eigh(m, driver=driver, check_finite=False)
        except (np.linalg.LinAlgError, ValueError) as e:
            error = e
    raise np.linalg.LinAlgError(f"eigendecomposition failed with every driver: {error}")


def eigvalsh_with_top(a: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenvalue of a symmetric ``a`` (d, d), descending (d,), and the eigenvectors of
    the ``top`` largest (d, min(top, d)).

    On the CPU: one reduction to tridiagonal form A = Q T Q^T (LAPACK ``sytrd``, the O(d^3)
    part), every eigenvalue of T and the ``top`` eigenvectors z of T (``stemr``, O(d^2)), and
    Q z by applying ``sytrd``'s Householder reflectors to z (O(d^2 top)): about a third of the
    cost of every eigenvector (``bench/agop.py`` times both).
    """
    d = a.shape[0]
    top = min(top, d)
    if d == 0 or top == d or not _cpu(a):
        values, vectors = eigh_descending(a)
        return values, vectors[:, :top]
    try:
        return _values_and_top(a, top)
    except (np.linalg.LinAlgError, ValueError):  # MRRR did not converge: all eigenpairs, robustly
        values, vectors = eigh_descending(a)
        return values, vectors[:, :top]


def _values_and_top(a: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = a.shape[0]
    if not bool(torch.isfinite(a).all()):
        raise np.linalg.LinAlgError("the matrix has non-finite entries")
    with _one_thread():
        lwork, info = scipy.linalg.lapack.dsytrd_lwork(d, lower=1)
        c, diag, off, tau, info = scipy.linalg.lapack.dsytrd(a.numpy(), lower=1, lwork=int(lwork))
        if info != 0:
            raise np.linalg.LinAlgError(f"sytrd failed (info {info})")
        values = scipy.linalg.eigh_tridiagonal(diag, off, eigvals_only=True, check_finite=False)
        if top == 0:
            return torch.from_numpy(values[::-1].copy()).to(a), a.new_zeros(d, 0)
        _, z = scipy.linalg.eigh_tridiagonal(diag, off, select="i", select_range=(d - top, d - 1),
                                             check_finite=False, lapack_driver="stemr")
    z = z[:, ::-1].copy()  # descending (a copy: one column may keep a negative stride)
    # Q = H_0 H_1 ... H_{d-2}, H_j = I - tau_j v v^T with v = (0_(j+1), 1, c[j+2:, j]).
    v = np.empty(d)
    for j in range(d - 2, -1, -1):
        v[j + 1] = 1.0
        v[j + 2:] = c[j + 2:, j]
        block = z[j + 1:]
        block -= np.outer(v[j + 1:], tau[j] * (v[j + 1:] @ block))
    return torch.from_numpy(values[::-1].copy()).to(a), torch.from_numpy(z).to(a)
