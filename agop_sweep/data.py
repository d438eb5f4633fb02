"""Datasets as whole tensors on the training device: flattened inputs in [0, 1], int labels."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from agop_sweep import svhn
from agop_sweep.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Train and validation sets, each a (n, d) float32 tensor and a (n,) int64 tensor."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int
    image_shape: tuple[int, int, int]

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

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


def _svhn(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = svhn.load_split(
            cfg.root, name, cfg.url, verify=cfg.verify, allow_download=cfg.download
        )
        flat = x.reshape(len(x), -1).astype(np.float32)
        flat /= 255.0  # in place: SVHN's train set is 0.9 GB as float32
        return flat, y

    x, y = split("train")
    if cfg.val_fraction > 0:
        return _holdout(x, y, cfg.val_fraction, cfg.seed)
    return (x, y, *split("test"))


def _digits(cfg: DictConfig) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel values are 0..16
    y = bunch.target.astype(np.int64)
    return _holdout(x, y, cfg.val_fraction, cfg.seed)


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
    return x[: cfg.n_train], y[: cfg.n_train], x[cfg.n_train :], y[cfg.n_train :]


_LOADERS = {"svhn": _svhn, "digits": _digits, "synthetic": _synthetic}
_CLASSES = {"svhn": 10, "digits": 10}


def load_dataset(cfg: DictConfig, device: torch.device) -> Dataset:
    """Load ``cfg`` (the ``data`` group) onto ``device`` and check it is usable."""
    x_tr, y_tr, x_va, y_va = _LOADERS[cfg.name](cfg)
    n_classes = _CLASSES.get(cfg.name, cfg.n_classes)
    image_shape = tuple(cfg.image_shape)
    if int(np.prod(image_shape)) != x_tr.shape[1]:
        raise DataError(
            f"data.image_shape={list(image_shape)} has {int(np.prod(image_shape))} pixels but "
            f"the {cfg.name} inputs have {x_tr.shape[1]} features; fix data.image_shape"
        )
    for split, x in (("train", x_tr), ("val", x_va)):
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=1).sum())
            raise DataError(
                f"The {cfg.name} {split} inputs hold NaN or inf in {bad} samples; "
                "clean the data files"
            )
    if len(x_tr) == 0:
        raise DataError(f"The {cfg.name} training set is empty; check data.* settings")

    def put(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    data = Dataset(
        name=cfg.name,
        x_train=put(x_tr.astype(np.float32, copy=False)),
        y_train=put(y_tr.astype(np.int64, copy=False)),
        x_val=put(x_va.astype(np.float32, copy=False)),
        y_val=put(y_va.astype(np.int64, copy=False)),
        n_classes=n_classes,
        image_shape=image_shape,  # type: ignore[arg-type]
    )
    log.info(
        "Data %s: %d train, %d val, %d features, %d classes, on %s",
        data.name, data.n_train, data.n_val, data.n_features, n_classes, device,
    )
    return data
