"""One analysis of a model: per hidden layer, NFM vs AGOP over all training samples."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from agop_sweep.analyze.agop import jacobian_kernels
from agop_sweep.analyze.conv import conv_kernels
from agop_sweep.analyze.nfa import LayerComparison, Spectrum, compare_layer, top_eigvec_cosine
from agop_sweep.model.cnn import CNN
from agop_sweep.model.mlp import MLP, LayerInfo

log = logging.getLogger(__name__)

TOP_SHARES = 5


@contextlib.contextmanager
def exact_matmuls() -> Iterator[None]:
    """Full float32 matmuls (no TF32) for the analysis, whatever training uses."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@dataclass
class Analysis:
    """``record``: the results.json entry; ``train_loss``/``train_acc``: from the same pass;
    ``layer0``: arrays for features.npz; ``eigvals``: per layer, for the spectra figure."""

    record: dict[str, Any]
    train_loss: float
    train_acc: float
    layer0: dict[str, np.ndarray] = field(default_factory=dict)
    eigvals: dict[str, list[np.ndarray]] = field(default_factory=dict)


def _spectral_summary(spectra: dict[str, Spectrum]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("agop", "nfm_raw", "nfm_delta"):
        s = spectra.get(name)
        out[name] = None if s is None else {
            "effective_rank": s.effective_rank(),
            f"top{TOP_SHARES}_share": s.shares(TOP_SHARES),
        }
    agop = spectra.get("agop")
    out["top_eigvec_cos"] = {
        kind: (top_eigvec_cosine(spectra[f"nfm_{kind}"], agop)
               if agop is not None and f"nfm_{kind}" in spectra else None)
        for kind in ("raw", "delta")
    }
    return out


def _top_vectors(s: Spectrum | None, k: int, d: int) -> np.ndarray:
    """(k, d) top eigenvectors as rows, zero rows where the matrix has fewer."""
    out = np.zeros((k, d), dtype=np.float32)
    if s is not None:
        m = min(k, s.values.numel())
        out[:m] = s.vectors[:, :m].T.float().cpu().numpy()
    return out


def layer_entry(layer: int, info: LayerInfo, cmp: LayerComparison, cfg: Any) -> dict[str, Any]:
    """The results.json entry of one layer (docs/results.md: results.json: layer, kind, shape,
    corr, metrics, ...)."""
    entry: dict[str, Any] = {
        "layer": layer,
        **info.entry(),
        "corr": cmp.metrics[cfg.primary],
        "metrics": cmp.metrics,
        "weight_change": cmp.weight_change,
        "alpha_star": cmp.alpha_star,
        "alpha_corr": cmp.alpha_corr,
        "alphas": {kind: {"alpha_star": a, "alpha_corr": c} for kind, (a, c) in cmp.alphas.items()},
    }
    if cfg.spectra:
        entry["spectra"] = _spectral_summary(cmp.spectra)
    if cmp.error is not None:
        entry["error"] = cmp.error
        log.warning("Layer %d has no numbers: %s", layer, cmp.error)
    return entry


def _layer0_features(w: torch.Tensor, w0: torch.Tensor, k: torch.Tensor, cmp: LayerComparison,
                     top: int) -> dict[str, np.ndarray]:
    """features.npz's layer-0 arrays: the diagonals (d,) of W^T W, (W-W0)^T (W-W0) and the
    AGOP W^T K W, and the ``top`` leading eigenvectors (top, d) of both NFMs and the AGOP."""
    wd, w0d = w.double(), w0.double()
    d = w.shape[1]
    return {
        "nfm_diag": (wd * wd).sum(0).cpu().numpy(),
        "nfm_delta_diag": ((wd - w0d) ** 2).sum(0).cpu().numpy(),
        "agop_diag": ((k @ wd) * wd).sum(0).cpu().numpy(),
        "nfm_eigvecs": _top_vectors(cmp.spectra.get("nfm_raw"), top, d),
        "nfm_delta_eigvecs": _top_vectors(cmp.spectra.get("nfm_delta"), top, d),
        "agop_eigvecs": _top_vectors(cmp.spectra.get("agop"), top, d),
    }


@contextlib.contextmanager
def _single_threaded_torch() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def compare_layers(weights: Sequence[torch.Tensor], inits: Sequence[torch.Tensor],
                   kernels: Sequence[torch.Tensor], cfg: DictConfig) -> list[LayerComparison]:
    """:func:`compare_layer` of every hidden layer (``cfg``: the ``analysis`` group).

    On the CPU the layers run side by side, one per thread of the job's budget, each on one
    thread. Their matmuls and eigensolvers are small (1024 x 1024), and multi-threaded ones
    wait at every barrier, for each other and, on a busy machine, for other processes' work:
    on two idle cores the default model's five layers take 5.1 s so against 5.5 s one after
    another on two threads, and a busy machine does not stall them.
    """
    def one(layer: int) -> LayerComparison:
        top = cfg.top_eigvecs if layer == 0 and cfg.save_features else 1
        return compare_layer(weights[layer], inits[layer], kernels[layer], with_spectra=cfg.spectra,
                             primary=cfg.primary, top=top)

    workers = min(torch.get_num_threads(), len(weights))
    if weights[0].device.type != "cpu" or workers <= 1:
        return [one(layer) for layer in range(len(weights))]
    with _single_threaded_torch(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(weights))))


