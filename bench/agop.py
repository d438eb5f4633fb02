"""Benchmark of one analysis: the project's exact AGOP against the original script's method.

Project: the pass (agop_sweep.analyze.agop.jacobian_kernels, all hidden layers in one chunked
forward + backward sweep) and the whole analysis (agop_sweep.analyze.layers.analyze_model), at
the full n. Original: its ``egop`` routine (bench/original.py), vmap(jacrev) of the sub-network
above each layer in batches of 128, on ``--ref-n`` samples, scaled to n. Also: exact matmul
FLOPs of both (the formulas against the matmuls dispatched), the pass's FLOP/s against a plain
fp32 matmul, its split by layer, float32 and float64 agreement, the analysis's extra peak
memory, and the per-layer work against the implementation it replaced. bench/README.md says
what each figure is.

    python -m bench.agop                    # width 1024, depth 5, n = 73,257 on the CPU (~3 min)
    python -m bench.agop --n 8192 --ref-n 256
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agop_sweep.analyze import nfa
from agop_sweep.analyze.agop import jacobian_kernels, panel_area, pass_flops
from agop_sweep.analyze.layers import analyze_model, exact_matmuls
from agop_sweep.analyze.nfa import agop_from_kernel
from agop_sweep.config import AnalysisConfig
from agop_sweep.model.mlp import MLP, build_model
from bench.common import (
    GIB,
    N_CLASSES,
    Contention,
    MatmulFlops,
    MatmulRate,
    base_parser,
    compose_config,
    dims,
    gflops,
    peak_memory,
    setup,
    svhn_shaped,
    table,
    timed,
    verdict,
    write_json,
)
from bench.original import ORIGINAL_BATCH, original_agop, original_layer, reference_flops

# The per-layer analysis on formed matrices, which the factorised one replaced: the baseline in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import nfa_reference

TARGET_PASS = 5.0  # the pass at least this many times faster than the original method
# The whole analysis, all variants and spectra: >= 3x the original at n = 4,096, 4.5x at SVHN's n.
TARGET_ANALYSIS = {4096: 3.0, 73_257: 4.5}
TARGET_LAYER_WORK = 0.25  # the per-layer work at most this share of the pass, at n = 4,096
TARGET_EFFICIENCY = 0.70
TARGET_MEMORY_GIB = 4.0


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0], "agop")
    p.add_argument("--chunk", type=int, default=AnalysisConfig.chunk_size,
                   help="samples per chunk of the project's pass (analysis.chunk_size)")
    p.add_argument("--ref-n", type=int, default=2048,
                   help="samples the reference runs on (rounded down to whole batches; scaled to n)")
    p.add_argument("--batch", type=int, default=ORIGINAL_BATCH,
                   help="the reference's batch (the original's: 128)")
    p.add_argument("--f64-n", type=int, default=128, help="samples of the float64 agreement check")
    p.add_argument("--repeats", type=int, default=1,
                   help="rounds of the timed phases (pass, analysis, reference); the fastest of each is kept")
    p.add_argument("--profile-chunks", type=int, default=2,
                   help="chunks profiled to split the pass's time by layer (CPU only)")
    return p.parse_args(argv)


def make_model(width: int, depth: int, device: torch.device,
               d_in: int = 3072) -> tuple[MLP, list[torch.Tensor]]:
    """The default model, and its weights moved a little away from the init so that the
    "delta" NFM variants (undefined at epoch 0) are computed too, as in a trained model."""
    torch.manual_seed(1717)
    model = build_model(d_in, width, depth, N_CLASSES, "relu").to(device)
    init = [w.detach().clone() for w in model.hidden_weights()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * p.abs().mean() * torch.randn_like(p))
    return model.eval(), init


def weights(model: MLP) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [w.detach() for w in model.hidden_weights()], model.last.weight.detach()


# -- helpers ---------------------------------------------------------------------------------


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def layer_shares(model: MLP, x: torch.Tensor, chunk: int) -> dict[int, float]:
    """Share of the pass's wall time per layer, from the pass's own ``agop/layer<l>`` profiler
    ranges over a few chunks (forward, propagation and kernel product of that layer)."""
    hidden, readout = weights(model)
    jacobian_kernels(hidden, readout, model.act, model.act_grad, x[:chunk], chunk_size=chunk)
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # no profiler start/stop lines in the table
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        wall, _ = timed(lambda: jacobian_kernels(hidden, readout, model.act, model.act_grad, x,
                                                 chunk_size=chunk), x.device)
    shares = {}
    for event in prof.key_averages():
        if event.key.startswith("agop/layer"):
            shares[int(event.key.removeprefix("agop/layer"))] = event.cpu_time_total / 1e6 / wall
    return shares


def flop_shares(d: list[int], n_classes: int) -> dict[int, float]:
    """Share of the pass's FLOPs per layer (the split used where the profile is not available):
    its forward, the propagation that yields its G, and its kernel product."""
    top = len(d) - 2

    per = {}
    for l in range(top + 1):
        fwd = 2 * d[l] * d[l + 1] + (2 * d[l + 1] * n_classes if l == top else 0)
        prop = 2 * n_classes * d[l + 2] * d[l + 1] if l < top else 0
        kern = 2 * panel_area(d[l + 1]) * (1 if l == top else n_classes)
        per[l] = fwd + prop + kern
    total = pass_flops(d, n_classes, 1)["total"]
    return {l: f / total for l, f in per.items()}


def counted_flops(model: MLP, x: torch.Tensor, chunk: int, batch: int) -> dict[str, Any]:
    """The matmul FLOPs actually dispatched by one chunk of the pass and one batch of the
    reference per layer, next to the formulas (they must be equal)."""
    hidden, readout = weights(model)
    d, c = [hidden[0].shape[1]] + [w.shape[0] for w in hidden], readout.shape[0]
    xc, xb = x[:chunk], x[:batch]
    with MatmulFlops() as fc:
        jacobian_kernels(hidden, readout, model.act, model.act_grad, xc, chunk_size=chunk)
    # pass_flops leaves out the two once-per-pass c x d_L products for the top layer (R^T R)
    once = 2 * d[-1] * c * d[-1]
    out: dict[str, Any] = {"pass": {"counted": fc.total - once,
                                    "formula": pass_flops(d, c, xc.shape[0])["total"]}}
    for l in range(len(hidden)):
        with MatmulFlops() as fc:
            original_agop(model, xb, l, batch)
        out[f"reference_layer{l}"] = {"counted": fc.total,
                                      "formula": reference_flops(d, c, xb.shape[0], l)["total"]}
    out["equal"] = all(v["counted"] == v["formula"] for k, v in out.items() if k != "equal")
    return out


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Setup:
    """The model, data and reference rate every phase shares."""

    args: argparse.Namespace
    device: torch.device
    model: MLP
    init: list[torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    ref_n: int
    rate: MatmulRate

    @property
    def weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        return weights(self.model)


@dataclass
class Timed:
    """The timed phases: the fastest of ``--repeats`` rounds of each, with the CPU share other
    processes took while it ran; the reference per layer on ``ref_n`` samples."""

    best: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    reference: list[float] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)
    errs32: list[float] = field(default_factory=list)
    reference_corr: list[float] = field(default_factory=list)
    n_metrics: int = 0

    def keep(self, phase: str, seconds: float, share: float | None) -> bool:
        if phase not in self.best or seconds < self.best[phase][0]:
            self.best[phase] = (seconds, share)
            return True
        return False


def time_phases(su: Setup) -> Timed:
    """The pass and the whole analysis at the full n, and the reference on ``ref_n`` samples,
    ``--repeats`` rounds; in the first round also the float32 agreement on those samples."""
    args, model, n = su.args, su.model, su.args.n
    hidden, readout = su.weights
    sub, batch = su.x[: su.ref_n], args.batch
    cfg = compose_config(["analysis=default"]).analysis
    out = Timed()
    for rep in range(args.repeats):
        with exact_matmuls():
            c = Contention()
            t, _ = timed(lambda: jacobian_kernels(hidden, readout, model.act, model.act_grad, su.x[:n],
                                                  su.y[:n], chunk_size=args.chunk), su.device)
            out.keep("pass", t, c.share())
        su.rate.sample()
        c = Contention()
        with peak_memory(su.device) as m:
            t, analysis = timed(lambda: analyze_model(model, su.init, su.x[:n], su.y[:n], cfg, "mse", 1,
                                                      progress=False), su.device)
        out.keep("analysis", t, c.share())
        out.memory = out.memory or m
        out.n_metrics = len(analysis.record["layers"][0]["metrics"])
        su.rate.sample()
        with exact_matmuls():
            c, times, agops, corrs = Contention(), [], [], []
            for l in range(len(hidden)):
                if rep == 0:
                    original_layer(model, su.init[l], sub[:batch], l, batch)  # warm-up: vmap/jacrev set-up
                t, (a, corr) = timed(lambda l=l: original_layer(model, su.init[l], sub, l, batch), su.device)
                times.append(t)
                agops.append(a)
                corrs.append(corr)
            if out.keep("reference", sum(times), c.share()):
                out.reference = times
            if rep == 0:  # agreement: the project's AGOP on the same samples
                kp = jacobian_kernels(hidden, readout, model.act, model.act_grad, sub, chunk_size=args.chunk)
                out.errs32 = [rel_err(agop_from_kernel(w.double(), k), a)
                              for w, k, a in zip(hidden, kp.kernels, agops, strict=True)]
                out.reference_corr = corrs
        su.rate.sample()
    return out


@contextlib.contextmanager
def _timing(module: Any, names: Sequence[str], seconds: list[float]) -> Any:
    """Add the time spent in ``module.<name>`` calls to ``seconds[0]`` while inside."""
    originals = {name: getattr(module, name) for name in names}

    def wrap(fn: Any) -> Any:
        def timed_call(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[0] += time.perf_counter() - start
        return timed_call

    for name, fn in originals.items():
        setattr(module, name, wrap(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def layer_work(su: Setup) -> list[dict[str, Any]]:
    """Per hidden layer, the analysis's per-layer work (nfa.compare_layer with the default
    analysis group's options) and its eigendecompositions, against the implementation it
    replaced (tests/nfa_reference.py), interleaved, the fastest of ``--repeats`` rounds. The
    kernels come from the first 4,096 samples: this work does not depend on n."""
    hidden, readout = su.weights
    n = min(su.args.n, 4096)
    with exact_matmuls():
        kernels = jacobian_kernels(hidden, readout, su.model.act, su.model.act_grad, su.x[:n], su.y[:n],
                                   chunk_size=su.args.chunk).kernels
    cfg = AnalysisConfig()
    rows = []
    for l, (w, w0, k) in enumerate(zip(hidden, su.init, kernels, strict=True)):
        top = cfg.top_eigvecs if l == 0 else 1
        best = {"new": (float("inf"), 0.0), "before": (float("inf"), 0.0)}
        for _ in range(max(1, su.args.repeats)):
            eig = [0.0]
            with exact_matmuls(), _timing(nfa, ("eigh_descending", "eigvalsh_with_top"), eig):
                t, _ = timed(lambda w=w, w0=w0, k=k, top=top: nfa.compare_layer(w, w0, k, top=top), su.device)
            best["new"] = min(best["new"], (t, eig[0]))
            eig = [0.0]
            with exact_matmuls(), _timing(torch.linalg, ("eigh",), eig):
                t, _ = timed(lambda w=w, w0=w0, k=k: nfa_reference.compare_layer(w, w0, k), su.device)
            best["before"] = min(best["before"], (t, eig[0]))
        rows.append({"layer": l, "shape": list(w.shape), "seconds": best["new"][0],
                     "eigh_seconds": best["new"][1], "before_seconds": best["before"][0],
                     "before_eigh_seconds": best["before"][1]})
    total = {key: sum(r[key] for r in rows)
             for key in ("seconds", "eigh_seconds", "before_seconds", "before_eigh_seconds")}
    table(["layer", "W", "now s", "of it eigen s", "before s", "of it eigen s", "ratio"],
          [[f"layer {r['layer']}", "x".join(map(str, r["shape"])), f"{r['seconds']:.2f}",
            f"{r['eigh_seconds']:.2f}", f"{r['before_seconds']:.2f}", f"{r['before_eigh_seconds']:.2f}",
            f"{r['before_seconds'] / r['seconds']:.1f}x"] for r in rows]
          + [["all", "", *(f"{total[key]:.2f}" for key in total),
              f"{total['before_seconds'] / total['seconds']:.1f}x"]],
          title="Per-layer work (nfa.compare_layer: metrics, spectra, alpha_star), seconds: now against "
                "before the factorisations (tests/nfa_reference.py); eigen = eigendecompositions")
    return rows


def pass_split(su: Setup) -> tuple[dict[int, float], str]:
    """The pass's time per layer as shares, and how they were found."""
    d = dims(su.args.width, su.args.depth)
    if su.device.type != "cpu":
        return flop_shares(d, N_CLASSES), "apportioned by FLOPs (the profile split is CPU-only)"
    prof_n = min(su.args.n, su.args.profile_chunks * su.args.chunk)
    with exact_matmuls():
        shares = layer_shares(su.model, su.x[:prof_n], su.args.chunk)
    return shares, f"measured: profiler ranges over {prof_n:,} samples, scaled to the full pass"


