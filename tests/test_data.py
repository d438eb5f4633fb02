"""The offline datasets (digits, synthetic): shapes, range, seeding; the original script's
80/20 split (data.split=seed); and load_dataset's checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import open_dict
from omegaconf.errors import ValidationError
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from agop_sweep.data import datasets as data_mod
from agop_sweep.data.datasets import load_dataset, seed_split
from agop_sweep.errors import ConfigError, DataError

CPU = torch.device("cpu")


def test_digits_is_sklearns_data_split_by_seed(compose_config) -> None:
    data = load_dataset(compose_config("data=digits").data, CPU)
    assert (data.n_train, data.n_val, data.n_features, data.n_classes) == (1438, 359, 64, 10)
    assert data.image_shape == (1, 8, 8)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    # Every sample is one of sklearn's images / 16 with its own label, each used once.
    bunch = load_digits()
    reference = {(row.tobytes(), int(t)) for row, t in zip((bunch.data / 16).astype(np.float32),
                                                          bunch.target, strict=True)}
    x = torch.cat([data.x_train, data.x_val]).numpy()
    y = torch.cat([data.y_train, data.y_val]).tolist()
    got = [(row.tobytes(), t) for row, t in zip(x, y, strict=True)]
    assert len(got) == 1797 and set(got) <= reference
    assert len({g[0] for g in got}) == len({r[0] for r in reference})
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y) == set(range(10))


def test_digits_split_follows_data_seed(compose_config) -> None:
    a = load_dataset(compose_config("data=digits").data, CPU)
    b = load_dataset(compose_config("data=digits").data, CPU)
    c = load_dataset(compose_config("data=digits", "data.seed=1").data, CPU)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    d = load_dataset(compose_config("data=digits", "data.val_fraction=0.5").data, CPU)
    assert d.n_val in (898, 899) and d.n_train + d.n_val == 1797


SYNTH = ["data=synthetic", "data.n_train=300", "data.n_val=50", "data.n_features=48",
         "data.image_shape=[3,4,4]"]


def test_synthetic_shapes_range_and_seed(compose_config) -> None:
    a = load_dataset(compose_config(*SYNTH).data, CPU)
    assert (a.n_train, a.n_val, a.n_features, a.n_classes) == (300, 50, 48, 10)
    assert a.image_shape == (3, 4, 4)
    for x in (a.x_train, a.x_val):
        assert x.dtype == torch.float32 and float(x.min()) > 0.0 and float(x.max()) < 1.0
    assert set(a.y_train.tolist()) == set(range(10))
    b = load_dataset(compose_config(*SYNTH).data, CPU)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    c = load_dataset(compose_config(*SYNTH, "data.seed=7").data, CPU)
    assert not torch.equal(a.x_train, c.x_train)
    five = load_dataset(compose_config(*SYNTH, "data.n_classes=5").data, CPU)
    assert five.n_classes == 5 and set(five.y_train.tolist()) == set(range(5))


def test_synthetic_blocks_equal_the_whole_array_formula(compose_config, monkeypatch) -> None:
    """Generated in row blocks, in place: bit for bit the one-draw formula, across block edges."""
    monkeypatch.setattr(data_mod, "SYNTHETIC_BLOCK_ROWS", 7)
    cfg = compose_config("data=synthetic", "data.n_train=20", "data.n_val=5", "data.n_features=6",
                         "data.n_classes=3", "data.image_shape=[1,2,3]", "data.seed=4").data
    x_train, y_train, x_val, y_val = data_mod._synthetic(cfg)
    rng = np.random.default_rng(4)
    prototypes = rng.standard_normal((3, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=25)
    x = prototypes[y] + 1.5 * rng.standard_normal((25, 6)).astype(np.float32)
    x = 1.0 / (1.0 + np.exp(-0.5 * x))
    assert x.dtype == x_train.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([x_train, x_val]), x)
    np.testing.assert_array_equal(np.concatenate([y_train, y_val]), y)


def test_synthetic_is_learnable(compose_config) -> None:
    """The class means separate the classes better than chance (a nearest-mean classifier)."""
    d = load_dataset(compose_config(*SYNTH, "data.n_train=1000", "data.n_val=500").data, CPU)
    means = torch.stack([d.x_train[d.y_train == k].mean(0) for k in range(10)])
    pred = torch.cdist(d.x_val, means).argmin(1)
    assert float((pred == d.y_val).float().mean()) > 0.5


def test_image_shape_must_match_the_features(compose_config) -> None:
    with pytest.raises(DataError, match=r"data.image_shape=\[1, 8, 9\] has 72 pixels"):
        load_dataset(compose_config("data=digits", "data.image_shape=[1,8,9]").data, CPU)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_give_one_line_error(compose_config, monkeypatch, split: str, bad: float) -> None:
    def loader(cfg):
        x = np.full((20, 64), 0.5, dtype=np.float32)
        y = np.arange(20) % 10
        xv = x[:5].copy()
        target = x if split == "train" else xv
        target[3, 7] = bad
        target[4, :] = bad
        return x, y, xv, y[:5]

    monkeypatch.setitem(data_mod._LOADERS, "digits", loader)
    with pytest.raises(DataError) as err:
        load_dataset(compose_config("data=digits").data, CPU)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"digits {split} inputs hold NaN or inf in 2 samples" in msg


def test_empty_training_set(compose_config, monkeypatch) -> None:
    empty = np.zeros((0, 64), np.float32)
    monkeypatch.setitem(data_mod._LOADERS, "digits",
                        lambda cfg: (empty, np.zeros(0, np.int64), empty, np.zeros(0, np.int64)))
    with pytest.raises(DataError, match="training set is empty"):
        load_dataset(compose_config("data=digits").data, CPU)


# -- data.split=seed: the original script's 80/20 split ---------------------------------------


def _with_split(cfg, split: str):
    """``cfg`` (the data group) with data.split set, whether or not the schema has the key."""
    with open_dict(cfg):
        cfg.split = split
    return cfg


def _global_seed_draw(x: np.ndarray, y: np.ndarray, seed: int) -> list[np.ndarray]:
    """What the original script did: seed NumPy's global generator, then split with sklearn
    without a random_state. Restores the global state afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return train_test_split(x, y, train_size=0.8)
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize("n", [2, 5, 10, 1797, 73257])
@pytest.mark.parametrize("seed", [1717, 0])
def test_seed_split_is_the_global_seed_draw_and_leaves_the_global_rng(n: int, seed: int) -> None:
    x = np.arange(n) * 3 + 1  # values that are not their own indices
    y = np.arange(n) % 10
    x_tr, x_va, y_tr, y_va = _global_seed_draw(x, y, seed)
    np.random.seed(12345)
    before = np.random.get_state()
    train, val = seed_split(n, seed)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    assert np.array_equal(x[train], x_tr) and np.array_equal(x[val], x_va)
    assert np.array_equal(y[train], y_tr) and np.array_equal(y[val], y_va)
    assert len(train) == int(0.8 * n) and len(train) + len(val) == n
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))


