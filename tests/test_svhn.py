"""SVHN from files in SVHN's own .mat format: layout (N, C, H, W), labels, scaling, MD5 checks,
broken files, downloads from a local HTTP server (good, corrupt, interrupted, unreachable), and
the shared options data.n_train and data.normalize."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import (
    FileServer,
    Served,
    SvhnFiles,
    leftovers,
    make_svhn_files,
    one_line_message,
    write_svhn_mat,
)
from omegaconf import open_dict
from sklearn.model_selection import train_test_split

from agop_sweep.data import sources, svhn
from agop_sweep.data.datasets import load_dataset
from agop_sweep.errors import DataError


def _svhn_cfg(compose_config, root: Path, *extra: str):
    return compose_config("data=svhn", f"data.root={root}", *extra).data


def _own_md5s(monkeypatch: pytest.MonkeyPatch, files: SvhnFiles) -> None:
    """Make svhn.FILES expect the MD5s of the generated files."""
    for split, spec in list(svhn.FILES.items()):
        md5 = svhn.md5sum(files.path(split))
        monkeypatch.setitem(svhn.FILES, split, svhn.SvhnFile(spec.split, spec.filename, md5))




def test_layout_labels_and_scaling_against_marked_pixels(tmp_path: Path, compose_config) -> None:
    """X[row, col, channel, i] lands at x[i, channel, row, col], scaled by 1/255."""
    n = 12
    x = np.zeros((32, 32, 3, n), dtype=np.uint8)
    marks = [(0, 2, 5, 17, 255), (3, 0, 31, 0, 128), (7, 1, 0, 31, 1), (11, 2, 31, 31, 200)]
    for i, ch, row, col, value in marks:
        x[row, col, ch, i] = value
    raw = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3], dtype=np.uint8).reshape(-1, 1)
    root = tmp_path / "svhn"
    root.mkdir()
    scipy.io.savemat(root / "train_32x32.mat", {"X": x, "y": raw})
    scipy.io.savemat(root / "test_32x32.mat", {"X": x[..., :4], "y": raw[:4]})

    images, labels = svhn.read_mat(root / "train_32x32.mat")
    assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 3]
    for i, ch, row, col, value in marks:
        assert images[i, ch, row, col] == value
    assert int(images.astype(np.int64).sum()) == sum(m[-1] for m in marks)

    data = load_dataset(_svhn_cfg(compose_config, root, "data.verify=false", "data.download=false"),
                        torch.device("cpu"))
    assert (data.n_train, data.n_val, data.n_features, data.n_classes) == (n, 4, 3072, 10)
    assert data.image_shape == (3, 32, 32)
    assert data.x_train.shape == (n, 3, 32, 32) and data.x_val.shape == (4, 3, 32, 32)
    assert data.x_train.dtype == torch.float32
    got = data.x_train.numpy()
    for i, ch, row, col, value in marks:
        assert got[i, ch, row, col] == pytest.approx(value / 255)
    assert np.count_nonzero(got) == len(marks)
    # The MLP's flat order is (channel, row, column): index channel*1024 + row*32 + col.
    flat = data.x_train.flatten(1).numpy()
    for i, ch, row, col, value in marks:
        assert flat[i, ch * 1024 + row * 32 + col] == pytest.approx(value / 255)
    assert data.y_train.tolist() == labels.tolist()
    assert data.y_val.tolist() == [0, 1, 2, 3]


def test_generated_files_round_trip(svhn_files: SvhnFiles, compose_config) -> None:
    cfg = _svhn_cfg(compose_config, svhn_files.root, "data.verify=false", "data.download=false")
    data = load_dataset(cfg, torch.device("cpu"))
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_val, data.y_val)):
        expected = svhn_files.images[split] / 255.0  # (N, 3, 32, 32), as the files' generator drew them
        assert x.shape == expected.shape
        np.testing.assert_allclose(x.numpy(), expected, rtol=1e-6)
        assert y.tolist() == svhn_files.digits[split].tolist()
    assert float(data.x_train.min()) >= 0.0 and float(data.x_train.max()) <= 1.0


def test_val_fraction_holds_out_part_of_train(svhn_files: SvhnFiles, compose_config) -> None:
    cfg = _svhn_cfg(compose_config, svhn_files.root, "data.verify=false", "data.val_fraction=0.25")
    data = load_dataset(cfg, torch.device("cpu"))
    assert (data.n_train, data.n_val) == (30, 10)
    # Train and val partition the train file's images (the test file is not used).
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_val.shape == (10, 3, 32, 32)
    rows = {r.tobytes() for r in svhn_files.images["train"].reshape(40, -1)}
    got = np.concatenate([data.x_train.flatten(1).numpy(), data.x_val.flatten(1).numpy()]) * 255
    got_rows = {np.rint(r).astype(np.uint8).tobytes() for r in got}
    assert got_rows == rows


def test_wrong_md5_names_the_file_and_the_fix(svhn_files: SvhnFiles, compose_config) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(_svhn_cfg(compose_config, svhn_files.root), torch.device("cpu"))
    msg = one_line_message(err)
    assert str(svhn_files.path("train")) in msg
    assert svhn.FILES["train"].md5 in msg and svhn.md5sum(svhn_files.path("train")) in msg
    assert "data.verify=false" in msg and "delete it" in msg


def test_matching_md5_is_accepted(svhn_files: SvhnFiles, compose_config, monkeypatch) -> None:
    _own_md5s(monkeypatch, svhn_files)
    data = load_dataset(_svhn_cfg(compose_config, svhn_files.root, "data.download=false"),
                        torch.device("cpu"))
    assert (data.n_train, data.n_val) == (40, 24)


def _broken_files(root: Path) -> dict[str, Path]:
    good = make_svhn_files(root / "good", n_train=30, n_test=1).path("train").read_bytes()
    x = np.zeros((32, 32, 3, 2), dtype=np.uint8)
    cases = {
        "empty": b"",
        "text": b"<html>Service unavailable</html>\n" * 20,
        "truncated_header": good[:100],
        "truncated_half": good[: len(good) // 2],
    }
    out = {}
    for name, body in cases.items():
        out[name] = root / f"{name}.mat"
        out[name].write_bytes(body)
    arrays = {
        "no_images": {"X": np.zeros((32, 32, 3, 0), np.uint8), "y": np.zeros((0, 1), np.uint8)},
        "wrong_shape": {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)},
        "label_count": {"X": x, "y": np.ones((3, 1), np.uint8)},
        "float_pixels": {"X": x.astype(np.float64), "y": np.ones((2, 1), np.uint8)},
        "label_11": {"X": x, "y": np.array([[1], [11]], np.uint8)},
        "label_0": {"X": x, "y": np.array([[0], [1]], np.uint8)},
        "label_fraction": {"X": x, "y": np.array([[1.5], [1.0]])},
        "no_y": {"X": x},
    }
    for name, arrays_ in arrays.items():
        out[name] = root / f"{name}.mat"
        scipy.io.savemat(out[name], arrays_)
    return out


def _with_split(cfg, split: str):
    """``cfg`` (the data group) with data.split set, whether or not the schema has the key."""
    with open_dict(cfg):
        cfg.split = split
    return cfg


def test_seed_split_is_the_original_scripts_draw(svhn_files: SvhnFiles, compose_config) -> None:
    """data.split=seed: the train file split 80/20 as np.random.seed(1717) + sklearn's
    train_test_split(X, y, train_size=0.8) split it; the test file is not read."""
    svhn_files.path("test").unlink()
    cfg = _with_split(_svhn_cfg(compose_config, svhn_files.root, "data.verify=false",
                                "data.download=false"), "seed")
    data = load_dataset(cfg, torch.device("cpu"))
    images = svhn_files.images["train"]  # (40, 3, 32, 32)
    state = np.random.get_state()
    np.random.seed(1717)
    x_tr, x_va, y_tr, y_va = train_test_split(images, svhn_files.digits["train"], train_size=0.8)
    np.random.set_state(state)
    assert (data.n_train, data.n_val) == (32, 8)
    assert data.x_train.shape == (32, 3, 32, 32) and data.x_val.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(data.x_train.numpy(), x_tr / np.float32(255))
    np.testing.assert_array_equal(data.x_val.numpy(), x_va / np.float32(255))
    assert data.y_train.tolist() == y_tr.tolist() and data.y_val.tolist() == y_va.tolist()


@pytest.mark.parametrize("y", [np.arange(10), np.array([10, 1, 2, 3, 0, 5, 6, 7, 8, 9])])
def test_label_zero_is_refused_with_file_and_label(tmp_path: Path, compose_config, y: np.ndarray) -> None:
    """SVHN's y is 1..10 (10 = digit 0): a file with a 0 in y, labelled 0..9 throughout or
    with one stray 0, must not train with its digits silently mislabelled."""
    root = tmp_path / "svhn"
    make_svhn_files(root)
    x = np.zeros((32, 32, 3, len(y)), np.uint8)
    scipy.io.savemat(root / "train_32x32.mat", {"X": x, "y": y.astype(np.uint8).reshape(-1, 1)})
    cfg = _svhn_cfg(compose_config, root, "data.verify=false", "data.download=false")
    with pytest.raises(DataError) as err:
        load_dataset(cfg, torch.device("cpu"))
    msg = one_line_message(err)
    assert str(root / "train_32x32.mat") in msg
    assert "label 0 in y (1 of 10 labels outside SVHN's 1..10" in msg
    assert "label digit 0 as 10" in msg


def test_unreadable_files_give_one_line_data_errors(tmp_path: Path) -> None:
    for name, path in _broken_files(tmp_path).items():
        with pytest.raises(DataError) as err:
            svhn.read_mat(path)
        msg = one_line_message(err)
        assert str(path) in msg, name
        assert "delete it" in msg, name


def test_a_truncated_file_through_load_dataset(svhn_files: SvhnFiles, compose_config) -> None:
    path = svhn_files.path("test")
    path.write_bytes(path.read_bytes()[:5000])
    cfg = _svhn_cfg(compose_config, svhn_files.root, "data.verify=false", "data.download=false")
    with pytest.raises(DataError, match=r"not a readable SVHN \.mat file") as err:
        load_dataset(cfg, torch.device("cpu"))
    assert str(path) in one_line_message(err)


def test_missing_files_without_download(tmp_path: Path, compose_config) -> None:
    root = tmp_path / "empty"
    with pytest.raises(DataError) as err:
        load_dataset(_svhn_cfg(compose_config, root, "data.download=false"), torch.device("cpu"))
    msg = one_line_message(err)
    assert str(root / "train_32x32.mat") in msg and "data.download=false" in msg


# -- downloads --------------------------------------------------------------------------------


def _serve(server: FileServer, files: SvhnFiles) -> None:
    for split in ("train", "test"):
        server.files[f"/{split}_32x32.mat"] = Served(files.path(split).read_bytes())


def test_download_is_verified_and_renamed(tmp_path: Path, file_server: FileServer, compose_config,
                                          monkeypatch) -> None:
    files = make_svhn_files(tmp_path / "source")
    _serve(file_server, files)
    _own_md5s(monkeypatch, files)
    root = tmp_path / "fresh" / "svhn"  # does not exist yet
    cfg = _svhn_cfg(compose_config, root, f"data.url={file_server.url}")
    data = load_dataset(cfg, torch.device("cpu"))
    assert sorted(file_server.requests) == ["/test_32x32.mat", "/train_32x32.mat"]
    assert leftovers(root) == ["test_32x32.mat", "train_32x32.mat"]  # no temporary files
    for split in ("train", "test"):
        assert (root / f"{split}_32x32.mat").read_bytes() == files.path(split).read_bytes()
    np.testing.assert_allclose(data.x_val.numpy(), files.images["test"] / 255.0, rtol=1e-6)
    # Present and verified now: a second load downloads nothing.
    load_dataset(cfg, torch.device("cpu"))
    assert len(file_server.requests) == 2


def test_download_with_wrong_md5_leaves_nothing(tmp_path: Path, file_server: FileServer) -> None:
    file_server.files["/train_32x32.mat"] = Served(b"not the file you are looking for")
    root = tmp_path / "svhn"
    with pytest.raises(DataError) as err:
        svhn.ensure_file(root, svhn.FILES["train"], verify=True, allow_download=True,
                         base_url=file_server.url)
    msg = one_line_message(err)
    assert "MD5" in msg and svhn.FILES["train"].md5 in msg and "train_32x32.mat" in msg
    assert leftovers(root) == []


def test_interrupted_download_leaves_nothing(tmp_path: Path, file_server: FileServer) -> None:
    body = make_svhn_files(tmp_path / "source").path("train").read_bytes()
    # Content-Length promises the whole file; the server sends a third of it and closes.
    file_server.files["/train_32x32.mat"] = Served(body[: len(body) // 3], length=len(body))
    root = tmp_path / "svhn"
    with pytest.raises(DataError) as err:
        svhn.ensure_file(root, svhn.FILES["train"], verify=False, allow_download=True,
                         base_url=file_server.url)
    msg = one_line_message(err)
    assert f"stopped after {len(body) // 3} of {len(body)} bytes" in msg
    assert leftovers(root) == []


def test_http_error_names_the_files(tmp_path: Path, file_server: FileServer) -> None:
    root = tmp_path / "svhn"
    with pytest.raises(DataError) as err:
        svhn.ensure_file(root, svhn.FILES["test"], verify=True, allow_download=True,
                         base_url=file_server.url)  # serves nothing: 404
    msg = one_line_message(err)
    assert "Not Found" in msg and "train_32x32.mat" in msg and "test_32x32.mat" in msg
    assert leftovers(root) == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_network_says_which_files_to_put_where(tmp_path: Path, compose_config) -> None:
    root = tmp_path / "svhn"
    cfg = _svhn_cfg(compose_config, root, f"data.url=http://127.0.0.1:{_closed_port()}/")
    with pytest.raises(DataError) as err:
        load_dataset(cfg, torch.device("cpu"))
    msg = one_line_message(err)
    assert "train_32x32.mat" in msg and "test_32x32.mat" in msg and f"into {root}" in msg
    assert leftovers(root) == []


def test_root_that_cannot_be_a_directory(tmp_path: Path, compose_config) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    root = blocker / "svhn"
    cfg = _svhn_cfg(compose_config, root, "data.url=http://127.0.0.1:9/")
    with pytest.raises(DataError) as err:
        load_dataset(cfg, torch.device("cpu"))
    msg = one_line_message(err)
    assert f"data.root={root}" in msg and "not a writable directory" in msg
    assert blocker.read_text() == "not a directory"


def test_downloaded_file_has_the_usual_permissions(tmp_path: Path, file_server: FileServer) -> None:
    """Not mkstemp's 0600: a shared data root must stay readable to the group and others."""
    file_server.files["/train_32x32.mat"] = Served(b"some bytes")
    root = tmp_path / "svhn"
    previous = os.umask(0o022)  # the common umask; under 077 the two would agree by chance
    try:
        svhn.ensure_file(root, svhn.FILES["train"], verify=False, allow_download=True,
                         base_url=file_server.url)
    finally:
        os.umask(previous)
    assert (root / "train_32x32.mat").stat().st_mode & 0o777 == 0o644


