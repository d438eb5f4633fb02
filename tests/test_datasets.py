"""MNIST, Fashion-MNIST, CIFAR-10/100 and npz from files written here in their official formats
(gzipped and plain idx; CIFAR batches pickled at protocol 2 as Python 2 and old NumPy wrote
them, and as Python 3 writes them): layout, labels, data.n_train's stratified subset,
data.normalize=standardize, downloads from a local HTTP server, MD5s, truncated and foreign
files, pickles that would run a command, and one run to ``completed`` of each kind."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import pickle
import socket
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from conftest import (
    TINY,
    FileServer,
    Served,
    leftovers,
    one_line_error,
    one_line_message,
    overridden,
    run_cli_many,
)

from agop_sweep.data import cifar, download, idx, sources
from agop_sweep.data.datasets import load_dataset
from agop_sweep.errors import DataError
from agop_sweep.store.record import RunRecord

CPU = torch.device("cpu")
OFFLINE = ["data.verify=false", "data.download=false"]




def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- files in the official formats ---------------------------------------------------------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An idx file: magic (0, 0, type, ndim), big-endian uint32 dimensions, the values."""
    head = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    body = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(body, mtime=0) if gz else body)
    return path


def make_idx_files(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20,
                   gz: bool | None = None, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/<folder>/raw/``'s four files (train gzipped and test plain when ``gz`` is None)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        packed = (split == "train") if gz is None else gz
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images, packed)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels, packed)
        out[split] = images, labels.astype(np.int64)
    return out


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles bytes as Python 2's cPickle pickled its str (BINSTRING), no _codecs.encode."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        op = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(op + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def pickled(obj: Any, style: str = "py2") -> bytes:
    """``obj`` at protocol 2: ``py2`` as the official CIFAR files (Python 2, NumPy's globals
    under numpy.core.multiarray as old NumPy wrote them), ``py3`` as pickle.dump writes it."""
    if style == "py3":
        return pickle.dumps(obj, protocol=2)
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def batch(images: np.ndarray, labels: dict[str, list[int]], label: str = "batch") -> dict[bytes, Any]:
    """A CIFAR batch's dict: data (N, 3072) uint8, each row R, G, B planes of 32 x 32."""
    out: dict[bytes, Any] = {b"batch_label": label.encode(), b"data": images.reshape(len(images), -1)}
    out |= {k.encode(): v for k, v in labels.items()}
    out[b"filenames"] = [f"img_{i}.png".encode() for i in range(len(images))]
    return out


def make_cifar10(root: Path, per_batch: int = 12, style: str = "py2", seed: int = 0
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list] = {"train": [], "test": []}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
        (folder / name).write_bytes(pickled(batch(images, {"labels": labels}, name), style))
        parts["test" if name == "test_batch" else "train"].append((images, np.array(labels)))
    names = [c.encode() for c in cifar.CIFAR10_CLASSES]
    (folder / "batches.meta").write_bytes(pickled({b"label_names": names}))
    return {k: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v]))
            for k, v in parts.items()}


