"""The datasets of real samples, read from files of their own formats: svhn (.mat), digits
(scikit-learn's bundled copy), mnist, fashion_mnist (idx), cifar10, cifar100 (pickled batches)
and npz (your arrays); and the options they all share after the train/val split:
``data.n_train`` (a seeded, class-stratified subset of the training set) and
``data.normalize`` (``none``: pixels in [0, 1]; ``standardize``: per channel, by the
training set's mean and std, which results.json's ``run`` records).

:func:`read` gives a dataset's training set and a way to read its test set (read only where
the split needs it); :func:`prepare` applies the shared options to the split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig

from agop_sweep.data import cifar, idx, npz, svhn
from agop_sweep.errors import DataError

log = logging.getLogger(__name__)

NAMES = ("svhn", "digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz")
# SVHN's and digits' classes: the digit each label is (SVHN's 10 read as 0).
DIGITS = tuple(str(d) for d in range(10))
# Rows converted or standardised at a time: bounds the float64 temporaries of the statistics.
BLOCK_ROWS = 4096

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class Raw:
    """A dataset as its files hold it: the training set, inputs (N, C, H, W) or (N, D) in the
    files' dtype (uint8 pixels, or floats: npz's, digits' scaled into [0, 1]) and int64
    labels; ``test()`` reads the test set (None: there is none, and validation is always
    held out of the training set, as for digits); the class names and the (C, H, W) of an
    input."""

    x_train: np.ndarray
    y_train: np.ndarray
    test: Callable[[], Arrays] | None
    classes: tuple[str, ...]
    image_shape: tuple[int, ...]


def _str(value: Any) -> str:
    return str(getattr(value, "value", value))  # the schema types the choices as Enums


def read(cfg: DictConfig) -> Raw:
    """The files of ``cfg.name`` (one of :data:`NAMES`), downloaded where they are missing."""
    name = _str(cfg.name)
    if name == "svhn":

        def split(which: str) -> Arrays:
            return svhn.load_split(cfg.root, which, cfg.url, verify=cfg.verify, allow_download=cfg.download)

        x, y = split("train")
        return Raw(x, y, lambda: split("test"), DIGITS, (3, 32, 32))
    if name == "digits":
        from sklearn.datasets import load_digits  # scikit-learn loads slowly: only when asked

        bunch = load_digits()
        x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # its pixels are 0..16
        return Raw(x, bunch.target.astype(np.int64), None, DIGITS, (1, 8, 8))
    if name in idx.SOURCES:
        source = idx.SOURCES[name]

        def split(which: str) -> Arrays:
            return idx.load_split(source, cfg.root, which, cfg.url, cfg.verify, cfg.download)

        x, y = split("train")
        return Raw(x, y, lambda: split("test"), source.classes, (1, 28, 28))
    if name in cifar.SOURCES:
        batches = cifar.SOURCES[name]
        labels = _str(cfg.get("labels", "fine"))

        def split(which: str) -> Arrays:
            return cifar.load_split(batches, cfg.root, which, cfg.url, labels, cfg.verify, cfg.download)

        x, y = split("train")
        return Raw(x, y, lambda: split("test"), cifar.classes(batches, labels), (3, 32, 32))
    if name == "npz":
        x, y, x_te, y_te, shape, n_classes = npz.load(cfg.path, _str(cfg.layout))
        return Raw(x, y, lambda: (x_te, y_te), tuple(str(c) for c in range(n_classes)), shape)
    raise ValueError(f"not a file dataset: {name}")


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` of the labels ``y``: each class's share of ``n`` in proportion
    to its share of ``y`` (largest remainders round up, ties to the lower class), its samples
    drawn at random (seeded)."""
    classes, counts = np.unique(y, return_counts=True)
    quota = n * counts / len(y)
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: n - int(take.sum())]] += 1
    rng = np.random.default_rng([seed, 1])  # not the holdout's stream (default_rng(seed))
    picked = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picked))


