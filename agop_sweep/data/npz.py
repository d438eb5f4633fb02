"""Arrays of your own (``data=npz data.path=FILE``): a NumPy .npz with ``x_train``, ``y_train``,
``x_test`` and ``y_test``, loaded with ``allow_pickle=False``, so nothing in it can run code.

Inputs are images N x C x H x W (N x H x W x C with ``data.layout=nhwc``), one-channel images
N x H x W, or vectors N x D; uint8 values are pixels (scaled by 1/255), floating values are
used as they are. Labels are integers 0..c-1, c being the number of classes. Every check fails
with one line naming the file and the key.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from agop_sweep.errors import DataError

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _fail(path: Path, why: str) -> DataError:
    return DataError(f"{path}: {why}")


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data.path={path} is not a file; give data.path the .npz with "
                        f"{', '.join(KEYS)}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise _fail(path, "is a single .npy array, not an .npz archive with "
                              f"{', '.join(KEYS)} (save them with np.savez)")
        with npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                has = ", ".join(npz.files) or "no arrays"
                raise _fail(path, f"lacks {', '.join(missing)} (it has {has}); an .npz for "
                                  f"data=npz holds {', '.join(KEYS)}")
            arrays = {}
            for key in KEYS:
                try:
                    arrays[key] = npz[key]
                except ValueError as e:  # object arrays need pickle, which is never allowed
                    raise _fail(path, f"{key} cannot be read without pickle ({e}); store numbers, "
                                      "not Python objects") from None
            return arrays
    except DataError:
        raise
    except MemoryError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise _fail(path, f"is not a readable .npz file ({type(e).__name__}: {e})") from None


def _images(path: Path, key: str, x: np.ndarray, layout: str) -> np.ndarray:
    """``x`` as (N, C, H, W) for images, (N, D) for vectors."""
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise _fail(path, f"{key} has dtype {x.dtype}; store uint8 pixels (0..255, scaled by 1/255) "
                          "or floats (used as they are)")
    if x.ndim not in (2, 3, 4) or x.shape[0] == 0 or 0 in x.shape[1:]:
        raise _fail(path, f"{key} has shape {x.shape}; expected N x C x H x W images "
                          "(N x H x W x C with data.layout=nhwc), N x H x W or N x D vectors, N >= 1")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and layout == "nhwc":
        return x.transpose(0, 3, 1, 2)
    return x


def _labels(path: Path, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.dtype.kind not in "iu":
        raise _fail(path, f"{key} has dtype {y.dtype}; labels are integers 0..c-1")
    if y.shape != (n,):
        raise _fail(path, f"{key} has shape {y.shape}, expected ({n},): one label per sample of "
                          f"x_{key[2:]}")
    if n and y.min() < 0:
        raise _fail(path, f"{key} holds label {int(y.min())}; labels are integers 0..c-1")
    return y.astype(np.int64)


def load(path: str, layout: str = "nchw") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                   tuple[int, ...], int]:
    """``(x_train, y_train, x_test, y_test, image_shape, n_classes)`` of the file at ``path``:
    inputs (N, C, H, W) or (N, D) in the file's dtype, int64 labels, the (C, H, W) of an
    input ((1, 1, D) for vectors) and c, one more than the largest label."""
    p = Path(path)
    arrays = _read(p)
    x_tr = _images(p, "x_train", arrays["x_train"], layout)
    x_te = _images(p, "x_test", arrays["x_test"], layout)
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise _fail(p, f"x_train's samples have shape {x_tr.shape[1:]} but x_test's "
                       f"{x_te.shape[1:]}; both sets need inputs of one shape")
    if x_tr.dtype != x_te.dtype:
        raise _fail(p, f"x_train has dtype {x_tr.dtype} but x_test {x_te.dtype}; store both alike")
    y_tr = _labels(p, "y_train", arrays["y_train"], len(x_tr))
    y_te = _labels(p, "y_test", arrays["y_test"], len(x_te))
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    seen = np.zeros(n_classes, dtype=bool)
    seen[y_tr] = seen[y_te] = True
    if n_classes < 2 or not seen.all():
        absent = np.flatnonzero(~seen).tolist()
        why = (f"class {absent[0]} has no sample ({len(absent)} of 0..{n_classes - 1} have none)"
               if absent else "only one class")
        raise _fail(p, f"y_train and y_test hold labels up to {n_classes - 1} but {why}; labels "
                       "are integers 0..c-1, every class used, c >= 2")
    shape = tuple(x_tr.shape[1:]) if x_tr.ndim == 4 else (1, 1, x_tr.shape[1])
    return x_tr, y_tr, x_te, y_te, shape, n_classes