def float64_errors(su: Setup) -> list[float]:
    """Per layer, the pass against the original method on ``--f64-n`` samples of a float64 copy."""
    m64 = make_model(su.args.width, su.args.depth, su.device)[0].double()
    h64, r64 = weights(m64)
    x64 = su.x[: su.args.f64_n].double()
    kp64 = jacobian_kernels(h64, r64, m64.act, m64.act_grad, x64, chunk_size=su.args.chunk)
    return [rel_err(agop_from_kernel(w, k), original_agop(m64, x64, l, su.args.batch))
            for l, (w, k) in enumerate(zip(h64, kp64.kernels, strict=True))]


def layer_table(su: Setup, tm: Timed, shares: dict[int, float], errs64: list[float]) -> list[dict[str, Any]]:
    """Print the per-layer table (project against original, seconds at the full n); return its rows."""
    hidden = su.weights[0]
    n, rate = su.args.n, su.rate.rate / 1e9
    t_pass, t_analysis = tm.best["pass"][0], tm.best["analysis"][0]
    ref_full = [t * n / su.ref_n for t in tm.reference]
    ref_flops = [reference_flops(dims(su.args.width, su.args.depth), N_CLASSES, n, l, with_nfm=True)["total"]
                 for l in range(len(hidden))]
    rows, layers = [], []
    for l, w in enumerate(hidden):
        mine = shares.get(l, 0.0) * t_pass
        layers.append({"layer": l, "shape": list(w.shape), "pass_share_s": mine,
                       "reference_s": ref_full[l], "speedup": ref_full[l] / mine if mine else None,
                       "reference_flops": ref_flops[l],
                       "reference_efficiency": gflops(ref_flops[l], ref_full[l]) / rate,
                       "rel_err_f32": tm.errs32[l], "rel_err_f64": errs64[l],
                       "reference_corr": tm.reference_corr[l]})
        rows.append([f"layer {l}", f"{w.shape[0]}x{w.shape[1]}", f"{mine:.2f}", f"{ref_full[l]:.1f}",
                     f"{ref_full[l] / mine:.1f}x" if mine else "-", f"{ref_flops[l] / 1e12:.2f}",
                     f"{layers[-1]['reference_efficiency']:.0%}", f"{tm.errs32[l]:.1e}", f"{errs64[l]:.1e}"])
    ref_total = sum(ref_full)
    rows.append(["other", "", f"{(1 - sum(shares.values())) * t_pass:.2f}", "", "", "", "", "", ""])
    rows.append(["all layers (pass)", "", f"{t_pass:.2f}", f"{ref_total:.1f}", f"{ref_total / t_pass:.1f}x",
                 f"{sum(ref_flops) / 1e12:.2f}", f"{gflops(sum(ref_flops), ref_total) / rate:.0%}",
                 f"{max(tm.errs32):.1e}", f"{max(errs64):.1e}"])
    rows.append(["whole analysis", "", f"{t_analysis:.2f}", f"{ref_total:.1f}",
                 f"{ref_total / t_analysis:.1f}x", "", "", "", ""])
    table(["", "W", "project s", "original s", "ratio", "orig TFLOP", "orig of mm", "rel err f32",
           "rel err f64"], rows,
          title=f"AGOP of all {n:,} samples, seconds: the project against the original script's method")
    return layers


