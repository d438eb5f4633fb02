"""CIFAR-10 and CIFAR-100 in torchvision's layout: ``<root>/cifar-10-batches-py/`` (data_batch_1
.. data_batch_5, test_batch) and ``<root>/cifar-100-python/`` (train, test), unpacked from the
official tarballs, which are downloaded into ``<root>`` when the batches are missing.

The batches are Python pickles, and a pickle can name any importable callable to run while it
loads. :class:`BatchUnpickler` admits only what the official files contain, NumPy's array
reconstruction, ``ndarray`` and ``dtype`` (under ``numpy.core.multiarray`` as old NumPy wrote
them, or ``numpy._core.multiarray``), and ``_codecs.encode`` for latin-1 text, with which
Python 3 writes bytes at pickle protocol 2; dicts, lists, tuples, strings and numbers need no
global. A batch that names anything else is refused with one line naming the file, before the
callable is looked up, let alone called.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agop_sweep.data import download
from agop_sweep.errors import DataError
from agop_sweep.store.atomic import atomic_path

try:  # NumPy >= 2 keeps the array reconstruction here; numpy.core is a deprecated alias
    from numpy._core.multiarray import _reconstruct  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

URL = "https://www.cs.toronto.edu/~kriz/"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)


@dataclass(frozen=True)
class CifarSource:
    """One CIFAR: its tarball, the folder it unpacks to, and the batches of each split with
    their MD5s (torchvision's)."""

    name: str
    tarball: str
    tarball_md5: str
    folder: str
    splits: dict[str, tuple[str, ...]]
    md5s: dict[str, str]
    meta: str  # the class names' file: unpacked as torchvision expects, not read here


CIFAR10 = CifarSource(
    "CIFAR-10", "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    {"data_batch_1": "c99cafc152244af753f735de768cd75f",
     "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
     "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
     "data_batch_4": "634d18415352ddfa80567beed471001a",
     "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
     "test_batch": "40351d587109b95175f43aff81a1287e",
     "batches.meta": "5ff9c542aee3614f3951f8cda6e48888"},
    "batches.meta",
)
CIFAR100 = CifarSource(
    "CIFAR-100", "cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
    {"train": ("train",), "test": ("test",)},
    {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
     "meta": "7973b15100ade9c7d40fb424638fde48"},
    "meta",
)
SOURCES = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2: latin-1 text, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode of {type(text).__name__} as {encoding!r}")
    return text.encode("latin1")


