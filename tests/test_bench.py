"""The benchmarks' own correctness: exact FLOP formulas against the matmuls torch's own
counter (torch.utils.flop_counter.FlopCounterMode) sees dispatched, the original-method
reference against the project's AGOP, where the scripts write, bench.sweep's projection at
tiny sizes, and bench.gpu_check (its dry run on the CPU: every step at tiny sizes, and the
JSON it writes).

The dry runs and the sweep projection take over 10 CPU-s each: they are marked slow. The full
dry run runs two real three-run sweeps as subprocesses; the other runs every other step in
this process.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from agop_sweep.analyze.agop import jacobian_kernels, pass_flops
from agop_sweep.analyze.nfa import agop_from_kernel
from agop_sweep.model.mlp import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not installed: it runs from the repository root
common = importlib.import_module("bench.common")
original = importlib.import_module("bench.original")
bench_agop = importlib.import_module("bench.agop")
gpu_check = importlib.import_module("bench.gpu_check")

D_IN, WIDTH, DEPTH, C = 48, 16, 3, 10


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(D_IN, WIDTH, DEPTH, C, "relu")


def shapes() -> list[tuple[int, int]]:
    return common.weight_shapes(WIDTH, DEPTH, d_in=D_IN, n_classes=C)


def test_train_flops_are_what_a_step_dispatches(model: torch.nn.Module) -> None:
    x, y = torch.rand(8, D_IN), torch.randint(0, C, (8,))
    with common.MatmulFlops() as mine, FlopCounterMode(display=False) as torchs:
        loss = F.mse_loss(model(x), F.one_hot(y, C).float())
        loss.backward()
    fl = common.train_flops(shapes(), 8)
    assert mine.total == torchs.get_total_flops() == fl["total"]
    # the input does not require grad: the first layer has no input gradient
    assert fl["naive_6x"] - fl["total"] == 2 * 8 * D_IN * WIDTH


def test_eval_flops(model: torch.nn.Module) -> None:
    with torch.no_grad(), common.MatmulFlops() as fc, FlopCounterMode(display=False) as torchs:
        model(torch.rand(5, D_IN))
    assert fc.total == torchs.get_total_flops() == common.eval_flops(shapes(), 5)


def test_ns_flops_are_what_muon_dispatches(model: torch.nn.Module) -> None:
    opt = torch.optim.Muon(model.parameters(), lr=0.01, weight_decay=0.0)
    F.mse_loss(model(torch.rand(4, D_IN)), torch.zeros(4, C)).backward()
    with common.MatmulFlops() as fc, FlopCounterMode(display=False) as torchs:
        opt.step()
    expected = sum(common.ns_flops(p.shape, 5) for p in model.parameters())
    assert fc.total == torchs.get_total_flops() == expected


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_original_method_agrees_with_the_pass(model: torch.nn.Module, dtype: torch.dtype, tol: float) -> None:
    """The reference (vmap(jacrev) of the sub-network in batches of 128, correct layer inputs)
    computes the same AGOP as the project's pass, and its FLOP formula is exact (counted by
    MatmulFlops: torch's FlopCounterMode fails under jacrev)."""
    model = model.to(dtype).eval()
    x = torch.rand(300, D_IN, dtype=dtype)  # two full batches and a partial one
    hidden, readout = bench_agop.weights(model)
    kp = jacobian_kernels(hidden, readout, model.act, model.act_grad, x, chunk_size=128)
    d = [D_IN] + [WIDTH] * DEPTH
    for l, (w, k) in enumerate(zip(hidden, kp.kernels, strict=True)):
        with common.MatmulFlops() as fc:
            ref = original.original_agop(model, x, l)
        assert bench_agop.rel_err(agop_from_kernel(w.double(), k), ref) < tol
        assert fc.total == original.reference_flops(d, C, 300, l)["total"]


def test_layer_inputs_are_the_layers_inputs(model: torch.nn.Module) -> None:
    """Not the original helper's h_{l+1} for layers 2-4: the activation entering layer l."""
    x = torch.rand(130, D_IN)
    w = [p.detach() for p in model.hidden_weights()]
    h2 = torch.relu(torch.relu(x @ w[0].T) @ w[1].T)
    assert torch.allclose(original.layer_inputs(model, x, 2, 128), h2)
    assert torch.equal(original.layer_inputs(model, x, 0, 128), x)


def test_pass_flops_are_what_the_pass_dispatches(model: torch.nn.Module) -> None:
    hidden, readout = bench_agop.weights(model.eval())
    x = torch.rand(200, D_IN)
    with common.MatmulFlops() as fc, FlopCounterMode(display=False) as torchs:
        jacobian_kernels(hidden, readout, model.act, model.act_grad, x, chunk_size=64)
    once = 2 * WIDTH * C * WIDTH  # R^T R for the top layer, once per pass
    assert fc.total == torchs.get_total_flops()
    assert fc.total - once == pass_flops([D_IN] + [WIDTH] * DEPTH, C, 200)["total"]


