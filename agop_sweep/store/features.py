"""Layer-0 feature arrays across analysed epochs, saved per run as features.npz.

features.npz holds: ``epochs`` (E,), ``nfm_diag``, ``nfm_delta_diag``, ``agop_diag`` (E, d):
the diagonals of W^T W, (W-W0)^T (W-W0) and the AGOP of layer 0 at each analysed epoch;
``nfm_eigvecs``, ``agop_eigvecs`` (k, d): the top eigenvectors of W^T W and the AGOP at the
last analysed epoch (``eigvec_epoch``), rows in descending order of eigenvalue, zero rows where
the matrix has fewer (``nfm_delta_eigvecs`` too when the analysis provides it);
``eigvals_agop_<l>``, ``eigvals_nfm_<l>``: every layer's spectrum at that epoch (descending);
``image_shape`` (3,): (channels, height, width) of an input.

A length-d vector is an image in the (channel, row, column) order of docs/datasets.md: entry
``c * H * W + r * W + k`` is pixel (r, k) of channel c; :func:`to_image` undoes the flattening.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agop_sweep.errors import UserError
from agop_sweep.store.atomic import write_atomic

if TYPE_CHECKING:
    from agop_sweep.analyze.layers import Analysis

FILENAME = "features.npz"
DIAGONALS = ("nfm_diag", "nfm_delta_diag", "agop_diag")


class FeatureLog:
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.diagonals: dict[str, list[np.ndarray]] = {k: [] for k in DIAGONALS}
        self.latest: dict[str, Any] = {}

    def add(self, epoch: int, analysis: Analysis) -> None:
        if not analysis.layer0:
            return
        if epoch in self.epochs:  # re-analysis of an epoch replaces it
            i = self.epochs.index(epoch)
            del self.epochs[i]
            for v in self.diagonals.values():
                del v[i]
        self.epochs.append(epoch)
        for k in DIAGONALS:
            self.diagonals[k].append(np.asarray(analysis.layer0[k], dtype=np.float32))
        if epoch >= max(self.epochs):
            self.latest = {
                "eigvec_epoch": epoch,
                # nfm_eigvecs, agop_eigvecs, and any further *_eigvecs the analysis provides
                **{k: v for k, v in analysis.layer0.items() if k.endswith("_eigvecs")},
                "eigvals": {k: [np.asarray(v) for v in vals] for k, vals in analysis.eigvals.items()},
            }

    def __len__(self) -> int:
        return len(self.epochs)

    def arrays(self, image_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        order = np.argsort(self.epochs)
        out: dict[str, np.ndarray] = {
            "epochs": np.asarray(self.epochs, dtype=np.int64)[order],
            "image_shape": np.asarray(image_shape, dtype=np.int64),
        }
        for k in DIAGONALS:
            out[k] = np.stack(self.diagonals[k])[order]
        if self.latest:
            out["eigvec_epoch"] = np.asarray(self.latest["eigvec_epoch"])
            out.update({k: np.asarray(v) for k, v in self.latest.items() if k.endswith("_eigvecs")})
            for name, per_layer in self.latest["eigvals"].items():
                short = {"agop": "agop", "nfm_raw": "nfm"}[name]
                for l, vals in enumerate(per_layer):
                    out[f"eigvals_{short}_{l}"] = vals
        return out

    def save(self, run_dir: str | os.PathLike[str], image_shape: tuple[int, ...]) -> None:
        if not self.epochs:
            return
        arrays = self.arrays(image_shape)
        write_atomic(Path(run_dir) / FILENAME, lambda f: np.savez_compressed(f, **arrays))

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "diagonals": self.diagonals, "latest": self.latest}

    def load_dict(self, d: dict[str, Any]) -> None:
        """Replace this log's contents with a :meth:`to_dict` of another (resume)."""
        self.epochs = list(d["epochs"]) if d else []
        self.diagonals = {k: list(v) for k, v in d["diagonals"].items()} if d else {k: [] for k in DIAGONALS}
        self.latest = d["latest"] if d else {}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureLog:
        log = cls()
        log.load_dict(d)
        return log


