"""features: per group (its lowest-seed run), the layer-0 NFM and AGOP diagonals and top
eigenvectors as images, each with the colour bar of its own scale; groups in one block of rows,
or two side by side when there are many, each row named by a horizontal, wrapped label."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from agop_sweep.aggregate.discover import Run, value_key
from agop_sweep.aggregate.groups import Groups, group_gid
from agop_sweep.aggregate.layout import new_figure, wrap
from agop_sweep.figures.style import blank_panel, show_image
from agop_sweep.store.features import FILENAME as FEATURES_FILE
from agop_sweep.store.features import FeaturesError, load_features, orient, to_image

log = logging.getLogger(__name__)

DELTA_NFM = "(W\u2212W\u2080)\u1d40(W\u2212W\u2080)"
PANEL = 1.8  # inches per image and its colour bar
LABEL_WIDTH = 2.0  # inches for a row's label
LABEL_CHARS = 24  # characters per line of a row's label
ONE_BLOCK = 5  # groups that stay in one block of rows


def _feature_runs(runs: Sequence[Run], groups: Groups) -> list[tuple[str, Run, dict[str, np.ndarray]]]:
    """Per group, the lowest-seed run with a readable features.npz, and its arrays."""
    by_name = {r.name: r for r in runs}
    chosen = []
    for g in groups.order:
        candidates = sorted((by_name[n] for n in groups.members[g]),
                            key=lambda r: (value_key(r.record.run.get("seed")), r.name))
        for r in candidates:
            path = r.path / FEATURES_FILE
            if not path.exists():
                continue
            try:
                arrays = load_features(path)
            except FeaturesError as e:  # a half-copied or foreign file: draw the others
                log.warning("%s; skipped", e)
                continue
            chosen.append((g, r, arrays))
            break
    return chosen


def _feature_images(arrays: dict[str, np.ndarray], nfm_key: str,
                    vec_key: str) -> list[tuple[np.ndarray, bool] | None]:
    """The four images of one row (image, signed) at the last saved epoch; None where missing."""
    shape = tuple(int(s) for s in arrays["image_shape"])
    last = len(arrays["epochs"]) - 1
    return [
        (to_image(arrays[nfm_key][last], shape), False),
        (to_image(arrays["agop_diag"][last], shape), False),
        (to_image(orient(arrays[vec_key][0]), shape), True) if vec_key in arrays else None,
        (to_image(orient(arrays["agop_eigvecs"][0]), shape), True) if "agop_eigvecs" in arrays else None,
    ]


def _row_label(g: str, r: Run, epoch: int) -> str:
    return f"{wrap(g, LABEL_CHARS)}\nseed {r.record.run.get('seed')}, epoch {epoch}"


def _layout(chosen: list[tuple[str, Run, dict[str, np.ndarray]]]) -> tuple[Figure, int, int]:
    """The figure sized to its rows (tall enough for the longest label) and blocks."""
    blocks = 1 if len(chosen) <= ONE_BLOCK else 2
    rows = math.ceil(len(chosen) / blocks)
    lines = max(_row_label(g, r, 0).count("\n") + 1 for g, r, _ in chosen)
    row_height = max(PANEL + 0.15, 0.17 * lines + 0.3)
    fig = new_figure(blocks * (4 * PANEL + LABEL_WIDTH) + 0.3, rows * row_height + 1.1)
    return fig, blocks, rows


def features_comparison_figure(runs: Sequence[Run], groups: Groups, metric: str) -> Figure | None:
    """Rows = groups (the lowest-seed run of each), columns = layer-0 NFM diagonal, AGOP
    diagonal, top NFM and top AGOP eigenvector as images, at the last analysed epoch.
    None when no run saved features."""
    chosen = _feature_runs(runs, groups)
    if not chosen:
        return None
    delta = metric.startswith("delta")
    nfm_key = "nfm_delta_diag" if delta else "nfm_diag"
    # The delta NFM's eigenvectors when the runs saved them and the metric compares the delta.
    vec_key = "nfm_delta_eigvecs" if delta and all("nfm_delta_eigvecs" in a for _, _, a in chosen) \
        else "nfm_eigvecs"
    columns = (f"NFM diag\n{DELTA_NFM}" if delta else "NFM diag\nW\u1d40W", "AGOP diag",
               "top eigenvector\n" + ("\u0394NFM" if vec_key == "nfm_delta_eigvecs" else "NFM W\u1d40W"),
               "top eigenvector\nAGOP")
    fig, blocks, rows = _layout(chosen)
    grid = fig.add_gridspec(rows, 4 * blocks)
    for i, (g, r, arrays) in enumerate(chosen):
        block, row = divmod(i, rows)
        shape = tuple(int(s) for s in arrays["image_shape"])
        axes = [fig.add_subplot(grid[row, 4 * block + j]) for j in range(4)]
        for j, (ax, item) in enumerate(zip(axes, _feature_images(arrays, nfm_key, vec_key), strict=True)):
            if item is None or not np.any(item[0]):
                blank_panel(ax, "n/a", shape[1:])
            else:
                show_image(ax, item[0], signed=item[1])
            ax.set_gid(group_gid(g))
            if row == 0:
                ax.set_title(columns[j], fontsize=9)
        axes[0].set_ylabel(_row_label(g, r, int(arrays["epochs"][-1])), fontsize=9, rotation=0,
                           ha="right", va="center")
    summed = any(int(a["image_shape"][0]) > 1 for _, _, a in chosen)
    title = "layer-0 features at the last analysed epoch" + (" (summed over channels)" if summed else "")
    fig.suptitle(wrap(title + "; each image on its own colour scale (its bar)", 70 * blocks), fontsize=12)
    return fig