def analyze_model(
    model: MLP | CNN,
    init_weights: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: DictConfig,
    loss: str,
    epoch: int,
    progress: bool = True,
    stop: Callable[[], None] | None = None,
) -> Analysis:
    """Analyse every hidden layer of ``model`` on the training inputs ``x`` (n, C, H, W) /
    ``y`` (n,).

    ``cfg`` is the ``analysis`` group. The pass yields the train loss and accuracy too: the
    MLP's from :func:`jacobian_kernels`, the CNN's from :func:`conv_kernels`.
    ``stop`` is called between chunks and may raise to abandon the analysis (preemption).
    """
    start = time.perf_counter()
    weights = [w.detach() for w in model.hidden_weights()]
    on_chunk = None if stop is None else (lambda _start: stop())
    with exact_matmuls():
        if isinstance(model, CNN):
            kp = conv_kernels(model, x, y, loss=loss, chunk_size=cfg.conv_chunk_size, progress=progress,
                              on_chunk=on_chunk)
        else:
            kp = jacobian_kernels(
                weights, model.last.weight.detach(), model.act, model.act_grad, x.flatten(1), y,
                loss=loss, chunk_size=cfg.chunk_size, progress=progress, on_chunk=on_chunk,
            )
        layers, layer0, eigvals = [], {}, {"agop": [], "nfm_raw": []}
        inits = [w0.to(w.device) for w, w0 in zip(weights, init_weights, strict=True)]
        comparisons = compare_layers(weights, inits, kp.kernels, cfg)
        infos = model.layer_infos()
        for layer, (w, w0, k, cmp) in enumerate(zip(weights, inits, kp.kernels, comparisons, strict=True)):
            features = layer == 0 and cfg.save_features
            layers.append(layer_entry(layer, infos[layer], cmp, cfg))
            if cfg.spectra:
                for name in eigvals:
                    s = cmp.spectra.get(name)
                    eigvals[name].append(np.zeros(0) if s is None else s.values.cpu().numpy())
            if features:
                layer0 = _layer0_features(w, w0, k, cmp, cfg.top_eigvecs)
    seconds = time.perf_counter() - start
    record = {
        "epoch": epoch,
        "n_samples": kp.n,
        "seconds": seconds,
        "train_loss": kp.loss,
        "train_acc": kp.accuracy,
        "layers": layers,
    }
    log.info(
        "Analysis epoch %d: %s corr per layer %s (%.1f s)",
        epoch, cfg.primary,
        " ".join("null" if e["corr"] is None else f"{e['corr']:.4f}" for e in layers),
        seconds,
    )
    return Analysis(record, kp.loss, kp.accuracy, layer0, eigvals)
