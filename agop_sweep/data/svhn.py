"""SVHN in torchvision's file layout: verify, download, and read the .mat files."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from agop_sweep.data import download
from agop_sweep.data.download import md5sum as md5sum  # svhn.md5sum, as before
from agop_sweep.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SvhnFile:
    split: str
    filename: str
    md5: str


# The same files and MD5s as torchvision.datasets.SVHN.
FILES = {
    "train": SvhnFile("train", "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
    "test": SvhnFile("test", "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
}


def ensure_file(root: Path, spec: SvhnFile, verify: bool, allow_download: bool, base_url: str) -> Path:
    """Return the path of ``spec`` under ``root``, downloading it when missing (through
    :mod:`agop_sweep.data.download`: a temporary file, MD5-checked, then renamed)."""
    names = ", ".join(f.filename for f in FILES.values())
    return download.ensure_file(
        root / spec.filename, base_url + spec.filename, spec.md5, verify=verify,
        allow_download=allow_download, dataset="SVHN", offline=f"put {names} into {root}",
        what="the SVHN files",
    )


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN .mat file.

    Returns ``(x, y)``: x uint8 of shape (N, 3, 32, 32) in torchvision's (channel, row,
    column) order, y int64 of shape (N,) with SVHN's label 10 mapped to digit 0. A label
    outside SVHN's 1..10 (a 0 for digit 0 included) is a DataError, not a silent digit.
    """
    try:
        mat = scipy.io.loadmat(path)
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    except MemoryError:
        raise
    except Exception as e:  # scipy raises many types on a truncated or foreign file
        raise DataError(
            f"{path} is not a readable SVHN .mat file ({type(e).__name__}: {e}); "
            "delete it to download it again"
        ) from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3] or y.size == 0:
        raise DataError(
            f"{path} holds X of shape {x.shape} and y of {y.size} labels, expected "
            "32x32x3xN (N >= 1) and N labels; delete it to download it again"
        )
    if x.dtype != np.uint8 or not np.issubdtype(y.dtype, np.number):
        raise DataError(
            f"{path} holds X of type {x.dtype} and y of type {y.dtype}, expected uint8 pixels "
            "and numeric labels as in SVHN's files; delete it to download it again"
        )
    raw = y.reshape(-1)
    bad = (raw < 1) | (raw > 10) | (raw != np.floor(raw))
    if bad.any():  # SVHN labels digit 0 as 10: a 0 means a file labelled in another convention
        raise DataError(
            f"{path} holds label {raw[bad][0].item()!r} in y ({int(bad.sum())} of {raw.size} "
            "labels outside SVHN's 1..10, where 10 is digit 0); delete it to download it "
            "again, or label digit 0 as 10 in a file of your own"
        )
    labels = raw.astype(np.int64)
    labels[labels == 10] = 0
    # (row, col, channel, N) -> (N, channel, row, col), as torchvision's SVHN + ToTensor
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1))), labels


def load_split(
    root: str | os.PathLike[str],
    split: str,
    base_url: str,
    verify: bool = True,
    allow_download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    spec = FILES[split]
    path = ensure_file(Path(root), spec, verify, allow_download, base_url)
    return read_mat(path)