def make_cifar100(root: Path, n_train: int = 40, n_test: int = 20, style: str = "py3", seed: int = 0
                  ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [v % 20 for v in fine]
        (folder / name).write_bytes(pickled(batch(images, {"fine_labels": fine, "coarse_labels": coarse},
                                                  name), style))
        out[name] = images, np.array(fine), np.array(coarse)
    return out


def tarball_of(root: Path, folder: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(root / folder, arcname=folder)
    return buf.getvalue()


def _data(compose_config, *overrides: str):
    return compose_config(*overrides).data


# -- MNIST and Fashion-MNIST: idx files ----------------------------------------------------------


def test_mnist_gz_and_plain_files_in_torchvisions_layout(tmp_path: Path, compose_config) -> None:
    files = make_idx_files(tmp_path)  # train gzipped, test unpacked
    images = files["train"][0].copy()
    images[3, 5, 17] = 255  # pixel (row 5, column 17) of image 3
    write_idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", images)
    data = load_dataset(_data(compose_config, "data=mnist", f"data.root={tmp_path}", *OFFLINE), CPU)
    assert (data.n_train, data.n_val, data.n_features, data.n_classes) == (60, 20, 784, 10)
    assert data.image_shape == (1, 28, 28) and data.x_train.dtype == torch.float32
    assert data.x_train.shape == (60, 1, 28, 28) and data.x_val.shape == (20, 1, 28, 28)
    assert data.x_train[3, 0, 5, 17] == 1.0 and data.x_train.flatten(1)[3, 5 * 28 + 17] == 1.0
    np.testing.assert_allclose(data.x_train.numpy(), images[:, None] / np.float32(255))
    np.testing.assert_allclose(data.x_val.numpy(), files["test"][0][:, None] / np.float32(255))
    assert data.y_train.tolist() == files["train"][1].tolist()
    assert data.y_val.tolist() == files["test"][1].tolist()
    facts = data.run_facts()
    assert facts["image_shape"] == [1, 28, 28] and facts["classes"] == [str(d) for d in range(10)]
    assert facts["normalize"] == "none" and "channel_mean" not in facts


def test_fashion_mnist_reads_its_own_folder(tmp_path: Path, compose_config) -> None:
    make_idx_files(tmp_path, "FashionMNIST", gz=False)
    data = load_dataset(_data(compose_config, "data=fashion_mnist", f"data.root={tmp_path}", *OFFLINE), CPU)
    assert (data.n_train, data.n_val) == (60, 20)
    assert data.run_facts()["classes"][0] == "T-shirt/top" and data.run_facts()["classes"][9] == "Ankle boot"
    with pytest.raises(DataError) as err:  # MNIST's folder is not Fashion-MNIST's
        load_dataset(_data(compose_config, "data=mnist", f"data.root={tmp_path}", *OFFLINE), CPU)
    assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in one_line_message(err)


def _idx_cases() -> dict[str, tuple[bytes, str, bool]]:
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    return {
        "empty": (b"", "shorter than an idx header", False),
        "wrong_magic": (b"\x00\x00\x08\x01" + good[4:], "magic number 0x00000801, expected 0x00000803",
                        False),
        "int_type": (b"\x00\x00\x0c\x03" + good[4:], "magic number 0x00000c03", False),
        "text": (b"<html>Service unavailable</html>\n" * 5, "magic number 0x3c68746d", False),
        "wrong_dims": (idx_bytes(np.zeros((3, 27, 28), np.uint8)),
                       "dimensions 3 x 27 x 28, expected N >= 1 x 28 x 28", False),
        "no_images": (idx_bytes(np.zeros((0, 28, 28), np.uint8)), "dimensions 0 x 28 x 28", False),
        "truncated": (good[:1000], "1000 bytes, but its header promises 2368", False),
        "truncated_header": (good[:10], "the dimensions: the file ends after 6 of 12 bytes", False),
        "padded": (good + b"\x00", "2369 bytes, but its header promises 2368", False),
        "gz_truncated": (gzip.compress(good)[:40], "EOFError", True),
        "gz_truncated_values": (gzip.compress(good[:1000]), "the values: the file ends after 984 of 2352",
                                True),
        "gz_padded": (gzip.compress(good + b"\x07"), "more data than the 3 x 28 x 28 values", True),
        "gz_garbage": (b"\x1f\x8b" + b"\x00" * 50, "BadGzipFile", True),
        "not_gz": (good, "BadGzipFile", True),
    }


@pytest.mark.parametrize("case", list(_idx_cases()))
def test_broken_idx_files_are_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    body, why, gz = _idx_cases()[case]
    path = tmp_path / (f"{case}-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(body)
    with pytest.raises(DataError) as err:
        idx.read_idx(path, 3, (28, 28))
    msg = one_line_message(err)
    assert msg.startswith(f"{path} is not a readable idx file") and why in msg, msg
    assert "delete it" in msg


def test_idx_labels_out_of_range_and_count_mismatch(tmp_path: Path, compose_config) -> None:
    make_idx_files(tmp_path, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.array([*range(10)] * 5 + [10] * 10, np.uint8))
    cfg = _data(compose_config, "data=mnist", f"data.root={tmp_path}", *OFFLINE)
    with pytest.raises(DataError) as err:
        load_dataset(cfg, CPU)
    expected = f"{raw / 'train-labels-idx1-ubyte.gz'} holds label 10 (10 of 60 outside 0..9); "
    assert one_line_message(err) == expected + "delete it to download it again"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(59, np.uint8))
    with pytest.raises(DataError, match=r"holds 60 images but .* 59 labels") as err:
        load_dataset(cfg, CPU)
    one_line_message(err)


def test_mnist_md5_checked_and_named(tmp_path: Path, compose_config, monkeypatch) -> None:
    make_idx_files(tmp_path, gz=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    cfg = _data(compose_config, "data=mnist", f"data.root={tmp_path}", "data.download=false")
    with pytest.raises(DataError) as err:
        load_dataset(cfg, CPU)
    msg = one_line_message(err)
    assert str(path) in msg and idx.MNIST.md5s[path.name] in msg and download.md5sum(path) in msg
    assert "not MNIST" in msg and "data.verify=false" in msg
    for name in idx.MNIST.md5s:
        monkeypatch.setitem(idx.MNIST.md5s, name, download.md5sum(path.parent / name))
    assert load_dataset(cfg, CPU).n_train == 60


def test_mnist_download_verified_and_renamed(tmp_path: Path, file_server: FileServer, compose_config,
                                            monkeypatch) -> None:
    source = tmp_path / "source"
    files = make_idx_files(source, gz=True)
    raw = source / "MNIST" / "raw"
    for name in idx.MNIST.md5s:
        file_server.files[f"/{name}"] = Served((raw / name).read_bytes())
        monkeypatch.setitem(idx.MNIST.md5s, name, download.md5sum(raw / name))
    root = tmp_path / "fresh"
    cfg = _data(compose_config, "data=mnist", f"data.root={root}", f"data.url={file_server.url}")
    data = load_dataset(cfg, CPU)
    assert sorted(file_server.requests) == sorted(f"/{n}" for n in idx.MNIST.md5s)
    assert leftovers(root / "MNIST" / "raw") == sorted(idx.MNIST.md5s)  # no temporary files
    assert data.y_val.tolist() == files["test"][1].tolist()
    load_dataset(cfg, CPU)  # present and verified: nothing downloaded again
    assert len(file_server.requests) == 4


def test_mnist_download_with_wrong_md5_leaves_nothing(tmp_path: Path, file_server: FileServer,
                                                      compose_config) -> None:
    file_server.files["/train-images-idx3-ubyte.gz"] = Served(b"not MNIST")
    root = tmp_path / "data"
    cfg = _data(compose_config, "data=mnist", f"data.root={root}", f"data.url={file_server.url}")
    with pytest.raises(DataError) as err:
        load_dataset(cfg, CPU)
    msg = one_line_message(err)
    assert "Downloaded train-images-idx3-ubyte.gz has MD5" in msg and "run again" in msg
    assert leftovers(root / "MNIST" / "raw") == []


def test_no_network_says_which_files_go_where(tmp_path: Path, compose_config) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/"
    for option, where, names in (
        ("mnist", tmp_path / "MNIST" / "raw", list(idx.MNIST.md5s)),
        ("fashion_mnist", tmp_path / "FashionMNIST" / "raw", list(idx.FASHION_MNIST.md5s)),
        ("cifar10", tmp_path, ["cifar-10-python.tar.gz", "cifar-10-batches-py/"]),
        ("cifar100", tmp_path, ["cifar-100-python.tar.gz", "cifar-100-python/"]),
    ):
        with pytest.raises(DataError) as err:
            cfg = _data(compose_config, f"data={option}", f"data.root={tmp_path}", f"data.url={url}")
            load_dataset(cfg, CPU)
        msg = one_line_message(err)
        assert msg.startswith(f"Cannot download {url}") and "without network, put" in msg, msg
        assert all(n in msg for n in names) and msg.endswith(f"into {where}"), msg
    with pytest.raises(DataError) as err:
        load_dataset(_data(compose_config, "data=cifar10", f"data.root={tmp_path / 'none'}",
                           "data.download=false"), CPU)
    assert "cifar-10-python.tar.gz is missing and data.download=false" in one_line_message(err)


# -- CIFAR-10 and CIFAR-100: pickled batches ------------------------------------------------------


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_cifar10_layout_labels_and_both_pickle_styles(tmp_path: Path, compose_config, style: str) -> None:
    files = make_cifar10(tmp_path, style=style)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    if style == "py2":
        assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    else:
        assert b"c_codecs\nencode" in raw
    data = load_dataset(_data(compose_config, "data=cifar10", f"data.root={tmp_path}", *OFFLINE), CPU)
    assert (data.n_train, data.n_val, data.n_features, data.n_classes) == (60, 12, 3072, 10)
    images, labels = files["train"]
    # Row i of a batch is image i's R, G, B planes: x[i, c, r, col] = pixel (c, r, col), which
    # the MLP reads at c * 1024 + r * 32 + col.
    assert data.x_train.shape == (60, 3, 32, 32) and data.x_val.shape == (12, 3, 32, 32)
    np.testing.assert_allclose(data.x_train.numpy(), images / np.float32(255))
    assert data.x_train[13, 2, 7, 30] == images[13, 2, 7, 30] / np.float32(255)
    assert data.x_train.flatten(1)[13, 2 * 1024 + 7 * 32 + 30] == images[13, 2, 7, 30] / np.float32(255)
    assert data.y_train.tolist() == labels.tolist()
    assert data.y_val.tolist() == files["test"][1].tolist()
    assert data.run_facts()["classes"] == list(cifar.CIFAR10_CLASSES)


def test_cifar100_fine_and_coarse_labels(tmp_path: Path, compose_config) -> None:
    files = make_cifar100(tmp_path)
    base = ["data=cifar100", f"data.root={tmp_path}", *OFFLINE]
    fine = load_dataset(_data(compose_config, *base), CPU)
    coarse = load_dataset(_data(compose_config, *base, "data.labels=coarse"), CPU)
    assert (fine.n_classes, coarse.n_classes) == (100, 20)
    assert fine.y_train.tolist() == files["train"][1].tolist()
    assert coarse.y_val.tolist() == files["test"][2].tolist()
    assert torch.equal(fine.x_train, coarse.x_train)
    assert coarse.run_facts()["classes"][9] == "large_man-made_outdoor_things"
    assert len(fine.run_facts()["classes"]) == 100 == len(set(fine.run_facts()["classes"]))


def test_cifar_download_unpacks_only_the_batches(tmp_path: Path, file_server: FileServer, compose_config,
                                                 monkeypatch) -> None:
    source = tmp_path / "source"
    files = make_cifar10(source)
    # An archive member that would escape the folder is never read.
    (source / "cifar-10-batches-py" / "readme.html").write_text("<html/>")
    body = tarball_of(source, "cifar-10-batches-py")
    file_server.files["/cifar-10-python.tar.gz"] = Served(body)
    own = dataclasses.replace(cifar.CIFAR10, tarball_md5=hashlib.md5(body).hexdigest(), md5s={
        n: download.md5sum(source / "cifar-10-batches-py" / n) for n in cifar.CIFAR10.md5s})
    monkeypatch.setattr(cifar, "CIFAR10", own)
    monkeypatch.setitem(cifar.SOURCES, "cifar10", own)
    root = tmp_path / "fresh"
    cfg = _data(compose_config, "data=cifar10", f"data.root={root}", f"data.url={file_server.url}")
    data = load_dataset(cfg, CPU)
    assert file_server.requests == ["/cifar-10-python.tar.gz"]
    assert leftovers(root) == ["cifar-10-batches-py", "cifar-10-python.tar.gz"]
    assert leftovers(root / "cifar-10-batches-py") == sorted(cifar.CIFAR10.md5s)  # no readme, no temp
    assert data.y_train.tolist() == files["train"][1].tolist()
    (root / "cifar-10-batches-py" / "test_batch").unlink()  # unpacked again from the tarball
    load_dataset(cfg, CPU)
    assert file_server.requests == ["/cifar-10-python.tar.gz"]
    (root / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"changed")
    with pytest.raises(DataError) as err:
        load_dataset(cfg, CPU)
    msg = one_line_message(err)
    assert str(root / "cifar-10-batches-py" / "data_batch_2") in msg and "data.verify=false" in msg


def test_truncated_tarball_isone_line_message(tmp_path: Path, compose_config) -> None:
    make_cifar100(tmp_path / "source")
    body = tarball_of(tmp_path / "source", "cifar-100-python")
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-100-python.tar.gz").write_bytes(body[: len(body) // 2])
    with pytest.raises(DataError) as err:
        load_dataset(_data(compose_config, "data=cifar100", f"data.root={root}", *OFFLINE), CPU)
    msg = one_line_message(err)
    assert msg.startswith(f"{root / 'cifar-100-python.tar.gz'} is not a readable CIFAR-100 tarball")
    assert not [n for n in leftovers(root / "cifar-100-python") if n.startswith(".")]  # no temp files


class _System:
    """Pickles as ``os.system(command)``: what a hostile batch file would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.system, (self.command,)


class _Call:
    def __init__(self, func: Callable[..., Any], *args: Any):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.func, self.args


def _hostile(marker: Path) -> dict[str, tuple[bytes, str]]:
    command = f"touch {marker}"
    images = np.zeros((2, 3072), np.uint8)
    return {
        "os_system": (pickled({b"data": images, b"labels": _System(command)}, "py3"), "posix.system"),
        "os_system_first": (pickle.dumps(_System(command), protocol=2), "posix.system"),
        "os_system_protocol_4": (pickle.dumps({"labels": _System(command)}, protocol=4), "posix.system"),
        "eval": (pickle.dumps(_Call(eval, f"__import__('os').system({command!r})"), protocol=2),
                 "__builtin__.eval"),
        "numpy_load": (pickle.dumps(_Call(np.load, str(marker)), protocol=2), "numpy.load"),
        "getattr": (pickle.dumps(_Call(getattr, "", "join"), protocol=2), "__builtin__.getattr"),
        "codecs_other": (b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.",
                         "_codecs.encode of str as 'rot13'"),
    }


@pytest.mark.parametrize("case", list(_hostile(Path("m"))))
def test_a_batch_that_would_run_code_is_refused_unrun(tmp_path: Path, compose_config, case: str) -> None:
    marker = tmp_path / "ran"
    make_cifar10(tmp_path, per_batch=2)
    body, named = _hostile(marker)[case]
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(body)
    with pytest.raises(DataError) as err:
        load_dataset(_data(compose_config, "data=cifar10", f"data.root={tmp_path}", *OFFLINE), CPU)
    msg = one_line_message(err)
    assert str(path) in msg and named in msg, msg
    assert not marker.exists()
    pickle.loads(pickle.dumps(_System(f"touch {marker}"), protocol=2))  # the crafted pickle works
    assert marker.exists()


def _cifar_cases() -> dict[str, tuple[bytes, str]]:
    good = pickled(batch(np.zeros((4, 3, 32, 32), np.uint8), {"labels": [0, 1, 2, 3]}))
    images = np.zeros((4, 3072), np.uint8)
    return {
        "empty": (b"", "is not a readable CIFAR batch (EOFError"),
        "truncated": (good[: len(good) // 2], "is not a readable CIFAR batch"),
        "text": (b"<html>503</html>", "is not a readable CIFAR batch"),
        "a_list": (pickled([1, 2]), "holds a pickled list, not a CIFAR batch's dict"),
        "no_labels": (pickled({b"data": images}), "has no 'labels' (it has data)"),
        "label_10": (pickled({b"data": images, b"labels": [0, 1, 10, 3]}),
                     "holds label 10 in 'labels' (1 of 4 outside 0..9)"),
        "label_count": (pickled({b"data": images, b"labels": [0, 1]}), "holds 4 images but 2 'labels'"),
        "float_labels": (pickled({b"data": images, b"labels": [0.0, 1.0, 2.0, 3.0]}),
                         "'labels' is not a list of integer labels"),
        "wrong_shape": (pickled({b"data": np.zeros((4, 3, 32, 32), np.uint8), b"labels": [0] * 4}),
                        "'data' is a uint8 array of shape (4, 3, 32, 32), expected uint8 of shape N x 3072"),
        "float_pixels": (pickled({b"data": images.astype(np.float32), b"labels": [0] * 4}),
                         "'data' is a float32 array"),
        "no_data": (pickled({b"labels": [0] * 4}), "'data' is a NoneType"),
    }


@pytest.mark.parametrize("case", list(_cifar_cases()))
def test_broken_cifar_batches_are_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    body, why = _cifar_cases()[case]
    path = tmp_path / "data_batch_1"
    path.write_bytes(body)
    with pytest.raises(DataError) as err:
        cifar.parse_batch(path, "labels", 10)
    msg = one_line_message(err)
    assert msg.startswith(str(path)) and why in msg, msg
    assert "delete it" in msg


# -- npz: your own arrays ----------------------------------------------------------------------


def _write_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _npz_arrays(seed: int = 0, n: int = 30, m: int = 10, shape: tuple[int, ...] = (3, 4, 5),
                dtype: Any = np.uint8, classes: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n + m, *shape)).astype(dtype)
    y = np.arange(n + m) % classes
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}


def test_npz_layouts_vectors_and_floats(tmp_path: Path, compose_config) -> None:
    arrays = _npz_arrays()
    nchw = _write_npz(tmp_path / "nchw.npz", **arrays)
    nhwc = _write_npz(tmp_path / "nhwc.npz", **{k: v.transpose(0, 2, 3, 1) if k[0] == "x" else v
                                                for k, v in arrays.items()})
    a = load_dataset(_data(compose_config, "data=npz", f"data.path={nchw}"), CPU)
    b = load_dataset(_data(compose_config, "data=npz", f"data.path={nhwc}", "data.layout=nhwc"), CPU)
    assert (a.n_train, a.n_val, a.n_features, a.n_classes, a.image_shape) == (30, 10, 60, 3, (3, 4, 5))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_val, b.x_val) and b.image_shape == (3, 4, 5)
    assert a.x_train.shape == (30, 3, 4, 5) and a.x_val.shape == (10, 3, 4, 5)
    np.testing.assert_allclose(a.x_train.numpy(), arrays["x_train"] / np.float32(255))
    assert b.x_train[7, 2, 3, 1] == arrays["x_train"][7, 2, 3, 1] / np.float32(255)  # nhwc's [7, 3, 1, 2]
    assert a.y_val.tolist() == arrays["y_test"].tolist()
    assert a.run_facts()["classes"] == ["0", "1", "2"]

    vectors = _npz_arrays(shape=(7,), dtype=np.float64)
    vectors["x_train"] = vectors["x_train"] / 100 - 1  # floats are used as they are
    path = _write_npz(tmp_path / "v.npz", **vectors)
    v = load_dataset(_data(compose_config, "data=npz", f"data.path={path}"), CPU)
    assert v.image_shape == (1, 1, 7) and v.n_features == 7 and v.x_train.shape == (30, 1, 1, 7)
    np.testing.assert_allclose(v.x_train.numpy(), vectors["x_train"].astype(np.float32)[:, None, None])
    gray = _npz_arrays(shape=(6, 6))
    g = load_dataset(_data(compose_config, "data=npz", f"data.path={_write_npz(tmp_path / 'g.npz', **gray)}",
                           "data.image_shape=[1,6,6]"), CPU)
    assert g.image_shape == (1, 6, 6) and g.n_features == 36 and g.x_train.shape == (30, 1, 6, 6)
    assert g.x_train[4, 0, 5, 2] == gray["x_train"][4, 5, 2] / np.float32(255)


def _npz_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    good = _npz_arrays()
    cases: dict[str, dict[str, Any] | bytes] = {
        "missing_keys": {"x_train": good["x_train"], "y_train": good["y_train"], "X_test": good["x_test"]},
        "int64_pixels": {**good, "x_train": good["x_train"].astype(np.int64)},
        "bool_pixels": {**good, "x_test": good["x_test"] > 0},
        "one_dim_x": {**good, "x_train": np.zeros(30, np.uint8)},
        "five_dims": {**good, "x_train": np.zeros((30, 1, 3, 4, 5), np.uint8)},
        "empty_train": {**good, "x_train": np.zeros((0, 3, 4, 5), np.uint8), "y_train": np.zeros(0, int)},
        "shape_mismatch": {**good, "x_test": np.zeros((10, 3, 5, 4), np.uint8)},
        "dtype_mismatch": {**good, "x_test": good["x_test"].astype(np.float32)},
        "float_labels": {**good, "y_train": good["y_train"].astype(np.float64)},
        "label_count": {**good, "y_train": good["y_train"][:29]},
        "label_matrix": {**good, "y_test": np.eye(3)[good["y_test"]].astype(np.int64)},
        "negative_label": {**good, "y_test": good["y_test"] - 1},
        "one_based": {**good, "y_train": good["y_train"] + 1, "y_test": good["y_test"] + 1},
        "one_class": {**good, "y_train": np.zeros(30, int), "y_test": np.zeros(10, int)},
        "objects": {**good, "y_train": np.array([str(v) for v in good["y_train"]], dtype=object)},
        "not_npz": b"<html>not an archive</html>",
        "a_pickle": pickle.dumps(_System("true")),
    }
    expected = {
        "missing_keys": "lacks x_test, y_test (it has x_train, y_train, X_test)",
        "int64_pixels": "x_train has dtype int64; store uint8 pixels",
        "bool_pixels": "x_test has dtype bool",
        "one_dim_x": "x_train has shape (30,); expected N x C x H x W",
        "five_dims": "x_train has shape (30, 1, 3, 4, 5)",
        "empty_train": "x_train has shape (0, 3, 4, 5)",
        "shape_mismatch": "x_train's samples have shape (3, 4, 5) but x_test's (3, 5, 4)",
        "dtype_mismatch": "x_train has dtype uint8 but x_test float32",
        "float_labels": "y_train has dtype float64; labels are integers 0..c-1",
        "label_count": "y_train has shape (29,), expected (30,)",
        "label_matrix": "y_test has shape (10, 3), expected (10,)",
        "negative_label": "y_test holds label -1",
        "one_based": "labels up to 3 but class 0 has no sample (1 of 0..3 have none)",
        "one_class": "but only one class",
        "objects": "y_train cannot be read without pickle",
        "not_npz": "is not a readable .npz file",
        "a_pickle": "is not a readable .npz file (ValueError",
    }
    out = {}
    for name, content in cases.items():
        path = tmp / f"{name}.npz"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            np.savez(path, **content)
        out[name] = (path, expected[name])
    out["npy"] = (tmp / "single.npy", "is a single .npy array, not an .npz archive")
    np.save(out["npy"][0], good["x_train"])
    out["absent"] = (tmp / "absent.npz", "is not a file")
    return out


def test_npz_checks_are_one_line_each(tmp_path: Path, compose_config) -> None:
    cfg = _data(compose_config, "data=npz", "data.path=set.npz")
    for name, (path, why) in _npz_cases(tmp_path).items():
        cfg.path = str(path)
        with pytest.raises(DataError) as err:
            load_dataset(cfg, CPU)
        msg = one_line_message(err)
        assert str(path) in msg and why in msg, (name, msg)


def test_npz_image_shape_must_match_the_files(tmp_path: Path, compose_config) -> None:
    path = _write_npz(tmp_path / "a.npz", **_npz_arrays())
    with pytest.raises(DataError) as err:
        load_dataset(_data(compose_config, "data=npz", f"data.path={path}", "data.image_shape=[3,5,4]"), CPU)
    assert "data.image_shape=[3, 5, 4], but the npz inputs are images of [3, 4, 5]" in one_line_message(err)


# -- the shared options: n_train, val_fraction, normalize ------------------------------------------


def test_n_train_is_a_seeded_stratified_subset(tmp_path: Path, compose_config) -> None:
    make_cifar10(tmp_path, per_batch=120)  # 600 training images, 60 of each class
    base = ["data=cifar10", f"data.root={tmp_path}", *OFFLINE]
    full = load_dataset(_data(compose_config, *base), CPU)
    a = load_dataset(_data(compose_config, *base, "data.n_train=500"), CPU)
    assert a.n_train == 500 and a.n_val == full.n_val
    assert np.bincount(a.y_train.numpy()).tolist() == [50] * 10
    rows = {r.tobytes() for r in full.x_train.numpy()}
    assert all(r.tobytes() in rows for r in a.x_train.numpy())  # a subset of the training set
    assert len({r.tobytes() for r in a.x_train.numpy()}) == 500
    b = load_dataset(_data(compose_config, *base, "data.n_train=500"), CPU)
    c = load_dataset(_data(compose_config, *base, "data.n_train=500", "data.seed=1"), CPU)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    with pytest.raises(DataError) as err:
        load_dataset(_data(compose_config, *base, "data.n_train=601"), CPU)
    assert "data.n_train=601 is more than the 600 training samples of cifar10" in one_line_message(err)


def test_stratified_shares_follow_the_classes() -> None:
    y = np.repeat(np.arange(4), [50, 30, 15, 5])  # shares 0.5, 0.3, 0.15, 0.05
    for n, counts in ((20, [10, 6, 3, 1]), (10, [5, 3, 2, 0]), (3, [2, 1, 0, 0]), (100, [50, 30, 15, 5])):
        keep = sources.stratified_subset(y, n, seed=0)
        assert len(keep) == n and np.all(np.diff(keep) > 0)
        assert np.bincount(y[keep], minlength=4).tolist() == counts, n


def test_val_fraction_and_split_seed_hold_out_training_images(tmp_path: Path, compose_config) -> None:
    files = make_idx_files(tmp_path, gz=False)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()  # not read when held out
    base = ["data=mnist", f"data.root={tmp_path}", *OFFLINE]
    d = load_dataset(_data(compose_config, *base, "data.val_fraction=0.25", "data.n_train=30"), CPU)
    assert (d.n_train, d.n_val) == (30, 15)
    got = np.concatenate([d.x_train.numpy(), d.x_val.numpy()]) * 255
    rows = {r.tobytes() for r in files["train"][0].reshape(60, -1)}
    assert {np.rint(r).astype(np.uint8).tobytes() for r in got} <= rows
    s = load_dataset(_data(compose_config, *base, "data.split=seed"), CPU)
    assert (s.n_train, s.n_val) == (48, 12)


def test_standardize_uses_the_training_sets_channel_statistics(tmp_path: Path, compose_config) -> None:
    arrays = _npz_arrays(n=40, m=12, shape=(3, 4, 4))
    arrays["x_train"][:, 1] //= 4  # channels of different means and stds
    path = _write_npz(tmp_path / "a.npz", **arrays)
    plain = load_dataset(_data(compose_config, "data=npz", f"data.path={path}"), CPU)
    std = load_dataset(_data(compose_config, "data=npz", f"data.path={path}", "data.normalize=standardize"),
                       CPU)
    x = arrays["x_train"].astype(np.float64) / 255
    mean, sd = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    facts = std.run_facts()
    assert facts["normalize"] == "standardize"
    np.testing.assert_allclose(facts["channel_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(facts["channel_std"], sd, rtol=1e-6)
    z = std.x_train.numpy().reshape(40, 3, -1)
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1, atol=1e-5)
    val = (plain.x_val.numpy().reshape(12, 3, -1) - mean[None, :, None].astype(np.float32)) \
        / sd[None, :, None].astype(np.float32)
    np.testing.assert_allclose(std.x_val.numpy().reshape(12, 3, -1), val, rtol=1e-5, atol=1e-5)


def test_channel_stats_over_blocks_equal_numpys(monkeypatch) -> None:
    monkeypatch.setattr(sources, "BLOCK_ROWS", 7)
    x = np.random.default_rng(0).random((30, 2 * 9), dtype=np.float32)
    mean, std = sources.channel_stats(x, 2)
    v = x.astype(np.float64).reshape(30, 2, 9)
    np.testing.assert_allclose(mean, v.mean(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, v.std(axis=(0, 2)), rtol=1e-12)


# -- runs: the command line, and in-process ---------------------------------------------------------

BASE = [o for o in TINY if not o.startswith("data")] + ["schedule.checkpoints=[0,3]"]


def _args(*overrides: str) -> list[str]:
    """TINY's model and schedule (no figures), each of ``overrides`` replacing its key's entry."""
    return overridden(BASE, *overrides)


def test_one_run_of_each_kind_completes(tmp_path: Path) -> None:
    """From the command line: mnist, fashion_mnist, cifar10 and cifar100 in one sweep over one
    data.root (torchvision's layout has room for all), npz, and a hostile CIFAR batch, refused."""
    root = tmp_path / "data"
    make_idx_files(root, "MNIST")
    make_idx_files(root, "FashionMNIST", gz=True)
    make_cifar10(root, per_batch=8)
    make_cifar100(root)
    hostile = tmp_path / "hostile"
    make_cifar10(hostile, per_batch=2)
    marker = tmp_path / "ran"
    (hostile / "cifar-10-batches-py" / "data_batch_1").write_bytes(_hostile(marker)["os_system"][0])
    npz_path = _write_npz(tmp_path / "own.npz", **_npz_arrays(n=40, m=10, shape=(8, 8, 1)))
    procs = run_cli_many({
        "sweep": ["-m", *_args("data=mnist,fashion_mnist,cifar10,cifar100", f"data.root={root}", *OFFLINE,
                               "data.val_fraction=0.25", f"hydra.sweep.dir={tmp_path / 'sweep'}")],
        "npz": _args("data=npz", f"data.path={npz_path}", "data.layout=nhwc", "data.n_train=30",
                     "data.normalize=standardize", f"hydra.run.dir={tmp_path / 'npz'}"),
        "hostile": _args("data=cifar10", f"data.root={hostile}", *OFFLINE,
                         f"hydra.run.dir={tmp_path / 'no'}"),
        # the conv net takes the same images as (N, C, H, W)
        "cnn": [*(o for o in _args() if not o.startswith("model.")), "model=cnn", "model.channels=[4,8]",
                "data=cifar10", f"data.root={root}", *OFFLINE, "data.n_train=20",
                f"hydra.run.dir={tmp_path / 'cnn'}"],
    }, cwd=tmp_path, parallel=4)
    for name in ("sweep", "npz"):
        assert procs[name].returncode == 0, procs[name].stderr[-3000:]
    runs = {r["run"]["dataset"]: r["run"] for r in (json.loads(p.read_text()) for p in [
        *(tmp_path / "sweep").rglob("results.json"), tmp_path / "npz" / "results.json"])}
    expected = {"mnist": (45, 15, [1, 28, 28], 10), "fashion_mnist": (45, 15, [1, 28, 28], 10),
                "cifar10": (30, 10, [3, 32, 32], 10), "cifar100": (30, 10, [3, 32, 32], 100),
                "npz": (30, 10, [1, 8, 8], 3)}
    assert sorted(runs) == sorted(expected)
    for name, (n_train, n_val, shape, classes) in expected.items():
        run = runs[name]
        assert (run["n_train"], run["n_val"], run["image_shape"], run["n_classes"], len(run["classes"])) == (
            n_train, n_val, shape, classes, classes), name
        assert run["normalize"] == ("standardize" if name == "npz" else "none")
    for results in (tmp_path / "sweep").rglob("results.json"):
        assert json.loads(results.read_text())["status"] == "completed"
    assert json.loads((tmp_path / "npz" / "results.json").read_text())["status"] == "completed"
    own = runs["npz"]  # uniform pixels: mean 1/2, std 1/sqrt(12)
    assert len(own["channel_mean"]) == 1 == len(own["channel_std"]) and "channel_mean" not in runs["mnist"]
    assert 0.4 < own["channel_mean"][0] < 0.6 and 0.2 < own["channel_std"][0] < 0.35
    record = RunRecord.load(tmp_path / "npz" / "results.json")  # data.image_shape=[]: the figures'
    assert record.setting("data.image_shape") == [] and record.image_shape() == (1, 8, 8)  # shape
    assert procs["cnn"].returncode == 0, procs["cnn"].stderr[-3000:]
    cnn = json.loads((tmp_path / "cnn" / "results.json").read_text())
    assert cnn["status"] == "completed" and cnn["run"]["n_train"] == 20
    assert [(e["kind"], e["shape"], e["positions"]) for e in cnn["analysis"][-1]["layers"]] == [
        ("conv", [4, 27], 32 * 32), ("conv", [8, 36], 16 * 16)]
    line = one_line_error(procs["hostile"])
    assert str(hostile / "cifar-10-batches-py" / "data_batch_1") in line and "posix.system" in line
    assert "refused" in line and not marker.exists()
