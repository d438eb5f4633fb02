"""MNIST and Fashion-MNIST in torchvision's layout: ``<root>/MNIST/raw/`` and
``<root>/FashionMNIST/raw/`` hold the idx files (``train-images-idx3-ubyte``, ...), gzipped
as published or unpacked as torchvision leaves them.

The idx format is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order. The reader
checks each part against what the file must be (unsigned bytes; 3 dimensions of N x 28 x 28
for images, 1 for labels) and the file's size against the header's, before it allocates any
array, so a truncated, padded or foreign file is one line naming it.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agop_sweep.data import download
from agop_sweep.errors import DataError

UBYTE = 0x08  # the idx type code of unsigned bytes, the only type MNIST's files use
CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxSource:
    """One data set of idx files: its folder under data.root, its files' MD5s (of the .gz
    files as published), the default base URL, and the class names."""

    name: str  # the data set in messages
    folder: str  # torchvision's class name: <root>/<folder>/raw/
    md5s: dict[str, str]
    url: str
    classes: tuple[str, ...]


MNIST = IdxSource(
    "MNIST", "MNIST",
    {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
     "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
     "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    tuple(str(d) for d in range(10)),
)
FASHION_MNIST = IdxSource(
    "Fashion-MNIST", "FashionMNIST",
    {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
     "Ankle boot"),
)
SOURCES = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}
SPLITS = {"train": "train", "test": "t10k"}  # the files' prefixes


def _fail(path: Path, why: str) -> DataError:
    return DataError(f"{path} is not a readable idx file ({why}); delete it to download it again")


def _read_exactly(f, n: int, path: Path, what: str) -> bytes:
    """``n`` bytes of ``f``, read in chunks (a header may claim more than the file holds)."""
    parts, got = [], 0
    while got < n:
        block = f.read(min(CHUNK, n - got))
        if not block:
            raise _fail(path, f"{what}: the file ends after {got} of {n} bytes (truncated)")
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def read_idx(path: Path, ndim: int, dims: tuple[int, ...] = ()) -> np.ndarray:
    """The uint8 array of the idx file ``path`` (gzipped when its name ends in .gz), which
    must have ``ndim`` dimensions, the trailing ones equal to ``dims``."""
    gz = path.suffix == ".gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise _fail(path, f"{len(magic)} bytes, shorter than an idx header")
            expected = bytes([0, 0, UBYTE, ndim])
            if magic != expected:
                raise _fail(path, f"magic number 0x{magic.hex()}, expected 0x{expected.hex()}: "
                                  f"unsigned bytes in {ndim} dimension{'s' * (ndim > 1)}")
            shape = struct.unpack(f">{ndim}I", _read_exactly(f, 4 * ndim, path, "the dimensions"))
            if shape[0] == 0 or (dims and tuple(shape[1:]) != dims):
                want = " x ".join(["N >= 1", *(str(d) for d in dims)])
                raise _fail(path, f"dimensions {' x '.join(map(str, shape))}, expected {want}")
            size = int(np.prod(shape))
            header = 4 + 4 * ndim
            if not gz and (actual := os.path.getsize(path)) != header + size:
                raise _fail(path, f"{actual} bytes, but its header promises {header + size} "
                                  f"({' x '.join(map(str, shape))} values after {header} header bytes)")
            values = _read_exactly(f, size, path, "the values")
            if f.read(1):
                raise _fail(path, f"more data than the {' x '.join(map(str, shape))} values its "
                                  "header promises")
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _fail(path, f"{type(e).__name__}: {e}") from None
    return np.frombuffer(values, dtype=np.uint8).reshape(shape)


def _find(raw: Path, name: str) -> Path | None:
    """``name``.gz (as published, so its MD5 can be checked), else ``name`` (as torchvision
    unpacks it), else None."""
    for path in (raw / f"{name}.gz", raw / name):
        if path.exists():
            return path
    return None


def load_split(source: IdxSource, root: str | os.PathLike[str], split: str, base_url: str,
               verify: bool = True, allow_download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` (train or test) of ``source``: uint8 images (N, 1, 28, 28) and int64
    labels (N,) in 0..9. Missing files are downloaded (gzipped) from ``base_url``."""
    raw = Path(root) / source.folder / "raw"
    names = list(source.md5s)
    offline = f"put {', '.join(names)} (from {base_url}) into {raw}"
    arrays = []
    for kind, ndim, dims in (("images", 3, (28, 28)), ("labels", 1, ())):
        name = f"{SPLITS[split]}-{kind}-idx{ndim}-ubyte"
        path = _find(raw, name)
        if path is None or path.suffix == ".gz":  # an unpacked file has no published MD5
            path = download.ensure_file(
                raw / f"{name}.gz", base_url + f"{name}.gz", source.md5s[f"{name}.gz"],
                verify=verify, allow_download=allow_download, dataset=source.name,
                offline=offline, what=f"the {source.name} files")
        arrays.append((path, read_idx(path, ndim, dims)))
    (image_path, images), (label_path, labels) = arrays
    if len(images) != len(labels):
        raise DataError(f"{image_path} holds {len(images)} images but {label_path} "
                        f"{len(labels)} labels; delete both to download them again")
    if (bad := labels >= len(source.classes)).any():
        raise DataError(f"{label_path} holds label {int(labels[bad][0])} ({int(bad.sum())} of "
                        f"{len(labels)} outside 0..{len(source.classes) - 1}); delete it to "
                        "download it again")
    return images.reshape(len(images), 1, 28, 28), labels.astype(np.int64)