def flop_table(flops: dict[str, float], ref_flops: float, n_layers: int, check: dict[str, Any]) -> None:
    table(["part", "TFLOP", "share"], [
        [k, f"{flops[k] / 1e12:.2f}", f"{flops[k] / flops['total']:.0%}"]
        for k in ("forward", "propagate", "kernels")
    ] + [["total", f"{flops['total'] / 1e12:.2f}", "100%"],
         ["(dense_total)", f"{flops['dense_total'] / 1e12:.2f}", "full products, per-class top layer"],
         [f"original, {n_layers} layers", f"{ref_flops / 1e12:.2f}",
          f"{ref_flops / flops['total']:.1f}x the pass"]],
        title="Matmul FLOPs at the full n "
              "(pass: agop_sweep.analyze.agop.pass_flops; original: reference_flops)")
    print(f"formulas vs matmuls dispatched (one chunk of the pass, one batch of the original per layer): "
          f"{'equal' if check['equal'] else 'DIFFERENT: ' + str(check)}")


def memory_line(su: Setup, mem: dict[str, float]) -> float:
    """Print the analysis's extra peak memory; return it in GiB (CUDA memory on a GPU)."""
    exact = "" if mem["rss_exact"] else " (upper bound: the peak mark could not be reset)"
    gib = mem["rss_delta"] / GIB
    line = f"extra peak RSS of the analysis at n = {su.args.n:,}: {gib:.2f} GiB{exact}"
    if su.device.type == "cuda":
        gib = mem["cuda_delta"] / GIB
        line += f"; extra peak CUDA memory {gib:.2f} GiB"
    print(line)
    return gib