# -- the shared options: n_train, normalize -------------------------------------------------------


def _uneven_svhn(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVHN files of 60 training images of digits 0, 1, 2 in shares 1/2, 1/3, 1/6, shuffled,
    and 8 test images: (train images, train digits, test images)."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(60, 3, 32, 32), dtype=np.uint8)
    digits = rng.permutation(np.repeat([0, 1, 2], [30, 20, 10]))
    test = rng.integers(0, 256, size=(8, 3, 32, 32), dtype=np.uint8)
    write_svhn_mat(root / "train_32x32.mat", images, digits)
    write_svhn_mat(root / "test_32x32.mat", test, np.arange(8))
    return images, digits, test


def test_n_train_is_a_stratified_subset_of_the_files(tmp_path: Path, compose_config, monkeypatch) -> None:
    root = tmp_path / "svhn"
    images, digits, test = _uneven_svhn(root)
    converted: list[int] = []  # the rows each float32 conversion gets
    floats = sources._floats
    monkeypatch.setattr(sources, "_floats", lambda x: converted.append(len(x)) or floats(x))
    base = ["data.verify=false", "data.download=false"]
    data = load_dataset(_svhn_cfg(compose_config, root, *base, "data.n_train=12"), torch.device("cpu"))
    assert converted == [12, 8]  # the subset is taken of the uint8 images: 60 are never floats
    assert (data.n_train, data.n_val, data.n_classes) == (12, 8, 10)
    assert data.x_train.shape == (12, 3, 32, 32)
    assert np.bincount(data.y_train.numpy(), minlength=10).tolist() == [6, 4, 2] + [0] * 7
    # Images of the training file with their own digits, none twice, in the file's order.
    where = {img.tobytes(): i for i, img in enumerate(images)}
    picked = [where[np.rint(x * 255).astype(np.uint8).tobytes()] for x in data.x_train.numpy()]
    assert len(set(picked)) == 12 and picked == sorted(picked)
    assert digits[picked].tolist() == data.y_train.tolist()
    np.testing.assert_allclose(data.x_val.numpy(), test / 255.0, rtol=1e-6)  # the test file, whole

    again = load_dataset(_svhn_cfg(compose_config, root, *base, "data.n_train=12"), torch.device("cpu"))
    other = load_dataset(_svhn_cfg(compose_config, root, *base, "data.n_train=12", "data.seed=1"),
                         torch.device("cpu"))
    assert torch.equal(data.x_train, again.x_train) and not torch.equal(data.x_train, other.x_train)
    held = load_dataset(_svhn_cfg(compose_config, root, *base, "data.n_train=12", "data.val_fraction=0.25"),
                        torch.device("cpu"))
    assert (held.n_train, held.n_val) == (12, 15)
    seed = load_dataset(_with_split(_svhn_cfg(compose_config, root, *base, "data.n_train=12"), "seed"),
                        torch.device("cpu"))
    assert (seed.n_train, seed.n_val) == (12, 12)
    with pytest.raises(DataError) as err:
        load_dataset(_svhn_cfg(compose_config, root, *base, "data.n_train=61"), torch.device("cpu"))
    assert one_line_message(err) == ("data.n_train=61 is more than the 60 training samples of svhn; set "
                                     "data.n_train to at most that, or 0 for all")


def test_standardize_by_the_training_files_channel_statistics(svhn_files: SvhnFiles, compose_config) -> None:
    cfg = _svhn_cfg(compose_config, svhn_files.root, "data.verify=false", "data.download=false",
                    "data.normalize=standardize")
    data = load_dataset(cfg, torch.device("cpu"))
    x = svhn_files.images["train"] / 255.0  # (40, 3, 32, 32) float64
    mean, sd = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    facts = data.run_facts()
    assert facts["normalize"] == "standardize" and facts["image_shape"] == [3, 32, 32]
    np.testing.assert_allclose(facts["channel_mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(facts["channel_std"], sd, rtol=1e-6)
    z = data.x_train.numpy()
    assert z.shape == (40, 3, 32, 32)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    # Channel c of pixel (r, k) of image i: (x[i, c, r, k] - mean[c]) / std[c].
    assert z[5, 2, 7, 30] == pytest.approx((x[5, 2, 7, 30] - mean[2]) / sd[2], abs=1e-5)
    val = (svhn_files.images["test"] / 255.0 - mean[None, :, None, None]) / sd[None, :, None, None]
    np.testing.assert_allclose(data.x_val.numpy(), val, atol=1e-5)  # by the training set's numbers