def _floats(x: np.ndarray) -> np.ndarray:
    """``x`` flattened to (N, D) float32: uint8 pixels scaled into [0, 1], floats as they are."""
    out = x.reshape(len(x), -1).astype(np.float32)  # a copy: the caller's arrays stay as read
    if x.dtype == np.uint8:
        out /= 255.0  # in place: SVHN's training set alone is 0.9 GB as float32
    return out


def channel_stats(x: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of ``x`` (N, C * H * W), in float64, two passes
    over row blocks: no float64 copy of the whole set."""
    n = len(x)
    per = x.shape[1] // channels
    total = np.zeros(channels)
    for i in range(0, n, BLOCK_ROWS):
        total += x[i: i + BLOCK_ROWS].reshape(-1, channels, per).sum(axis=(0, 2), dtype=np.float64)
    mean = total / (n * per)
    squares = np.zeros(channels)
    for i in range(0, n, BLOCK_ROWS):
        block = x[i: i + BLOCK_ROWS].reshape(-1, channels, per).astype(np.float64)
        block -= mean[None, :, None]
        squares += np.einsum("ncp,ncp->c", block, block)
    return mean, np.sqrt(squares / (n * per))


def _standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
    """(x - mean) / std per channel, in place on (N, C * H * W) float32."""
    view = x.reshape(len(x), len(mean), -1)
    view -= mean.astype(np.float32)[None, :, None]
    view /= std.astype(np.float32)[None, :, None]


def prepare(raw: Raw, cfg: DictConfig, x_tr: np.ndarray, y_tr: np.ndarray, x_va: np.ndarray,
            y_va: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """The split ``(x_tr, y_tr, x_va, y_va)`` of ``raw`` with data.n_train and data.normalize
    applied, inputs flattened in (C, H, W) order to float32, and what results.json's ``run``
    records about them."""
    name = _str(cfg.name)
    if cfg.n_train > 0:
        if cfg.n_train > len(y_tr):
            raise DataError(
                f"data.n_train={cfg.n_train} is more than the {len(y_tr)} training samples of "
                f"{name}{' left after the validation split' if len(y_tr) < len(raw.y_train) else ''}; "
                "set data.n_train to at most that, or 0 for all")
        keep = stratified_subset(y_tr, cfg.n_train, cfg.seed)
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    shape = tuple(cfg.image_shape) or raw.image_shape
    if tuple(shape) != raw.image_shape and (name != "npz" or x_tr.ndim == 4):
        raise DataError(
            f"data.image_shape={list(shape)}, but the {name} inputs are images of "
            f"{list(raw.image_shape)} (channels, height, width); "
            f"{'leave data.image_shape empty ([])' if name == 'npz' else 'leave data.image_shape as it is'}")
    x_tr, x_va = _floats(x_tr), _floats(x_va)
    facts: dict[str, Any] = {"image_shape": [int(s) for s in shape], "n_classes": len(raw.classes),
                             "classes": list(raw.classes), "normalize": _str(cfg.normalize)}
    if _str(cfg.normalize) == "standardize":
        channels = int(shape[0])
        if x_tr.shape[1] % channels:
            raise DataError(f"data.image_shape={list(shape)} does not divide the {x_tr.shape[1]} "
                            f"features of the {name} inputs into {channels} channels")
        mean, std = channel_stats(x_tr, channels)
        if (flat := std == 0).any():
            log.warning("Channel(s) %s of the %s training set are constant: divided by 1, not by "
                        "their std 0", np.flatnonzero(flat).tolist(), name)
        std = np.where(flat, 1.0, std)
        _standardize(x_tr, mean, std)
        _standardize(x_va, mean, std)
        facts |= {"channel_mean": mean.tolist(), "channel_std": std.tolist()}
        log.info("Standardized %s per channel: mean %s, std %s", name,
                 np.round(mean, 4).tolist(), np.round(std, 4).tolist())
    return x_tr, y_tr, x_va, y_va, facts
