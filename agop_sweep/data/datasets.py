"""Datasets as whole tensors on the training device: images (N, C, H, W), int labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agop_sweep.config.schema import DataSplit
from agop_sweep.config.validate import check_split
from agop_sweep.data import sources
from agop_sweep.errors import DataError

log = logging.getLogger(__name__)

# data.split (config.schema.DataSplit): ``default`` validates on the test set (SVHN), on a
# val_fraction of the data (digits) or on the generated n_val samples (synthetic); ``seed`` on
# the original script's 20 % of the training set: seed_split(n, ORIGINAL_SEED), whatever
# data.seed is.
ORIGINAL_SEED = 1717


@dataclass
class Dataset:
    """Train and validation sets, each an (n, C, H, W) float32 tensor of images (``image_shape``
    (C, H, W); vectors of d numbers are (n, 1, 1, d)) and an (n,) int64 tensor of labels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int
    image_shape: tuple[int, int, int]
    # What results.json's ``run`` records besides the shape: the class names, data.normalize
    # and its statistics (the datasets of agop_sweep.data.sources).
    facts: dict[str, Any] = field(default_factory=dict)

    def run_facts(self) -> dict[str, Any]:
        """results.json ``run``'s keys about the data: image_shape, n_classes, classes (names,
        else "0".."c-1"), and where the dataset has them, normalize and its statistics."""
        return {"image_shape": [int(s) for s in self.image_shape], "n_classes": self.n_classes,
                "classes": [str(c) for c in range(self.n_classes)], **self.facts}

    @property
    def n_features(self) -> int:
        """Numbers per input: C * H * W, what an MLP's first layer takes."""
        return int(np.prod(self.image_shape))

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_val(self) -> int:
        return self.x_val.shape[0]


def _holdout(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off ``fraction`` of the samples (seeded) as a validation set."""
    n_val = round(len(x) * fraction)
    order = np.random.default_rng(seed).permutation(len(x))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def seed_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The original script's 80/20 split of n >= 2 samples: (train, val) index arrays.

    The script called ``np.random.seed(seed)`` and then scikit-learn's
    ``train_test_split(X, y, train_size=0.8)``, which draws one permutation from NumPy's
    global generator: val is its first n - floor(0.8 n) entries, train the floor(0.8 n)
    after them, each in permutation order. This makes the same draw from a private
    ``RandomState(seed)``, so the global generator is left as it was.
    """
    from sklearn.model_selection import train_test_split

    train, val = train_test_split(
        np.arange(n), train_size=0.8, random_state=np.random.RandomState(seed)
    )
    return train, val


def _split_mode(cfg: DictConfig) -> DataSplit:
    """``data.split``, ``default`` where the dataset's config has no such key; checked by
    validate's rule (a node may come here without :func:`agop_sweep.config.validate`)."""
    check_split(cfg)
    return DataSplit(OmegaConf.select(cfg, "split", default=DataSplit.default))


def _seed_holdout(
    x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training set (x, y) split into train and validation as the original script did."""
    if len(x) < 2:
        raise DataError(f"data.split=seed needs at least 2 training samples, got {len(x)}")
    train, val = seed_split(len(x), ORIGINAL_SEED)
    return x[train], y[train], x[val], y[val]


# Rows of synthetic data generated at a time (float64 noise: 8192 x 3072 x 8 B = 0.2 GB).
SYNTHETIC_BLOCK_ROWS = 8192


def _synthetic(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    """Gaussian class prototypes plus noise, squashed into [0, 1]: learnable, not trivial."""
    rng = np.random.default_rng(cfg.seed)
    n, c, d = cfg.n_train + cfg.n_val, cfg.n_classes, cfg.n_features
    prototypes = rng.standard_normal((c, d)).astype(np.float32)
    y = rng.integers(0, c, size=n)
    # x = 1 / (1 + exp(-0.5 (prototype + 1.5 noise))) in float32, in place and with the noise
    # drawn in row blocks: at SVHN's size (99,289 x 3072) x is 1.2 GB, and whole-array float64
    # temporaries would quadruple the peak. The blocks continue one random stream, so the data
    # are the same, bit for bit, as from one whole-array draw.
    x = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, SYNTHETIC_BLOCK_ROWS):
        block = x[i : i + SYNTHETIC_BLOCK_ROWS]
        block[...] = rng.standard_normal(block.shape)
        block *= 1.5
        block += prototypes[y[i : i + SYNTHETIC_BLOCK_ROWS]]
        block *= -0.5
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    if _split_mode(cfg) == DataSplit.seed:  # the same training samples as by default, split 80/20
        return _seed_holdout(x[: cfg.n_train], y[: cfg.n_train])
    return x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train :], y[cfg.n_train :]


def _real(cfg: DictConfig) -> tuple[Any, ...]:
    """svhn, digits, mnist, fashion_mnist, cifar10, cifar100, npz: the training set split (its
    pixels still in the files' dtype: uint8 copies are a quarter of float32's, which matters at
    SVHN's 73,257 images), then data.n_train and data.normalize (agop_sweep.data.sources); a
    fifth item, what results.json records."""
    raw = sources.read(cfg)
    x, y = raw.x_train, raw.y_train
    if _split_mode(cfg) == DataSplit.seed:
        split = _seed_holdout(x, y)
    elif cfg.val_fraction > 0 or raw.test is None:  # digits has no test set
        split = _holdout(x, y, cfg.val_fraction, cfg.seed)
    else:
        split = (x, y, *raw.test())
    return sources.prepare(raw, cfg, *split)


_LOADERS = {"synthetic": _synthetic, **dict.fromkeys(sources.NAMES, _real)}


def load_dataset(cfg: DictConfig, device: torch.device) -> Dataset:
    """Load ``cfg`` (the ``data`` group) onto ``device`` and check it is usable."""
    split_mode = _split_mode(cfg)  # checked before any file is read
    name = str(getattr(cfg.name, "value", cfg.name))  # the schema may type it as an Enum
    x_tr, y_tr, x_va, y_va, *more = _LOADERS[name](cfg)
    facts = more[0] if more else {}
    image_shape = tuple(facts.pop("image_shape", None) or cfg.image_shape)
    if int(np.prod(image_shape)) != x_tr.shape[1]:
        raise DataError(
            f"data.image_shape={list(image_shape)} has {int(np.prod(image_shape))} pixels but "
            f"the {name} inputs have {x_tr.shape[1]} features; fix data.image_shape"
        )
    for split, x in (("train", x_tr), ("val", x_va)):
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=1).sum())
            raise DataError(
                f"The {name} {split} inputs hold NaN or inf in {bad} samples; "
                "clean the data files"
            )
    if len(x_tr) == 0:
        raise DataError(f"The {name} training set is empty; check data.* settings")
    # The real datasets know their classes (sources.prepare); synthetic has the key.
    n_classes = facts.pop("n_classes", None) or cfg.n_classes

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    def images(x: np.ndarray) -> torch.Tensor:  # the loaders' rows are (C, H, W) in C order
        return put(x.astype(np.float32, copy=False)).view(len(x), *image_shape)

    data = Dataset(
        name=name,
        x_train=images(x_tr),
        y_train=put(y_tr.astype(np.int64, copy=False)),
        x_val=images(x_va),
        y_val=put(y_va.astype(np.int64, copy=False)),
        n_classes=n_classes,
        image_shape=image_shape,  # type: ignore[arg-type]
        facts=facts,
    )
    log.info(
        "Data %s (split %s): %d train, %d val, %d features, %d classes, on %s",
        data.name, split_mode, data.n_train, data.n_val, data.n_features, n_classes, device,
    )
    return data
