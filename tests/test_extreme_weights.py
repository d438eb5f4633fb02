"""Extreme weights never crash the analysis: non-finite weights make the run diverged (no
analysis of them), finite but extreme ones keep every number (the metrics are scale-free), a
non-finite kernel or a failed eigendecomposition leaves that layer's numbers null with the
reason, and an eigensolver that does not converge is retried with LAPACK's QR driver."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import run_cli

from agop_sweep.analyze import eigen
from agop_sweep.analyze.layers import layer_entry
from agop_sweep.analyze.names import METRICS
from agop_sweep.analyze.nfa import compare_layer
from agop_sweep.config import AnalysisConfig
from agop_sweep.model.mlp import LayerInfo


def _layer(d_out: int, d_in: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d_out, d_in, dtype=torch.float64, generator=gen) / math.sqrt(d_in)
    w = w0 + 0.3 * torch.randn(d_out, d_in, dtype=torch.float64, generator=gen) / math.sqrt(d_in)
    g = torch.randn(3 * d_out, d_out, dtype=torch.float64, generator=gen)
    return w, w0, g.T @ g / g.shape[0]


def _numbers(cmp) -> list[float | None]:
    return [cmp.metrics[m] for m in METRICS] + [cmp.alpha_star, cmp.alpha_corr, cmp.weight_change]


@pytest.mark.parametrize(("d_out", "d_in"), [(16, 48), (24, 24), (32, 8)])
@pytest.mark.parametrize(("scale_w", "scale_k"), [(1e30, 1.0), (1e-30, 1e25), (1e15, 1e-30)])
def test_finite_extreme_weights_keep_every_number(d_out: int, d_in: int, scale_w: float,
                                                  scale_k: float) -> None:
    w, w0, k = _layer(d_out, d_in)
    base = compare_layer(w, w0, k)
    big = compare_layer(w * scale_w, w0 * scale_w, k * scale_k)
    assert big.error is None
    for a, b in zip(_numbers(big), _numbers(base), strict=True):
        assert a == pytest.approx(b, rel=1e-8)


@pytest.mark.parametrize("where", ["W", "K"])
def test_non_finite_inputs_leave_the_layer_null_with_the_reason(where: str) -> None:
    w, w0, k = _layer(16, 48)
    if where == "W":
        w[3, 5] = math.inf
    else:
        k[0, 0] = math.nan
    cmp = compare_layer(w, w0, k)
    assert cmp.error == f"non-finite values in {where}"
    assert all(v is None for v in _numbers(cmp)) and cmp.spectra == {}
    entry = layer_entry(0, LayerInfo("linear", tuple(w.shape)), cmp, AnalysisConfig())
    assert entry["error"] == cmp.error and entry["corr"] is None
    assert entry["spectra"]["agop"] is None
    assert entry["spectra"]["top_eigvec_cos"] == {"raw": None, "delta": None}
    json.dumps(entry, allow_nan=False)  # strict JSON


def test_a_driver_that_does_not_converge_is_retried_then_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    w, w0, k = _layer(16, 48)
    base = compare_layer(w, w0, k)
    real = scipy.linalg.eigh
    failing = {"evr"}

    def eigh(*args, driver=None, **kwargs):
        if driver in failing:
            raise np.linalg.LinAlgError(f"{driver} did not converge")
        return real(*args, driver=driver, **kwargs)

    monkeypatch.setattr(scipy.linalg, "eigh", eigh)
    retried = compare_layer(w, w0, k)
    assert retried.error is None
    for a, b in zip(_numbers(retried), _numbers(base), strict=True):
        assert a == pytest.approx(b, rel=1e-10)
    failing.update(eigen.DRIVERS)
    monkeypatch.setattr(scipy.linalg.lapack, "dsytrd", lambda *a, **k: (None, None, None, None, 1))
    failed = compare_layer(w, w0, k)
    assert failed.error.startswith("eigendecomposition failed with every driver")
    assert all(v is None for v in _numbers(failed))


def test_the_readmes_divergence_example_ends_diverged_with_exit_0(tmp_path: Path) -> None:
    """lr = 1e6 with tanh: the weights turn NaN in epoch 1; no analysis of them, no traceback."""
    run_dir = tmp_path / "run"
    proc = run_cli("data=synthetic", "model.width=16", "schedule=smoke", "model.act=tanh",
                   "optimizer.lr=1e6", "device=cpu", "trainer.plots=off", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    res = json.loads((run_dir / "results.json").read_text())
    assert (res["status"], res["diverged_epoch"]) == ("diverged", 1)
    assert [a["epoch"] for a in res["analysis"]] == [0]
    assert res["epochs"][1]["train_loss"] is None