# (module, name) -> the object itself: nothing is imported by a name that the file spells.
ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED` globals; any other is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise RefusedGlobal(str(module), str(name)) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id")


def _text(key: Any) -> Any:
    return key.decode("latin1") if isinstance(key, bytes) else key


def read_batch(path: Path) -> dict[str, Any]:
    """The dict of one batch file, its keys as str (Python 2 wrote them as str, Python 3 at
    protocol 2 as bytes). A pickle that names a global outside :data:`ALLOWED`, or that is
    truncated or not a pickle, is a one-line DataError naming ``path``."""
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="latin1").load()
    except RefusedGlobal as e:
        raise DataError(
            f"{path} is refused: its pickle calls {e.module}.{e.name}, which no CIFAR batch "
            "contains (it could run code); nothing in it was run. Delete it and download the "
            "official files again"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # a truncated or foreign pickle raises many types
        raise DataError(
            f"{path} is not a readable CIFAR batch ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); delete it to download it again"
        ) from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a pickled {type(batch).__name__}, not a CIFAR batch's dict; "
                        "delete it to download it again")
    return {_text(k): v for k, v in batch.items()}


def _labels(batch: dict[str, Any], key: str, n: int, n_classes: int, path: Path) -> np.ndarray:
    if key not in batch:
        raise DataError(f"{path} has no {key!r} (it has {', '.join(map(str, batch))}); delete it to "
                        "download it again")
    raw = batch[key]
    ok = isinstance(raw, (list, tuple)) and all(type(v) is int for v in raw)
    ok = ok or (isinstance(raw, np.ndarray) and raw.ndim == 1 and raw.dtype.kind in "iu")
    if not ok:
        raise DataError(f"{path}: {key!r} is not a list of integer labels; delete it to download it "
                        "again")
    labels = np.asarray(raw, dtype=np.int64)
    if len(labels) != n:
        raise DataError(f"{path} holds {n} images but {len(labels)} {key!r}; delete it to download "
                        "it again")
    if (bad := (labels < 0) | (labels >= n_classes)).any():
        raise DataError(f"{path} holds label {int(labels[bad][0])} in {key!r} ({int(bad.sum())} of "
                        f"{n} outside 0..{n_classes - 1}); delete it to download it again")
    return labels


def parse_batch(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 in (channel, row, column) order, as each row of the batch's
    ``data`` is laid out, and the int64 labels under ``label_key``."""
    batch = read_batch(path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072 or len(data) == 0:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) \
            else type(data).__name__
        raise DataError(f"{path}: 'data' is a {what}, expected uint8 of shape N x 3072 (N >= 1); "
                        "delete it to download it again")
    labels = _labels(batch, label_key, len(data), n_classes, path)
    return data.reshape(len(data), 3, 32, 32), labels


def _extract(source: CifarSource, tarball: Path, names: list[str], folder: Path) -> None:
    """``names`` from ``tarball`` into ``folder``, each through a temporary file: only those
    regular members are read, so no path in the archive can write outside ``folder``. The
    class names' file comes along where the tarball has it (torchvision reads it)."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for name in [*names, source.meta]:
                try:
                    member = tar.getmember(f"{source.folder}/{name}")
                except KeyError:
                    if name == source.meta:
                        continue
                    raise DataError(f"{tarball} lacks {source.folder}/{name}; delete it to download "
                                    "it again") from None
                stream = tar.extractfile(member) if member.isfile() else None
                if stream is None:
                    raise DataError(f"{tarball}: {source.folder}/{name} is not a file; delete it to "
                                    "download it again")
                with stream, atomic_path(folder / name) as tmp, open(tmp, "wb") as out:
                    while block := stream.read(1 << 20):
                        out.write(block)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{tarball} is not a readable {source.name} tarball ({type(e).__name__}: "
                        f"{e}); delete it to download it again") from None


def ensure_batches(source: CifarSource, root: str | os.PathLike[str], base_url: str,
                   verify: bool = True, allow_download: bool = True) -> Path:
    """The folder of ``source``'s batches under ``root``. Batches that are missing are
    unpacked from the tarball in ``root``, which is downloaded first when it is missing too.
    With ``verify``, the tarball's MD5 (when it is used) and every batch's are checked."""
    root = Path(root)
    folder = root / source.folder
    needed = [b for batches in source.splits.values() for b in batches]
    missing = [b for b in needed if not (folder / b).exists()]
    if missing:
        tarball = download.ensure_file(
            root / source.tarball, base_url + source.tarball, source.tarball_md5, verify=verify,
            allow_download=allow_download, dataset=source.name,
            offline=(f"put {source.tarball} (from {base_url}{source.tarball}) or the folder "
                     f"{source.folder}/ it unpacks to into {root}"),
            what=f"{source.tarball} or {source.folder}/")
        _extract(source, tarball, missing, folder)
    if verify:
        for name in needed:
            got = download.md5sum(folder / name)
            if got != source.md5s[name]:
                raise DataError(
                    f"{folder / name} has MD5 {got}, expected {source.md5s[name]} (corrupt or not "
                    f"{source.name}); delete it to unpack it again, or set data.verify=false for "
                    "files of your own")
    return folder


def load_split(source: CifarSource, root: str | os.PathLike[str], split: str, base_url: str,
               labels: str = "fine", verify: bool = True,
               allow_download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` (train or test) of ``source``: uint8 images (N, 3, 32, 32) and int64
    labels, CIFAR-100's ``fine`` (100 classes) or ``coarse`` (20)."""
    folder = ensure_batches(source, root, base_url, verify, allow_download)
    if source is CIFAR10:
        key, n_classes = "labels", len(CIFAR10_CLASSES)
    else:
        key = f"{labels}_labels"
        n_classes = len(CIFAR100_FINE if labels == "fine" else CIFAR100_COARSE)
    parts = [parse_batch(folder / name, key, n_classes) for name in source.splits[split]]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def classes(source: CifarSource, labels: str = "fine") -> tuple[str, ...]:
    if source is CIFAR10:
        return CIFAR10_CLASSES
    return CIFAR100_FINE if labels == "fine" else CIFAR100_COARSE