class FeaturesError(UserError):
    """A features.npz that this version cannot read (garbage, half copied, another program's):
    the one-line message names the file."""


def load_features(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a features.npz, checked against the layout above; :class:`FeaturesError`
    naming the file for anything else, so that no reader meets a KeyError or a BadZipFile."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy: one array
            raise FeaturesError(f"{path} is not an agop_sweep features.npz: a single array, not an archive")
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except FeaturesError:
        raise
    except Exception as e:  # np.load raises whatever its zip, pickle and header readers do
        raise FeaturesError(f"{path} cannot be read as a features.npz ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    problem = features_problem(arrays)
    if problem is not None:
        raise FeaturesError(f"{path} is not an agop_sweep features.npz: {problem}")
    return arrays


def features_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What keeps ``arrays`` from being a features.npz of the layout above, or None: every
    array the figures read, numeric, with shapes that agree (E epochs, d = C * H * W)."""
    for key in ("epochs", "image_shape", *DIAGONALS):
        if key not in arrays:
            return f"it lacks {key!r}"
    for key, a in arrays.items():
        if a.dtype.kind not in "biuf":
            return f"{key!r} holds {a.dtype}, not numbers"
    shape, epochs = arrays["image_shape"], arrays["epochs"]
    if shape.shape != (3,) or shape.dtype.kind not in "iu" or (shape < 1).any():
        return f"'image_shape' is {shape.tolist()}, not 3 positive integers"
    if epochs.ndim != 1 or epochs.dtype.kind not in "iu" or not len(epochs):
        return "'epochs' is not a non-empty list of integers"
    d = int(np.prod(shape.astype(np.int64)))
    for key in DIAGONALS:
        if arrays[key].shape != (len(epochs), d):
            return f"{key!r} has shape {list(arrays[key].shape)}, not [{len(epochs)}, {d}]"
    for key, a in arrays.items():
        if key.endswith("_eigvecs") and (a.ndim != 2 or a.shape[1] != d or not a.shape[0]):
            return f"{key!r} has shape {list(a.shape)}, not [k, {d}]"
        if key.startswith("eigvals_") and a.ndim != 1:
            return f"{key!r} is not a list of eigenvalues"
    if "eigvec_epoch" in arrays and arrays["eigvec_epoch"].shape != ():
        return "'eigvec_epoch' is not one epoch"
    return None


def to_image(
    vector: np.ndarray, image_shape: tuple[int, ...] | np.ndarray, per_channel: bool = False
) -> np.ndarray:
    """A flattened input-space vector (d,) as an image.

    Returns (H, W) summed over the channels, or (C, H, W) with ``per_channel``. Raises
    ValueError when ``d`` is not C * H * W.
    """
    shape = tuple(int(s) for s in image_shape)
    vector = np.asarray(vector)
    if len(shape) != 3 or vector.size != int(np.prod(shape)):
        raise ValueError(f"a vector of {vector.size} entries is not an image of shape {list(shape)}")
    image = vector.reshape(shape)  # C order = (channel, row, column), as the inputs were flattened
    return image if per_channel else image.sum(axis=0)


def orient(vector: np.ndarray) -> np.ndarray:
    """An eigenvector with the sign that makes its largest-magnitude entry positive.

    Eigenvectors are defined up to sign; fixing it keeps images comparable across runs.
    """
    vector = np.asarray(vector)
    if vector.size == 0:
        return vector
    return -vector if vector.flat[int(np.argmax(np.abs(vector)))] < 0 else vector


def nearest_epochs(available: list[int] | np.ndarray, targets: list[int]) -> list[int]:
    """For each target, the available epoch closest to it (ties to the earlier), without repeats."""
    avail = sorted(int(e) for e in available)
    out: list[int] = []
    for t in targets:
        if not avail:
            break
        best = min(avail, key=lambda e: (abs(e - t), e))
        if best not in out:
            out.append(best)
    return out