@pytest.mark.parametrize("name", ["agop", "train", "sweep", "ns_dtype"])
def test_scripts_write_under_outputs_bench(name: str) -> None:
    args = importlib.import_module(f"bench.{name}").parse([])
    assert Path(args.json) == ROOT / "outputs" / "bench" / f"{name}.json"
    assert Path(gpu_check.parse([]).out) == ROOT / "outputs" / "bench" / "gpu_check.json"


# -- gpu_check ----------------------------------------------------------------------------------


def test_gpu_check_without_cuda_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: the check would run")
    assert gpu_check.main(["--out", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA device" in out[0]
    assert not (tmp_path / "g.json").exists()


def _finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_report(report: dict, sweeps: bool) -> None:
    """Keys and values of a dry run's JSON are sane."""
    assert report["schema"] == 1 and report["dry_run"] is True and report["device"] == "cpu"
    assert set(report["steps"]) == set(gpu_check.STEPS)
    assert 0 < report["seconds"] < report["budget_s"]
    assert report["contention"] is None or 0 <= report["contention"] <= 1
    steps = report["steps"]
    for name in ("info", "correctness", "agop", "train"):
        assert steps[name]["status"] == "ok", steps[name]
        assert _finite_positive(steps[name]["seconds"])
    assert steps["info"]["result"]["torch"] == torch.__version__
    corr = steps["correctness"]["result"]
    assert corr["ok"] and corr["rel_err_f32"] < 1e-5 and corr["rel_err_f64"] < 1e-12

    a = steps["agop"]["result"]
    assert a["flop_check"]["equal"] is True
    assert a["rel_err_f32"] < 1e-5 and a["rel_err_f64"] < 1e-12
    for key in ("pass_seconds", "analysis_seconds", "reference_seconds", "speedup_pass", "speedup_analysis",
                "pass_efficiency", "matmul_fp32_flops", "reference_flops"):
        assert _finite_positive(a[key]), key
    assert a["analysis_seconds"] >= a["pass_seconds"] * 0.5
    assert a["reference_seconds"] == pytest.approx(a["reference_seconds_measured"] * a["ref_scale"])
    assert len(a["layers"]) == 3

    t = steps["train"]["result"]
    assert set(t["optimizers"]) == {"sgd", "adam", "muon"}
    assert _finite_positive(t["bandwidth_bytes_per_s"])
    for name, r in t["optimizers"].items():
        for key in ("step_s", "grad_s", "update_s", "peer_step_s", "peer_ratio", "train_efficiency",
                    "eval_efficiency", "update_floor_s", "update_vs_floor"):
            assert _finite_positive(r[key]), (name, key)
        assert r["profile"]["ranges"] == r["timed_steps"]  # one Optimizer.step range a step
        if name != "muon":
            assert len(r["kernels"]) == 3  # the configured kernel and torch's two others
            for v in r["kernels"].values():
                assert _finite_positive(v["alone_s"]) and _finite_positive(v["vs_warm_floor"])
            assert 0 < r["profile"]["fastest"] <= r["update_s"]  # one range no slower than their mean
        assert _finite_positive(r["warm_bandwidth"])
        assert len(r["rounds"]) == 2  # --repeats 2: each round with its own rate samples
        for key in ("train_efficiency", "update_vs_floor") + (("ns_vs_bf16",) if name == "muon" else ()):
            lo, hi = r[f"{key}_range"]
            assert 0 < lo <= r[key] <= hi, (name, key)
        per_round = [r["train_flops_step"] / k["step_s"] / k["fp32"] for k in r["rounds"]]
        assert r["train_efficiency"] == pytest.approx(sum(per_round) / 2)  # the median of two
        assert r["step_s"] == min(k["step_s"] for k in r["rounds"])
        extra = r.get("ns_flops", 0)  # the Trainer's steps dispatch exactly the formulas' matmuls
        assert r["counted_flops_step"] == r["train_flops_step"] + extra
    assert _finite_positive(t["optimizers"]["muon"]["ns_s"])

    c = steps["cnn"]
    assert c["status"] == "ok", c
    assert "model=cnn" in c["command"] and [r["optimizer"] for r in c["runs"]] == ["muon"]
    assert c["runs"][0]["status"] == "completed" and c["runs"][0]["analyses"] == 4

    if sweeps:
        for name in ("sweep_parallel", "sweep_sequential"):
            s = steps[name]
            assert s["status"] == "ok", s
            assert sorted(r["optimizer"] for r in s["runs"]) == ["adam", "muon", "sgd"]
            for r in s["runs"]:
                assert r["status"] == "completed" and r["epochs_done"] == 3 and r["analyses"] == 4
                assert r["wall_seconds"] is not None and 0 < r["wall_seconds"] <= s["seconds"]
        assert "cluster=joblib" in steps["sweep_parallel"]["command"]
        assert "schedule=smoke" in steps["sweep_sequential"]["command"]
        assert report["sweep"]["faster"] in ("parallel", "sequential")
    else:
        assert steps["sweep_parallel"]["status"] == steps["sweep_sequential"]["status"] == "skipped"


@pytest.mark.slow  # over 10 CPU-s
def test_gpu_check_dry_run_without_sweeps(tmp_path: Path) -> None:
    """Every step but the two sweeps, in this process."""
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--dry-run", "--out", str(out), "--skip", "sweep_parallel,sweep_sequential",
                         "--workdir", str(tmp_path / "work")])
    assert rc == 0
    check_report(json.loads(out.read_text()), sweeps=False)


