"""A data set's files in ``data.root``: download a missing one into a temporary file beside
it, check its MD5 and rename it into place; check the MD5 of one that is there.

Every dataset that reads files (SVHN, MNIST, Fashion-MNIST, CIFAR-10/100) goes through
:func:`ensure_file`, so an interrupted or corrupt download never leaves a file behind, and a
failure is one line (a :class:`~agop_sweep.errors.DataError`) that names the file and what to
do without network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from agop_sweep.errors import DataError
from agop_sweep.store.atomic import atomic_path

log = logging.getLogger(__name__)


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_writable(root: Path, what: str) -> None:
    """``root`` is (or can be made) a directory that takes new files; ``what`` names the
    files a user would put there by hand instead."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=root).close()
    except OSError as e:
        raise DataError(
            f"data.root={root} is not a writable directory ({e.strerror}); "
            f"set data.root to one, or put {what} there by hand"
        ) from None


def download(url: str, dest: Path, md5: str | None, *, offline: str | None = None,
             what: str | None = None, timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``dest`` through a temporary file, verify it, then rename it.

    An interrupted or corrupt download leaves no file at ``dest``. ``offline`` completes the
    sentence "without network, ..." of the error when the server cannot be reached (default:
    put <dest's name> into <its directory>); ``what`` names the files for a root that is not
    writable.
    """
    check_writable(dest.parent, what or dest.name)
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
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"Cannot download {url} ({reason}); without network, "
            f"{offline or f'put {dest.name} into {dest.parent}'}"
        ) from None


def ensure_file(path: Path, url: str, md5: str | None, *, verify: bool, allow_download: bool,
                dataset: str, offline: str | None = None, what: str | None = None) -> Path:
    """``path``, downloaded from ``url`` when missing, its MD5 checked against ``md5`` when
    ``verify`` (and an MD5 is known). ``dataset`` names the data set in the errors
    (``SVHN``, ``MNIST``); ``offline`` and ``what`` as for :func:`download`."""
    if not path.exists():
        if not allow_download:
            raise DataError(
                f"{path} is missing and data.download=false; put {dataset}'s {path.name} there"
            )
        download(url, path, md5 if verify else None, offline=offline, what=what)
    elif verify and md5 is not None:
        got = md5sum(path)
        if got != md5:
            raise DataError(
                f"{path} has MD5 {got}, expected {md5} (corrupt or not {dataset}); delete it to "
                "download it again, or set data.verify=false for a file of your own"
            )
    return path
