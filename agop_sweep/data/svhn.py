"""SVHN in torchvision's file layout: verify, download, and read the .mat files."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from tqdm import tqdm

from agop_sweep.errors import DataError
from agop_sweep.store.atomic import atomic_path

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


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file, verify it, then rename it.

    An interrupted or corrupt download leaves no file at ``dest``.
    """
    _check_writable(dest.parent)
    log.info("Downloading %s to %s", url, dest)
    try:
        with atomic_path(dest) as tmp:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                    while block := response.read(1 << 20):
                        f.write(block)
                        bar.update(len(block))
                if total is not None and f.tell() != total:
                    raise DataError(
                        f"Download of {url} stopped after {f.tell()} of {total} bytes; "
                        "run again to retry"
                    )
            if md5 is not None and (got := md5sum(tmp)) != md5:
                raise DataError(
                    f"Downloaded {dest.name} has MD5 {got}, expected {md5}; run again to retry"
                )
    except DataError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"Cannot download {url} ({reason}); without network, put "
            f"{', '.join(f.filename for f in FILES.values())} into {dest.parent}"
        ) from None


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=root).close()
    except OSError as e:
        raise DataError(
            f"data.root={root} is not a writable directory ({e.strerror}); "
            "set data.root to one, or put the SVHN files there by hand"
        ) from None


def ensure_file(root: Path, spec: SvhnFile, verify: bool, allow_download: bool, base_url: str) -> Path:
    """Return the path of ``spec`` under ``root``, downloading it when missing."""
    path = root / spec.filename
    if not path.exists():
        if not allow_download:
            raise DataError(
                f"{path} is missing and data.download=false; put SVHN's {spec.filename} there"
            )
        download(base_url + spec.filename, path, spec.md5 if verify else None)
    elif verify:
        got = md5sum(path)
        if got != spec.md5:
            raise DataError(
                f"{path} has MD5 {got}, expected {spec.md5} (corrupt or not SVHN); delete it to "
                "download it again, or set data.verify=false for a file of your own"
            )
    return path


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