def test_gpu_check_sweep_bookkeeping(tmp_path: Path) -> None:
    """Per-run wall times from results.json, and which mode is faster."""
    run = tmp_path / "sweep" / "optimizer=sgd"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({
        "status": "completed", "run": {"optimizer": "sgd", "device": "cuda:0"},
        "epochs": [{"epoch": e} for e in range(4)], "analysis": [{}] * 4,
        "timing": {"started_at": 100.0, "finished_at": 112.5, "total_seconds": 11.0,
                   "train_seconds": 6.0, "analysis_seconds": 4.0}}))
    (runs,) = [gpu_check._runs(tmp_path / "sweep")]
    assert runs == [{"optimizer": "sgd", "status": "completed", "device": "cuda:0", "epochs_done": 3,
                     "analyses": 4, "wall_seconds": 12.5, "total_seconds": 11.0, "train_seconds": 6.0,
                     "analysis_seconds": 4.0, "dir": str(run)}]
    ok = {"status": "ok", "seconds": 100.0}
    assert gpu_check.faster(ok, {"status": "ok", "seconds": 150.0})["faster"] == "parallel"
    slow = {"status": "ok", "seconds": 200.0}
    assert gpu_check.faster(slow, {"status": "ok", "seconds": 150.0})["faster"] == "sequential"
    assert gpu_check.faster(ok, {"status": "timeout", "seconds": 120.0})["faster"] == "parallel"
    assert gpu_check.faster(ok, {"status": "timeout", "seconds": 80.0})["faster"] is None
    assert gpu_check.faster(None, None)["faster"] is None
    # both stopped at the budget: epochs per second decide
    par = {"status": "timeout", "seconds": 100.0, "runs": [{"epochs_done": 20}] * 3}
    seq = {"status": "timeout", "seconds": 100.0, "runs": [{"epochs_done": 50}, {"epochs_done": 0}]}
    verdict = gpu_check.faster(par, seq)
    assert verdict["faster"] == "parallel" and verdict["basis"] == "epochs per second"
    assert verdict["parallel_epochs_per_s"] == pytest.approx(0.6)


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path: Path) -> None:
    """The whole dry run as a user runs it, the two real sweeps included (about a minute)."""
    out = tmp_path / "gpu_check.json"
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out),
                           "--workdir", str(tmp_path / "work")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_report(json.loads(out.read_text()), sweeps=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json"]  # work dir removed, nothing else


@pytest.mark.slow  # over 10 CPU-s
def test_sweep_bench_projects_the_schedule(tmp_path: Path) -> None:
    """bench.sweep at tiny sizes: the JSON it writes, and the FLOP bound's counts against
    the formulas for the default schedule (100 epochs, 25 analyses)."""
    sweep = importlib.import_module("bench.sweep")
    out = tmp_path / "sweep.json"
    n, n_val, width, depth = 256, 64, 16, 2
    sweep.main(["--width", str(width), "--depth", str(depth), "--n", str(n), "--n-val", str(n_val),
                "--mem-epochs", "2", "--mem-width", "8", "--no-full-run", "--steps", "2", "--muon-steps", "1",
                "--analysis-n", "128", "--eval-n", "128", "--matmul-size", "128", "--json", str(out)])
    report = json.loads(out.read_text())
    assert set(report["projected"]) == {"sgd", "adam", "muon"}
    assert len(report["memory"]["rss"]) == 3  # epochs 0..2
    shapes = common.weight_shapes(width, depth)
    for name, b in report["bounds"].items():
        fl = b["flops"]
        assert fl["training"] == 100 * n * common.train_flops(shapes, 1)["total"]
        assert fl["evaluation"] == common.eval_flops(shapes, 76 * n + 101 * n_val)
        assert fl["analysis"] == 25 * pass_flops(common.dims(width, depth), C, n)["total"]
        per_step = sum(common.ns_flops(s, 5) for s in shapes)
        assert fl["newton_schulz"] == (100 * math.ceil(n / 128) * per_step if name == "muon" else 0)
        total = report["projected"][name]["total_seconds"]
        assert _finite_positive(total) and b["projected_seconds"] == total
        assert b["of_bound"] == pytest.approx(b["bound_seconds"] / total)
