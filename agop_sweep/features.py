"""Layer-0 feature arrays across analysed epochs, saved per run as features.npz.

features.npz holds: ``epochs`` (E,), ``nfm_diag``, ``nfm_delta_diag``, ``agop_diag`` (E, d):
the diagonals of W^T W, (W-W0)^T (W-W0) and the AGOP of layer 0 at each analysed epoch;
``nfm_eigvecs``, ``agop_eigvecs`` (k, d): their top eigenvectors at the last analysed epoch
(``eigvec_epoch``); ``eigvals_agop_<l>``, ``eigvals_nfm_<l>``: every layer's spectrum at
that epoch; ``image_shape`` (3,): (channels, height, width) of an input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agop_sweep.atomic import write_atomic

if TYPE_CHECKING:
    from agop_sweep.analysis import Analysis

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
                "nfm_eigvecs": analysis.layer0["nfm_eigvecs"],
                "agop_eigvecs": analysis.layer0["agop_eigvecs"],
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
            out["nfm_eigvecs"] = self.latest["nfm_eigvecs"]
            out["agop_eigvecs"] = self.latest["agop_eigvecs"]
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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureLog:
        log = cls()
        if d:
            log.epochs = list(d["epochs"])
            log.diagonals = {k: list(v) for k, v in d["diagonals"].items()}
            log.latest = d["latest"]
        return log


def load_features(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
