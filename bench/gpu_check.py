"""One-shot GPU check: every performance figure a CUDA machine can give, in one command.

Steps, each timed and written to one JSON file (``--out``, rewritten after every step, so a
stopped check still leaves what it measured): ``info`` (versions, device); ``correctness``
(the AGOP pass on the device in float32 and float64 against the original's per-sample method
in float64 on the CPU, small net); ``agop`` and ``train`` (bench.agop and bench.train at their
default sizes on the device); ``cnn`` (one ``model=cnn`` run at CIFAR size, channels
[64, 128, 256], on 50,000 synthetic 3x32x32 images, 3 epochs, each analysed; its times from
results.json); ``sweep_parallel`` and ``sweep_sequential`` (a real
``python -m agop_sweep -m optimizer=sgd,adam,muon schedule=paper`` sweep on SVHN-sized
synthetic data, the three runs at once on the one GPU, then one after the other; per run its
status, epochs and seconds from results.json; ``sweep.faster`` names the faster way). The
check keeps to ``--budget`` seconds: a step that would run past it is stopped and recorded as
``timeout`` with what it had done. Without CUDA it says so in one line and exits 0;
``--dry-run`` runs every step on the CPU at tiny sizes to check the plumbing.
bench/README.md says more.

    python -m bench.gpu_check                      # on a CUDA machine (< 8 minutes)
    python -m bench.gpu_check --out results/gpu_check.json --keep
    python -m bench.gpu_check --dry-run            # anywhere, about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.common import OUT, Contention, write_json

REPO = Path(__file__).resolve().parents[1]
STEPS = ("info", "correctness", "agop", "train", "cnn", "sweep_parallel", "sweep_sequential")
CNN = ["model=cnn", "optimizer=muon", "schedule=smoke", "data=synthetic", "data.n_train=50000",
       "data.n_val=10000", "data.n_features=3072", "data.image_shape=[3,32,32]", "trainer.plots=end"]
DRY_CNN = ["model=cnn", "optimizer=muon", "schedule=smoke", "data=synthetic", "data.n_train=256",
           "data.n_val=64", "data.n_features=64", "data.image_shape=[1,8,8]", "model.channels=[4,8]",
           "trainer.plots=end"]
SWEEP = ["optimizer=sgd,adam,muon", "schedule=paper", "data=synthetic", "data.n_train=73257",
         "data.n_val=26032", "data.n_features=3072"]
DRY_SWEEP = ["optimizer=sgd,adam,muon", "schedule=smoke", "data=synthetic", "data.n_train=256",
             "data.n_val=64", "data.n_features=64", "data.image_shape=[1,8,8]", "model.width=16",
             "model.depth=2", "trainer.plots=end"]
PARALLEL = ["cluster=joblib", "hydra.launcher.n_jobs=3"]
DRY_AGOP = ["--width", "32", "--depth", "3", "--n", "512", "--ref-n", "128", "--chunk", "256",
            "--f64-n", "32", "--threads", "1", "--matmul-size", "256"]
DRY_TRAIN = ["--width", "32", "--depth", "3", "--n", "1024", "--n-val", "256", "--steps", "4",
             "--muon-steps", "2", "--repeats", "2", "--eval-n", "256", "--threads", "1",
             "--matmul-size", "256"]
RESERVE_S = 10.0  # kept back from a step's time limit for stopping it and writing the JSON
MIN_STEP_S = 20.0  # a step that cannot have this much is skipped
SEQUENTIAL_SHARE = 0.4  # of the time left when the parallel sweep starts, kept for the sequential one
# Correctness thresholds: float32 with exact (non-TF32) matmuls against float64, and float64.
TOL_F32, TOL_F64 = 1e-4, 1e-10


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(OUT / "gpu_check.json"),
                   help="the JSON file written (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="every step on the CPU at tiny sizes (checks the plumbing, not the GPU)")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for the whole check (default 470)")
    p.add_argument("--skip", default="", help=f"comma-separated steps to leave out: {', '.join(STEPS)}")
    p.add_argument("--workdir", default=None, help="where the sweeps write (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the sweeps' output directories")
    p.add_argument("--sweep-override", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for both sweeps (repeatable), e.g. trainer.plots=end")
    return p.parse_args(argv)


class Clock:
    def __init__(self, budget: float):
        self.start, self.budget = time.monotonic(), budget

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)


# -- steps -------------------------------------------------------------------------------------


def _command(cmd: Sequence[str], timeout: float = 10) -> str | None:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, cwd=REPO)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def info(device: torch.device) -> dict[str, Any]:
    import hydra
    import numpy

    import agop_sweep

    out: dict[str, Any] = {
        "device": str(device), "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": numpy.__version__,
        "hydra": hydra.__version__, "agop_sweep": getattr(agop_sweep, "__version__", None),
        "git": _command(["git", "rev-parse", "HEAD"]), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "host": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(
            gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(), gpu_count=torch.cuda.device_count(),
            driver=_command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        )
    for key, value in out.items():
        print(f"  {key}: {value}")
    return out


def correctness(device: torch.device) -> dict[str, Any]:
    """The pass on ``device`` against float64 per-sample Jacobians on the CPU, small net."""
    from agop_sweep.analyze.agop import jacobian_kernels
    from agop_sweep.analyze.layers import exact_matmuls
    from agop_sweep.analyze.nfa import agop_from_kernel
    from bench.agop import make_model, rel_err, weights
    from bench.original import original_agop

    width, depth, d_in, n = 64, 3, 192, 512
    model, _ = make_model(width, depth, torch.device("cpu"), d_in=d_in)
    x = torch.rand(n, d_in, generator=torch.Generator().manual_seed(0))
    m64 = model.double()
    ref = [original_agop(m64, x.double(), l) for l in range(depth)]  # float64, CPU, per sample
    errs: dict[str, list[float]] = {}
    for name, dtype in (("float32", torch.float32), ("float64", torch.float64)):
        m = make_model(width, depth, torch.device("cpu"), d_in=d_in)[0].to(device, dtype)
        hidden, readout = weights(m)
        with exact_matmuls():
            kp = jacobian_kernels(hidden, readout, m.act, m.act_grad, x.to(device, dtype), chunk_size=200)
        errs[name] = [rel_err(agop_from_kernel(w.double(), k), a)
                      for w, k, a in zip(hidden, kp.kernels, ref, strict=True)]
    out = {"net": {"d_in": d_in, "width": width, "depth": depth, "n": n, "chunk": 200},
           "rel_err_f32": max(errs["float32"]), "rel_err_f64": max(errs["float64"]),
           "rel_err_f32_per_layer": errs["float32"], "rel_err_f64_per_layer": errs["float64"],
           "tolerance": {"f32": TOL_F32, "f64": TOL_F64}}
    out["ok"] = out["rel_err_f32"] < TOL_F32 and out["rel_err_f64"] < TOL_F64
    print(f"  AGOP on {device} vs float64 per-sample Jacobians on the CPU: float32 {out['rel_err_f32']:.1e}, "
          f"float64 {out['rel_err_f64']:.1e} ({'ok' if out['ok'] else 'TOO LARGE'})")
    if not out["ok"]:
        raise AssertionError(f"AGOP disagrees: float32 {out['rel_err_f32']:.1e} (tolerance {TOL_F32}), "
                             f"float64 {out['rel_err_f64']:.1e} (tolerance {TOL_F64})")
    return out


def bench(script: str, argv: list[str]) -> dict[str, Any]:
    """bench.<script> with ``argv``, in this process; its results dict (in this check's JSON)."""
    import importlib

    threads = torch.get_num_threads()
    module = importlib.import_module(f"bench.{script}")
    try:
        return module.run(module.parse(argv))
    finally:
        torch.set_num_threads(threads)  # --threads of a dry run must not outlive its step


def _stop(proc: subprocess.Popen) -> None:
    """End the process group this check started for a sweep (its launcher's workers too)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _runs(sweep_dir: Path) -> list[dict[str, Any]]:
    runs = []
    for path in sorted(sweep_dir.glob("**/results.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        timing = data.get("timing") or {}
        wall = None
        if timing.get("started_at") is not None and timing.get("finished_at") is not None:
            wall = timing["finished_at"] - timing["started_at"]
        epochs = data.get("epochs") or []
        runs.append({
            "optimizer": (data.get("run") or {}).get("optimizer"), "status": data.get("status"),
            "device": (data.get("run") or {}).get("device"), "epochs_done": max(0, len(epochs) - 1),
            "analyses": len(data.get("analysis") or []), "wall_seconds": wall,
            "total_seconds": timing.get("total_seconds"), "train_seconds": timing.get("train_seconds"),
            "analysis_seconds": timing.get("analysis_seconds"), "dir": str(path.parent),
        })
    return runs


def sweep(overrides: list[str], sweep_dir: Path, limit: float, expected: int = 3) -> dict[str, Any]:
    """``python -m agop_sweep -m <overrides>`` into ``sweep_dir``, stopped after ``limit`` s;
    ``ok`` when its ``expected`` runs completed."""
    cmd = [sys.executable, "-m", "agop_sweep", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    log = sweep_dir.parent / f"{sweep_dir.name}.log"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    print(f"  $ {' '.join(cmd[1:])}   (limit {limit:.0f} s)", flush=True)
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=sweep_dir.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, limit))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc, status = proc.returncode, "timeout"
    seconds = time.monotonic() - t0
    runs = _runs(sweep_dir)
    if status == "ok" and (len(runs) != expected or any(r["status"] != "completed" for r in runs)):
        status = "failed"
    result = {"status": status, "seconds": seconds, "returncode": rc, "command": " ".join(cmd[1:]),
              "runs": runs, "log": str(log)}
    if status != "ok":
        result["log_tail"] = log.read_text(errors="replace").splitlines()[-30:]
    for r in runs:
        wall = "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.1f} s"
        print(f"    {r['optimizer']}: {r['status']}, {r['epochs_done']} epochs, {r['analyses']} analyses, "
              f"wall {wall} (train {r['train_seconds'] or 0:.1f} s, "
              f"analysis {r['analysis_seconds'] or 0:.1f} s)")
    print(f"  {status} in {seconds:.1f} s")
    return result


def throughput(sweep_result: dict[str, Any]) -> float | None:
    """Epochs completed per second, all runs together, while the sweep ran."""
    if not sweep_result.get("seconds") or "runs" not in sweep_result:
        return None
    return sum(r["epochs_done"] for r in sweep_result["runs"]) / sweep_result["seconds"]


def faster(parallel: dict[str, Any] | None, sequential: dict[str, Any] | None) -> dict[str, Any]:
    """Which way the three runs finish sooner: from the wall times where both sweeps
    completed (or one completed sooner than the other had run); otherwise, where both ran
    but at least one was stopped at the budget, from their epochs per second (``basis``
    says which; the sequential sweep's runs go sgd, adam, muon, so a stopped one has done
    the cheaper runs first)."""
    p, s = parallel or {}, sequential or {}
    out: dict[str, Any] = {"parallel_seconds": p.get("seconds"), "sequential_seconds": s.get("seconds"),
                           "parallel_epochs_per_s": throughput(p), "sequential_epochs_per_s": throughput(s),
                           "faster": None, "basis": None}
    if p.get("status") == "ok" and s.get("status") == "ok":
        out["faster"] = "parallel" if p["seconds"] <= s["seconds"] else "sequential"
        out["sequential_over_parallel"] = s["seconds"] / p["seconds"]
        out["basis"] = "wall time"
    elif p.get("status") == "ok" and s.get("status") == "timeout" and s["seconds"] >= p["seconds"]:
        out["faster"], out["basis"] = "parallel", "wall time"  # sequential ran longer, not done
    elif s.get("status") == "ok" and p.get("status") == "timeout" and p["seconds"] >= s["seconds"]:
        out["faster"], out["basis"] = "sequential", "wall time"
    elif {p.get("status"), s.get("status")} <= {"ok", "timeout"} and out["parallel_epochs_per_s"] \
            and out["sequential_epochs_per_s"]:
        par, seq = out["parallel_epochs_per_s"], out["sequential_epochs_per_s"]
        out["faster"], out["basis"] = ("parallel" if par >= seq else "sequential"), "epochs per second"
    return out


# -- the check -----------------------------------------------------------------------------------


def run_step(name: str, step: Callable[[float], Any], skipped: bool, left: float) -> dict[str, Any]:
    """One step of the check, with ``left`` seconds of the budget: its report entry. A step
    that raises is recorded as failed, and the check goes on with the next."""
    if skipped:
        return {"status": "skipped", "reason": "--skip"}
    if left < MIN_STEP_S:
        return {"status": "skipped", "reason": f"budget: {max(0.0, left):.0f} s left"}
    print(f"\n== {name} ==", flush=True)
    t0 = time.monotonic()
    try:
        value = step(left)
    except Exception as e:
        traceback.print_exc()
        return {"status": "failed", "seconds": time.monotonic() - t0,
                "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    if name.startswith("sweep") or name == "cnn":
        return value  # sweeps and the cnn run write their own entries (status, runs, seconds)
    return {"status": "ok", "seconds": time.monotonic() - t0, "result": value}


def summary(report: dict[str, Any], contention: Contention, out: str) -> None:
    print("\n== summary ==")
    for name, entry in report["steps"].items():
        extra = f" ({entry['seconds']:.1f} s)" if "seconds" in entry else f" ({entry.get('reason', '')})"
        print(f"  {name}: {entry['status']}{extra}")
    s = report["sweep"]
    if s["faster"]:
        print(f"  sweep: {s['faster']} is faster, by {s['basis']} (parallel {s['parallel_seconds']:.0f} s, "
              f"{s['parallel_epochs_per_s']:.2f} epochs/s; sequential {s['sequential_seconds']:.0f} s, "
              f"{s['sequential_epochs_per_s']:.2f} epochs/s)")
    print(f"  total {report['seconds']:.0f} s; {contention.report()}")
    print(f"  written: {out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible, nothing to check (--dry-run runs every step on the CPU)")
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STEPS)
    if unknown:
        raise SystemExit(f"--skip: unknown step(s) {', '.join(sorted(unknown))}; steps: {', '.join(STEPS)}")
    device = torch.device("cpu" if args.dry_run else "cuda")
    dev = ["--device", device.type]
    clock, contention = Clock(args.budget), Contention()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sweep_base = DRY_SWEEP if args.dry_run else SWEEP
    sweep_common = [*sweep_base, f"device={device.type}", *args.sweep_override]
    report: dict[str, Any] = {
        "schema": 1, "dry_run": args.dry_run, "device": str(device), "budget_s": args.budget,
        "started_at": time.time(), "steps": {}, "workdir": str(workdir) if args.keep else None,
    }
    plan: dict[str, Callable[[float], Any]] = {
        "info": lambda _: info(device),
        "correctness": lambda _: correctness(device),
        "agop": lambda _: bench("agop", [*dev, *(DRY_AGOP if args.dry_run else [])]),
        "train": lambda _: bench("train", [*dev, *(DRY_TRAIN if args.dry_run else [])]),
        "cnn": lambda limit: sweep([*(DRY_CNN if args.dry_run else CNN), f"device={device.type}"],
                                   workdir / "cnn", limit, expected=1),
        # the parallel sweep leaves the sequential one at least SEQUENTIAL_SHARE of the time left
        "sweep_parallel": lambda limit: sweep(
            [*sweep_common, *PARALLEL], workdir / "parallel",
            limit if "sweep_sequential" in skip else limit - max(MIN_STEP_S, SEQUENTIAL_SHARE * limit)),
        "sweep_sequential": lambda limit: sweep(sweep_common, workdir / "sequential", limit),
    }
    dry = " (dry run: tiny sizes, the figures mean nothing)" if args.dry_run else ""
    print(f"gpu_check on {device}{dry}, "
          f"budget {args.budget:.0f} s, writing {args.out}")
    failed = False
    try:
        for name in STEPS:
            entry = run_step(name, plan[name], name in skip, clock.left() - RESERVE_S)
            failed |= entry["status"] == "failed"
            report["steps"][name] = entry
            report["sweep"] = faster(report["steps"].get("sweep_parallel"),
                                     report["steps"].get("sweep_sequential"))
            report["seconds"] = clock.budget - clock.left()
            report["contention"] = contention.share()
            write_json(args.out, report)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    summary(report, contention, args.out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
