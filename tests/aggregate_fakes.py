"""Fake and real runs for the aggregate tests: run directories in Hydra's layout with made-up
numbers (fast), or a real 3 optimizers x 2 seeds sweep run as a subprocess (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from agop_sweep.analyze.names import METRICS, VARIANTS
from agop_sweep.store.record import RunRecord

TINY = [
    "data=synthetic", "data.n_train=128", "data.n_val=32", "data.n_features=64",
    "data.image_shape=[1,8,8]", "model.width=16", "model.depth=2", "schedule=smoke",
    "trainer.plots=end",
]
CALLBACK = "+hydra.callbacks.aggregate._target_=agop_sweep.run.callbacks.AggregateOnMultirunEnd"
FIGURES = ("comparison", "losses", "final_correlation", "effective_rank", "features")
OPTIMIZERS = ("adam", "muon", "sgd")
LRS = {"sgd": 0.1, "adam": 0.001, "muon": 0.01}


def env() -> dict[str, str]:
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}


def write_fake_run(run_dir: Path, optimizer: str, seed: int, overrides: list[str], depth: int = 2,
                   epochs: int = 3, lr: float | None = None, new_keys: bool = False) -> RunRecord:
    """A run directory as the app writes it (results.json, .hydra/, features.npz) with
    made-up numbers that differ per optimizer and seed; ``new_keys``: also the centered
    variants and the per-layer weight_change, alpha_star, alpha_corr (as newer runs write)."""
    rng = np.random.default_rng(zlib.crc32(f"{optimizer}{seed}{lr if new_keys else ''}".encode()))
    lr = LRS[optimizer] if lr is None else lr
    config = {"optimizer": {"name": optimizer, "lr": lr}, "seed": seed,
              "model": {"width": 16, "depth": depth, "act": "relu"},
              "schedule": {"name": "smoke", "epochs": epochs, "checkpoints": list(range(epochs + 1))},
              "analysis": {"primary": "delta_cos_agop"},
              "data": {"name": "synthetic", "n_train": 128, "image_shape": [1, 8, 8]}}
    record = RunRecord.start({"optimizer": optimizer, "lr": lr, "seed": seed, "dataset": "synthetic",
                              "width": 16, "depth": depth, "act": "relu"}, config, started_at=1000.0 + seed)
    for e in range(epochs + 1):
        loss = 0.1 * (1 - 0.1 * e * rng.random())
        record.finish_epoch({"epoch": e, "train_loss": loss, "val_loss": loss * 1.05,
                             "train_acc": 0.1 + 0.2 * e * rng.random(),
                             "val_acc": 0.1 + 0.1 * e * rng.random(), "seconds": 0.5, "train_seconds": 0.25})
        layers = []
        for l in range(depth):
            names = METRICS if new_keys else VARIANTS
            metrics = {v: None if e == 0 and v.startswith("delta") else float(rng.random()) for v in names}
            spectrum = {"effective_rank": float(1 + 10 * rng.random()), "top5_share": [0.3, 0.2, 0.1, 0, 0]}
            extra = {} if not new_keys else {
                "weight_change": 0.0 if e == 0 else float(e * rng.random()),
                "alpha_star": None if e == 0 else float(2 * rng.random()),
                "alpha_corr": None if e == 0 else float(rng.random())}
            layers.append({
                **extra,
                "layer": l, "shape": [16, 64 if l == 0 else 16], "corr": metrics["delta_cos_agop"],
                "metrics": metrics,
                "spectra": {"agop": spectrum, "nfm_raw": dict(spectrum),
                            "nfm_delta": None if e == 0 else spectrum,
                            "top_eigvec_cos": {"raw": float(rng.random()), "delta": None if e == 0 else 0.5}},
            })
        record.add_analysis({"epoch": e, "n_samples": 128, "seconds": 0.1, "layers": layers})
    record.mark_completed()
    (run_dir / ".hydra").mkdir(parents=True)
    record.save(run_dir / "results.json")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    n = len(record.epochs)
    feats = {"epochs": np.arange(n), "image_shape": np.array([1, 8, 8]), "eigvec_epoch": np.array(n - 1),
             "nfm_eigvecs": rng.standard_normal((8, 64)), "agop_eigvecs": rng.standard_normal((8, 64))}
    feats |= {k: rng.random((n, 64)) for k in ("nfm_diag", "nfm_delta_diag", "agop_diag")}
    feats |= {f"eigvals_{k}_{l}": np.sort(rng.random(16))[::-1]
              for k in ("agop", "nfm") for l in range(depth)}
    np.savez(run_dir / "features.npz", **feats)
    return record


def make_fake_sweep(sweep: Path, new_keys: bool = False) -> Path:
    for opt in ("sgd", "adam", "muon"):
        for seed in (1, 2):
            overrides = ["data=synthetic", "model.width=16", "data.n_train=128", f"optimizer={opt}",
                         f"seed={seed}"]
            write_fake_run(sweep / ",".join(overrides), opt, seed, overrides, new_keys=new_keys)
    return sweep


def make_lr_sweep(sweep: Path, lrs: tuple[float, ...] = (1e-2, 1e-4, 1e-3)) -> Path:
    """adam and sgd at each of ``lrs`` (written out of numeric order), two seeds each, with
    the new keys."""
    for opt in ("adam", "sgd"):
        for lr in lrs:
            for seed in (1, 2):
                overrides = [f"optimizer={opt}", f"optimizer.lr={lr:g}", f"seed={seed}"]
                write_fake_run(sweep / ",".join(overrides), opt, seed, overrides, lr=lr, new_keys=True)
    return sweep


def make_real_sweep(root: Path) -> Path:
    sweep = root / "sweep"
    cmd = [sys.executable, "-m", "agop_sweep", "-m", "optimizer=sgd,adam,muon", "seed=1,2", *TINY,
           f"hydra.sweep.dir={sweep}", CALLBACK]
    proc = subprocess.run(cmd, cwd=root, env=env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return sweep


def results_of(sweep: Path) -> dict[str, RunRecord]:
    return {p.parent.name: RunRecord.load(p) for p in sweep.glob("*/results.json")}


def legend_texts(fig) -> list[str]:
    """The texts of every legend of ``fig``, the figure's own and its axes', in order."""
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def end_as(record: RunRecord, status: str, *, diverged_epoch: int = 1,
           error: str = "RuntimeError: boom") -> None:
    """Give a fake record ``status`` through the record's own methods (``running``: as it is)."""
    if status == "completed":
        record.mark_completed()
    elif status == "diverged":
        record.mark_diverged(diverged_epoch)
    elif status == "failed":
        record.mark_failed(error)
    elif status != "running":
        raise ValueError(f"unknown status {status!r}")


def build_figures(runs, table, df, metric: str, by: str, x: str | None = None) -> dict:
    """Every figure aggregate would draw for these tables, by name, in the shared style, not saved."""
    from agop_sweep.aggregate.command import figure_builders
    from agop_sweep.figures.style import style

    with style():
        built = {name: build() for name, build in figure_builders(runs, table, df, metric, by, x).items()}
    return {name: fig for name, fig in built.items() if fig is not None}
