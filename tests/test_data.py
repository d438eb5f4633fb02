"""The offline datasets (digits, synthetic): shapes (N, C, H, W), range, seeding; the original
script's 80/20 split (data.split=seed); load_dataset's checks; and the options every dataset of
real samples shares, on digits and SVHN: data.n_train, data.normalize, their checks, a run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, composing, make_svhn_files, run_cli_many
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
    assert data.x_train.shape == (1438, 1, 8, 8) and data.x_val.shape == (359, 1, 8, 8)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    # Every sample is one of sklearn's images / 16 with its own label, each used once.
    bunch = load_digits()
    reference = {(row.tobytes(), int(t)) for row, t in zip((bunch.data / 16).astype(np.float32),
                                                          bunch.target, strict=True)}
    x = torch.cat([data.x_train, data.x_val]).flatten(1).numpy()
    y = torch.cat([data.y_train, data.y_val]).tolist()
    got = [(row.tobytes(), t) for row, t in zip(x, y, strict=True)]
    assert len(got) == 1797 and set(got) <= reference
    assert len({g[0] for g in got}) == len({r[0] for r in reference})
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert set(y) == set(range(10))
    # Pixel (row r, column k) of sklearn's image is x[i, 0, r, k]: its flat index 8 r + k.
    first = next(j for j, row in enumerate((bunch.data / 16).astype(np.float32))
                 if row.tobytes() == data.x_train[0].numpy().tobytes())
    for r, k in ((0, 3), (2, 5), (7, 7)):
        assert data.x_train[0, 0, r, k] == np.float32(bunch.images[first, r, k] / 16)


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
    assert a.x_train.shape == (300, 3, 4, 4) and a.x_val.shape == (50, 3, 4, 4)
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
    x_train, x_val = d.x_train.flatten(1), d.x_val.flatten(1)
    means = torch.stack([x_train[d.y_train == k].mean(0) for k in range(10)])
    pred = torch.cdist(x_val, means).argmin(1)
    assert float((pred == d.y_val).float().mean()) > 0.5


def test_image_shape_must_match_the_features(compose_config) -> None:
    with pytest.raises(DataError, match=r"data.image_shape=\[1, 8, 9\] has 72 pixels but the synthetic "
                       r"inputs have 48 features"):
        load_dataset(compose_config(*SYNTH, "data.image_shape=[1,8,9]").data, CPU)
    # digits' images are 8 x 8: another shape of 64 pixels would scramble them too
    for shape in ("[1,8,9]", "[4,4,4]"):
        with pytest.raises(DataError, match=r"but the digits inputs are images of \[1, 8, 8\]"):
            load_dataset(compose_config("data=digits", f"data.image_shape={shape}").data, CPU)


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
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_val.shape == (360, 1, 8, 8)
    np.testing.assert_array_equal(data.x_train.numpy(), x_tr.reshape(-1, 1, 8, 8))
    np.testing.assert_array_equal(data.x_val.numpy(), x_va.reshape(-1, 1, 8, 8))
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
    assert data.x_train.shape == (240, 3, 4, 4) and data.x_val.shape == (60, 3, 4, 4)
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


# -- the options every dataset of real samples shares: n_train, val_fraction, normalize ----------


def test_digits_n_train_is_a_seeded_stratified_subset(compose_config) -> None:
    full = load_dataset(compose_config("data=digits").data, CPU)
    sub = load_dataset(compose_config("data=digits", "data.n_train=300").data, CPU)
    assert (sub.n_train, sub.n_val) == (300, 359) and sub.x_train.shape == (300, 1, 8, 8)
    assert torch.equal(sub.x_val, full.x_val) and torch.equal(sub.y_val, full.y_val)  # val as it was
    # Each class's share of the 1,438 training images, largest remainders rounded up:
    # 300 x [150, 144, 144, 143, 148, 143, 149, 137, 133, 147] / 1438.
    assert np.bincount(full.y_train.numpy()).tolist() == [150, 144, 144, 143, 148, 143, 149, 137, 133, 147]
    assert np.bincount(sub.y_train.numpy()).tolist() == [31, 30, 30, 30, 31, 30, 31, 28, 28, 31]
    # Training samples with their own labels, none twice, in the training set's order.
    where = {r.tobytes(): i for i, r in enumerate(full.x_train.numpy())}
    picked = [where[r.tobytes()] for r in sub.x_train.numpy()]
    assert len(set(picked)) == 300 and picked == sorted(picked)
    assert full.y_train[picked].tolist() == sub.y_train.tolist()
    again = load_dataset(compose_config("data=digits", "data.n_train=300").data, CPU)
    other = load_dataset(compose_config("data=digits", "data.n_train=300", "data.seed=1").data, CPU)
    assert torch.equal(sub.x_train, again.x_train) and not torch.equal(sub.x_train, other.x_train)
    seed = load_dataset(_with_split(compose_config("data=digits", "data.n_train=300").data, "seed"), CPU)
    assert (seed.n_train, seed.n_val) == (300, 360)
    with pytest.raises(DataError) as err:
        load_dataset(compose_config("data=digits", "data.n_train=1439").data, CPU)
    assert str(err.value) == ("data.n_train=1439 is more than the 1438 training samples of digits left after "
                              "the validation split; set data.n_train to at most that, or 0 for all")


def test_digits_standardize_by_the_training_sets_statistics(compose_config) -> None:
    plain = load_dataset(compose_config("data=digits").data, CPU)
    std = load_dataset(compose_config("data=digits", "data.normalize=standardize").data, CPU)
    assert plain.run_facts()["normalize"] == "none" and "channel_mean" not in plain.run_facts()
    x = plain.x_train.double()
    mean, sd = x.mean().item(), x.std(unbiased=False).item()
    facts = std.run_facts()
    assert facts["normalize"] == "standardize" and facts["image_shape"] == [1, 8, 8]
    np.testing.assert_allclose(facts["channel_mean"], [mean], rtol=1e-9)
    np.testing.assert_allclose(facts["channel_std"], [sd], rtol=1e-9)
    assert 0.30 < mean < 0.31 and 0.37 < sd < 0.38  # digits' pixels / 16
    assert std.x_train.shape == (1438, 1, 8, 8)
    assert abs(std.x_train.double().mean().item()) < 1e-6
    assert std.x_train.double().std(unbiased=False).item() == pytest.approx(1, abs=1e-6)
    # The validation set by the training set's numbers, not its own.
    expected = (plain.x_val - np.float32(mean)) / np.float32(sd)
    torch.testing.assert_close(std.x_val, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dataset", ["digits", "svhn"])
def test_bad_values_of_the_shared_options_are_one_line(compose_config, dataset: str) -> None:
    """Wrong values that compose are validate's one line; wrong types and choices Hydra's."""
    from hydra.errors import ConfigCompositionException

    from agop_sweep.config import validate
    from agop_sweep.run.app import error_report

    for override, line in (
        ("data.n_train=-1", "Invalid config: data.n_train=-1: must be >= 0"),
        ("data.val_fraction=1.0", "Invalid config: data.val_fraction=1.0: must be in [0, 1)"),
        ("data.val_fraction=-0.1", "Invalid config: data.val_fraction=-0.1: must be in [0, 1)"),
    ):
        with pytest.raises(ConfigError) as err:
            validate(compose_config(f"data={dataset}", override))
        assert str(err.value) == line
    schema = {"digits": "DigitsConfig", "svhn": "SVHNConfig"}[dataset]
    for override, words in (
        ("data.normalize=zscore", "expected one of [none, standardize]"),
        ("data.n_train=ten", "could not be converted to Integer"),
        ("data.labels=coarse", f"Key 'labels' not in '{schema}'"),  # CIFAR-100's only
    ):
        with pytest.raises(ConfigCompositionException) as comp:
            compose_config(f"data={dataset}", override)
        report = error_report(comp.value)
        assert words in report and "\n" not in report, report
    validate(compose_config(f"data={dataset}", "data.n_train=100", "data.normalize=standardize"))


def test_digits_needs_a_validation_fraction(compose_config) -> None:
    """digits has no test set: val_fraction=0 would leave no validation samples."""
    from agop_sweep.config import validate

    with pytest.raises(ConfigError) as err:
        validate(compose_config("data=digits", "data.val_fraction=0"))
    assert str(err.value) == ("Invalid config: data.val_fraction=0.0: must be > 0 for data=digits, which has "
                              "no test set to validate on")
    validate(compose_config("data=digits", "data.val_fraction=0", "data.split=seed"))  # its own 20 %
    validate(compose_config("data=svhn", "data.val_fraction=0"))  # the test set validates


def test_a_run_of_digits_and_of_svhn_with_the_shared_options(tmp_path: Path) -> None:
    """From the command line: digits' stratified subset, and SVHN files standardized, both to
    ``completed``, with what results.json's ``run`` records about them."""
    files = make_svhn_files(tmp_path / "svhn", n_train=40, n_test=24)
    small = [o for o in TINY if not o.startswith("data")]
    procs = run_cli_many({
        "digits": [*small, "data=digits", "data.n_train=300", "data.normalize=standardize",
                   f"hydra.run.dir={tmp_path / 'digits'}"],
        "svhn": [*small, "data=svhn", f"data.root={files.root}", "data.verify=false", "data.download=false",
                 "data.n_train=20", "data.normalize=standardize", f"hydra.run.dir={tmp_path / 'svhn_run'}"],
    }, cwd=tmp_path, parallel=2)
    runs = {}
    for name, proc in procs.items():
        assert proc.returncode == 0, proc.stderr[-3000:]
        res = json.loads((tmp_path / ("svhn_run" if name == "svhn" else name) / "results.json").read_text())
        assert res["status"] == "completed", name
        runs[name] = res
    digits, svhn = runs["digits"]["run"], runs["svhn"]["run"]
    assert (digits["dataset"], digits["n_train"], digits["n_val"], digits["image_shape"]) == (
        "digits", 300, 359, [1, 8, 8])
    assert runs["digits"]["config"]["data"]["n_train"] == 300
    assert (svhn["dataset"], svhn["n_train"], svhn["n_val"], svhn["image_shape"]) == (
        "svhn", 20, 24, [3, 32, 32])
    assert digits["classes"] == svhn["classes"] == [str(d) for d in range(10)]
    assert digits["normalize"] == svhn["normalize"] == "standardize"
    # The statistics of the very subset that trained: the same data loaded here, unnormalized.
    with composing() as compose:
        plain = load_dataset(compose("data=digits", "data.n_train=300").data, CPU)
        own = load_dataset(compose("data=svhn", f"data.root={files.root}", "data.verify=false",
                                   "data.download=false", "data.n_train=20").data, CPU)
    x = plain.x_train.double()
    np.testing.assert_allclose(digits["channel_mean"], [x.mean().item()], rtol=1e-9)
    np.testing.assert_allclose(digits["channel_std"], [x.std(unbiased=False).item()], rtol=1e-9)
    assert np.bincount(own.y_train.numpy()).tolist() == [2] * 10  # 4 of each digit in the file
    v = own.x_train.double()
    np.testing.assert_allclose(svhn["channel_mean"], v.mean(dim=(0, 2, 3)).tolist(), rtol=1e-9)
    np.testing.assert_allclose(svhn["channel_std"], v.std(dim=(0, 2, 3), unbiased=False).tolist(), rtol=1e-9)


@pytest.mark.parametrize("dataset", ["digits", "svhn"])
def test_a_run_saved_before_the_shared_options_is_the_same_experiment(compose_config, dataset: str) -> None:
    """A config saved before svhn and digits had n_train and normalize reads as 0 (all) and
    none: resume=true finds the same experiment, not two differing keys."""
    from agop_sweep.config import to_container, upgrade_saved_config
    from agop_sweep.store.state import config_differences

    today = to_container(compose_config(f"data={dataset}"))
    saved = {**today, "data": {k: v for k, v in today["data"].items() if k not in ("n_train", "normalize")}}
    assert config_differences(saved, today) == ["data.n_train", "data.normalize"]
    assert config_differences(upgrade_saved_config(saved), today) == []
    changed = to_container(compose_config(f"data={dataset}", "data.n_train=100"))
    assert config_differences(upgrade_saved_config(saved), changed) == ["data.n_train"]