def analysis_target(n: int) -> float:
    """The whole analysis's target at ``n``: that of the largest n in TARGET_ANALYSIS <= n."""
    return TARGET_ANALYSIS[max([k for k in TARGET_ANALYSIS if k <= n], default=min(TARGET_ANALYSIS))]


def key_ratios(r: dict[str, Any]) -> None:
    print("\nKey ratios")
    print(f"  original method / project pass, all layers, n = {r['n']:,}: {r['speedup_pass']:.1f}x "
          f"(target >= {TARGET_PASS:.0f}x: {verdict(r['speedup_pass'], TARGET_PASS)})")
    target = analysis_target(r["n"])
    print(f"  original method / whole analysis (analyze_model): {r['speedup_analysis']:.1f}x "
          f"(target at n = {r['n']:,}: >= {target:.1f}x: {verdict(r['speedup_analysis'], target)})")
    share = r["layer_work_share"]
    print(f"  per-layer work / pass: {share:.0%} (target <= {TARGET_LAYER_WORK:.0%} at n = 4,096"
          + (f": {verdict(share, TARGET_LAYER_WORK, higher_is_better=False)})" if r["n"] == 4096 else ")"))
    print(f"  per-layer work now / before: {r['layer_work_speedup']:.1f}x; eigendecompositions "
          f"{r['eigh_seconds']:.2f} s, before {r['before_eigh_seconds']:.2f} s")
    print(f"  pass FLOP/s / fp32 matmul FLOP/s: {r['pass_efficiency']:.0%} "
          f"(target >= {TARGET_EFFICIENCY:.0%}: {verdict(r['pass_efficiency'], TARGET_EFFICIENCY)})")
    print(f"  relative error vs the original method: float32 {r['rel_err_f32']:.1e} (~1e-6), "
          f"float64 {r['rel_err_f64']:.1e} (~1e-12)")
    print(f"  extra memory: {r['extra_memory_gib']:.2f} GiB (target < {TARGET_MEMORY_GIB:.0f} GiB: "
          f"{verdict(r['extra_memory_gib'], TARGET_MEMORY_GIB, higher_is_better=False)})")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, printed as tables; returns them as a dict (also --json)."""
    device = setup(args)
    contention = Contention()
    d, n, batch = dims(args.width, args.depth), args.n, args.batch
    ref_n = max(batch, min(args.ref_n, n) // batch * batch)
    print(f"model: {d[0]} -> {' -> '.join(map(str, d[1:]))} -> {N_CLASSES}, relu, no bias; "
          f"n = {n:,} SVHN-shaped samples, chunk {args.chunk}")
    x, y = svhn_shaped(max(n, ref_n), device)
    model, init = make_model(args.width, args.depth, device)
    su = Setup(args, device, model, init, x, y, ref_n, MatmulRate(device, size=args.matmul_size))
    su.rate.sample()

    tm = time_phases(su)
    work = layer_work(su)
    shares, split = pass_split(su)
    errs64 = float64_errors(su)
    with exact_matmuls():
        check = counted_flops(model, x, min(args.chunk, n), batch)

    t_pass, t_analysis = tm.best["pass"][0], tm.best["analysis"][0]
    flops = pass_flops(d, N_CLASSES, n)
    layers = layer_table(su, tm, shares, errs64)
    ref_total, ref_flops = sum(v["reference_s"] for v in layers), sum(v["reference_flops"] for v in layers)
    print(f"project: the pass (jacobian_kernels) split by layer ({split}; 'other' = logits, loss, "
          f"float64 accumulation); whole analysis = analyze_model: all {tm.n_metrics} variants, spectra, "
          f"alpha_star, layer-0 features.")
    print(f"original: per layer, inputs + vmap(jacrev(sub-network)) in batches of {batch} + sum J^T J "
          f"+ its one correlation; timed on {ref_n:,} samples ({ref_n // batch} batches) and scaled "
          f"x{n / ref_n:.2f} to n. rel err: the AGOPs on those {ref_n:,} samples (float32), and on "
          f"{args.f64_n} samples in float64.")
    flop_table(flops, ref_flops, len(layers), check)
    print(su.rate.describe())
    print(f"pass: {t_pass:.1f} s = {gflops(flops['total'], t_pass):.0f} GFLOP/s performed "
          f"({gflops(flops['dense_total'], t_pass):.0f} GFLOP/s counted as the dense pass)")
    print(f"analysis: {t_analysis:.1f} s = the pass + {t_analysis - t_pass:.1f} s of per-layer work "
          f"({(t_analysis - t_pass) / t_analysis:.0%}: W^T K W, eigendecompositions, correlations, features)")
    mem_gib = memory_line(su, tm.memory)
    phase_shares = {k: v[1] for k, v in tm.best.items()}
    print("CPU share of other processes during the timed phases: " + ", ".join(
        f"{k} {'unknown' if v is None else f'{v:.0%}'}" for k, v in phase_shares.items())
        + (f" (fastest of {args.repeats} rounds each)" if args.repeats > 1 else ""))
    results = {
        "script": "agop", "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args), "n": n, "ref_n": ref_n, "ref_scale": n / ref_n, "batch": batch,
        "matmul_fp32_flops": su.rate.rate, "matmul_samples": su.rate.samples,
        "pass_seconds": t_pass, "analysis_seconds": t_analysis, "reference_seconds": ref_total,
        "reference_seconds_measured": sum(tm.reference),
        "speedup_pass": ref_total / t_pass, "speedup_analysis": ref_total / t_analysis,
        "pass_flops": flops, "reference_flops": ref_flops,
        "pass_efficiency": gflops(flops["total"], t_pass) / (su.rate.rate / 1e9),
        "rel_err_f32": max(tm.errs32), "rel_err_f64": max(errs64), "flop_check": check,
        "extra_memory_gib": mem_gib, "layers": layers, "layer_split": split,
        "layer_work": work, "layer_work_share": (t_analysis - t_pass) / t_pass,
        "layer_work_speedup": sum(r["before_seconds"] for r in work) / sum(r["seconds"] for r in work),
        "eigh_seconds": sum(r["eigh_seconds"] for r in work),
        "before_eigh_seconds": sum(r["before_eigh_seconds"] for r in work),
        "phase_contention": phase_shares,
        "targets": {"speedup_pass": TARGET_PASS, "speedup_analysis": analysis_target(n),
                    "layer_work_share": TARGET_LAYER_WORK,
                    "pass_efficiency": TARGET_EFFICIENCY, "extra_memory_gib": TARGET_MEMORY_GIB},
    }
    key_ratios(results)
    print(contention.report())
    return results | {"contention": contention.share()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    results = run(args)
    write_json(args.json, results)
    print(f"written: {args.json}")
    return results


if __name__ == "__main__":
    main()