def test_digits_seed_split(compose_config) -> None:
    """The original's seed, 1717, whatever data.seed is (it seeds the default split)."""
    data = load_dataset(_with_split(compose_config("data=digits", "data.seed=5").data, "seed"), CPU)
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    x_tr, x_va, y_tr, y_va = _global_seed_draw(x, bunch.target, 1717)
    assert (data.n_train, data.n_val) == (1437, 360)
    np.testing.assert_array_equal(data.x_train.numpy(), x_tr)
    np.testing.assert_array_equal(data.x_val.numpy(), x_va)
    assert data.y_train.tolist() == y_tr.tolist() and data.y_val.tolist() == y_va.tolist()
    default = load_dataset(compose_config("data=digits", "data.seed=1717").data, CPU)
    assert not torch.equal(default.x_train, data.x_train)  # not the val_fraction draw
    explicit = load_dataset(_with_split(compose_config("data=digits", "data.seed=1717").data, "default"),
                            CPU)
    assert torch.equal(default.x_train, explicit.x_train)


def test_synthetic_seed_split_splits_the_training_samples(compose_config) -> None:
    default = load_dataset(compose_config(*SYNTH).data, CPU)
    data = load_dataset(_with_split(compose_config(*SYNTH).data, "seed"), CPU)
    x_tr, x_va, y_tr, y_va = _global_seed_draw(default.x_train.numpy(), default.y_train.numpy(), 1717)
    assert (data.n_train, data.n_val) == (240, 60)
    np.testing.assert_array_equal(data.x_train.numpy(), x_tr)
    np.testing.assert_array_equal(data.x_val.numpy(), x_va)
    assert data.y_train.tolist() == y_tr.tolist() and data.y_val.tolist() == y_va.tolist()


def test_split_values_are_checked(compose_config) -> None:
    with pytest.raises(ValidationError, match=r"expected one of \[default, seed\]"):  # the schema's Enum
        _with_split(compose_config("data=digits").data, "random")
    cfg = _with_split(compose_config("data=digits", "data.val_fraction=0.3").data, "seed")
    with pytest.raises(ConfigError, match=r"data\.val_fraction=0\.3"):
        load_dataset(cfg, CPU)
    one = _with_split(compose_config(*SYNTH, "data.n_train=1").data, "seed")
    with pytest.raises(DataError, match="at least 2 training samples, got 1"):
        load_dataset(one, CPU)
