"""Benchmark of one analysis (issue 3.3): the project's exact AGOP against per-sample Jacobians.

Project: agop_sweep.agop.jacobian_kernels over all n samples (one chunked forward + backward
sweep for all hidden layers), then AGOP_l = W_l^T K_l W_l (float64, as the analysis does).
Reference: per layer l, torch.func.vmap(jacrev) of the sub-network above layer l at every
sample's h_l, then sum_i J_i^T J_i. Both are exact; the reference runs on a subset of
``--ref-n`` samples and is scaled linearly to n (its cost is linear in n).

Also: the pass's FLOP/s against a plain fp32 matmul timed in the same process, the extra
peak memory of the analysis (pass + per-layer comparison) at the full n, and the time of
the per-layer post-pass work (nfa.compare_layer: products, eigendecompositions, correlations).

    python bench/agop.py                    # width 1024, depth 5, n = 73,257 on the CPU
    python bench/agop.py --n 8192 --ref-n 256
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from common import (
    GIB,
    N_CLASSES,
    Contention,
    MatmulRate,
    base_parser,
    dims,
    gflops,
    median_time,
    peak_memory,
    setup,
    svhn_shaped,
    table,
    timed,
    verdict,
)
from torch.func import jacrev, vmap

from agop_sweep.agop import jacobian_kernels, panel_rows, pass_flops
from agop_sweep.analysis import exact_matmuls
from agop_sweep.config import AnalysisConfig
from agop_sweep.model import MLP, build_model
from agop_sweep.nfa import agop_from_kernel, compare_layer

TARGET_SPEEDUP = 4.0
TARGET_EFFICIENCY = 0.70
TARGET_MEMORY_GIB = 4.0


def parse() -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--chunk", type=int, default=AnalysisConfig.chunk_size,
                   help="samples per chunk of the project's pass (analysis.chunk_size)")
    p.add_argument("--ref-n", type=int, default=1024,
                   help="samples the per-sample reference runs on (scaled to n)")
    p.add_argument("--batch", type=int, default=256, help="samples per vmap batch of the reference")
    p.add_argument("--f64-n", type=int, default=128, help="samples of the float64 exactness check")
    p.add_argument("--profile-chunks", type=int, default=2,
                   help="chunks profiled to split the pass's time by layer (CPU only)")
    return p.parse_args()


def make_model(width: int, depth: int, device: torch.device) -> tuple[MLP, list[torch.Tensor]]:
    """The default model, and its weights moved a little away from the init so that the
    "delta" NFM variants (undefined at epoch 0) are computed too, as in a trained model."""
    torch.manual_seed(1717)
    model = build_model(3072, N_CLASSES, width, depth, "relu").to(device)
    init = [w.detach().clone() for w in model.hidden_weights()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * p.abs().mean() * torch.randn_like(p))
    return model.eval(), init


def weights(model: MLP) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [w.detach() for w in model.hidden_weights()], model.last.weight.detach()


def per_sample_agop(model: MLP, x: torch.Tensor, layer: int, batch: int) -> torch.Tensor:
    """sum_i J_i^T J_i (float64) with J_i = df(x_i)/dh_l from vmap(jacrev) of the sub-network
    above ``layer``; h_l from the layers below (part of the reference's cost)."""
    hidden, readout = weights(model)
    act = model.act

    def above(h: torch.Tensor) -> torch.Tensor:  # one sample's h_l (d_in,) -> logits (c,)
        for w in hidden[layer:]:
            h = act(w @ h)
        return readout @ h

    jac = vmap(jacrev(above))
    d = hidden[layer].shape[1]
    total = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch):
        h = x[start : start + batch].to(hidden[0].dtype)
        with torch.no_grad():
            for w in hidden[:layer]:
                h = act(h @ w.T)
        j = jac(h).reshape(-1, d)  # (b c, d)
        total += (j.T @ j).double()
    return total


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


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

    def area(k: int) -> int:
        return sum((r1 - r0) * (k - r0) for r0, r1 in panel_rows(k))

    per = {}
    for l in range(top + 1):
        fwd = 2 * d[l] * d[l + 1] + (2 * d[l + 1] * n_classes if l == top else 0)
        prop = 2 * n_classes * d[l + 2] * d[l + 1] if l < top else 0
        kern = 2 * area(d[l + 1]) * (1 if l == top else n_classes)
        per[l] = fwd + prop + kern
    total = pass_flops(d, n_classes, 1)["total"]
    return {l: f / total for l, f in per.items()}


def main() -> None:
    args = parse()
    device = setup(args)
    contention = Contention()
    d = dims(args.width, args.depth)
    n, ref_n = args.n, min(args.ref_n, args.n)
    print(f"model: {d[0]} -> {' -> '.join(map(str, d[1:]))} -> {N_CLASSES}, relu, no bias; "
          f"n = {n:,} SVHN-shaped samples, chunk {args.chunk}")
    x, y = svhn_shaped(n, device)
    model, init = make_model(args.width, args.depth, device)
    hidden, readout = weights(model)
    rate = MatmulRate(device)
    rate.sample()

    # -- the project's analysis at the full n: pass, W^T K W, compare_layer; peak memory ----
    with exact_matmuls(), peak_memory(device) as mem:
        t_pass, kp = timed(lambda: jacobian_kernels(hidden, readout, model.act, model.act_grad, x, y,
                                                    chunk_size=args.chunk), device)
        rate.sample()
        t_wkw, t_cmp = [], []
        for w, w0, k in zip(hidden, init, kp.kernels, strict=True):
            wd = w.double()
            t_wkw.append(median_time(lambda wd=wd, k=k: agop_from_kernel(wd, k), device, repeats=3))
            t_cmp.append(timed(lambda w=w, w0=w0, k=k: compare_layer(w, w0, k), device)[0])
    rate.sample()
    flops = pass_flops(d, N_CLASSES, n)
    efficiency = gflops(flops["total"], t_pass) / (rate.rate / 1e9)

    # -- per-layer split of the pass ---------------------------------------------------------
    if device.type == "cpu":
        prof_n = min(n, args.profile_chunks * args.chunk)
        shares = layer_shares(model, x[:prof_n], args.chunk)
        split = f"measured: profiler ranges over {prof_n:,} samples, scaled to the full pass"
    else:
        shares = flop_shares(d, N_CLASSES)
        split = "apportioned by FLOPs (the profile split is CPU-only)"

    # -- the per-sample reference on a subset, and the project on the same subset -------------
    t_ref, ref = [], []
    with exact_matmuls():
        sub = x[:ref_n]
        median_time(lambda: per_sample_agop(model, sub[: args.batch], 0, args.batch), device, repeats=1)
        for l in range(len(hidden)):
            t, a = timed(lambda l=l: per_sample_agop(model, sub, l, args.batch), device)
            t_ref.append(t)
            ref.append(a / ref_n)
        t_sub, kp_sub = timed(lambda: jacobian_kernels(hidden, readout, model.act, model.act_grad, sub,
                                                       chunk_size=args.chunk), device)
        errs32 = [rel_err(agop_from_kernel(w.double(), k), a)
                  for w, k, a in zip(hidden, kp_sub.kernels, ref, strict=True)]
    rate.sample()

    # -- float64 exactness on a small subset -------------------------------------------------
    m64 = make_model(args.width, args.depth, device)[0].double()
    h64, r64 = weights(m64)
    x64 = x[: args.f64_n].double()
    kp64 = jacobian_kernels(h64, r64, m64.act, m64.act_grad, x64, chunk_size=args.chunk)
    errs64 = [rel_err(agop_from_kernel(w, k), per_sample_agop(m64, x64, l, args.batch) / args.f64_n)
              for l, (w, k) in enumerate(zip(h64, kp64.kernels, strict=True))]

    # -- report -------------------------------------------------------------------------------
    scale = n / ref_n
    ref_full = [t * scale for t in t_ref]
    rows = []
    for l in range(len(hidden)):
        mine = shares.get(l, 0.0) * t_pass + t_wkw[l]
        rows.append([f"layer {l}", f"{hidden[l].shape[0]}x{hidden[l].shape[1]}", f"{mine:.2f}",
                     f"{ref_full[l]:.1f}", f"{ref_full[l] / mine:.1f}x", f"{errs32[l]:.1e}",
                     f"{errs64[l]:.1e}", f"{t_cmp[l]:.2f}"])
    other = (1 - sum(shares.values())) * t_pass
    total_mine = t_pass + sum(t_wkw)
    rows.append(["other", "", f"{other:.2f}", "", "", "", "", ""])
    rows.append(["all layers", "", f"{total_mine:.2f}", f"{sum(ref_full):.1f}",
                 f"{sum(ref_full) / total_mine:.1f}x", f"{max(errs32):.1e}", f"{max(errs64):.1e}",
                 f"{sum(t_cmp):.2f}"])
    table(["", "W", "project s", "per-sample s", "speed-up", "rel err f32", "rel err f64", "compare_layer s"],
          rows, title=f"AGOP of all {n:,} samples, seconds (project = pass share + W^T K W in float64)")
    print(f"per-layer split of the pass: {split}; 'other' = logits, loss, float64 accumulation.")
    print(f"per-sample reference timed on {ref_n:,} samples (vmap batch {args.batch}) and scaled "
          f"x{scale:.1f} to n; errors: AGOP on those {ref_n:,} samples (float32), and on "
          f"{args.f64_n} samples in float64.")
    print(f"same-n check: project {t_sub:.2f} s vs per-sample {sum(t_ref):.1f} s on {ref_n:,} samples "
          f"({sum(t_ref) / t_sub:.1f}x)")

    table(["part", "TFLOP", "share"], [
        [k, f"{flops[k] / 1e12:.2f}", f"{flops[k] / flops['total']:.0%}"]
        for k in ("forward", "propagate", "kernels")
    ] + [["total", f"{flops['total'] / 1e12:.2f}", "100%"],
         ["(dense_total)", f"{flops['dense_total'] / 1e12:.2f}", "full products, per-class top layer"]],
        title="FLOPs of the project's pass (agop_sweep.agop.pass_flops)")
    print(rate.describe())
    print(f"pass: {t_pass:.1f} s = {gflops(flops['total'], t_pass):.0f} GFLOP/s performed "
          f"({gflops(flops['dense_total'], t_pass):.0f} GFLOP/s counted as the dense pass)")
    analysis_s = t_pass + sum(t_cmp)
    print(f"analysis: pass {t_pass:.1f} s + compare_layer {sum(t_cmp):.1f} s "
          f"({sum(t_cmp) / analysis_s:.0%} of {analysis_s:.1f} s)")
    exact = "" if mem["rss_exact"] else " (upper bound: the peak mark could not be reset)"
    mem_gib = mem["rss_delta"] / GIB
    line = f"extra peak RSS of the analysis at n = {n:,}: {mem_gib:.2f} GiB{exact}"
    if device.type == "cuda":
        mem_gib = mem["cuda_delta"] / GIB
        line += f"; extra peak CUDA memory {mem_gib:.2f} GiB"
    print(line)

    speedup = sum(ref_full) / total_mine
    print("\nKey ratios")
    print(f"  speed-up over per-sample Jacobians, all layers: {speedup:.1f}x "
          f"(target >= {TARGET_SPEEDUP:.0f}x: {verdict(speedup, TARGET_SPEEDUP)})")
    print(f"  pass FLOP/s / fp32 matmul FLOP/s: {efficiency:.0%} "
          f"(target >= {TARGET_EFFICIENCY:.0%}: {verdict(efficiency, TARGET_EFFICIENCY)})")
    print(f"  relative error vs per-sample: float32 {max(errs32):.1e} (~1e-6), "
          f"float64 {max(errs64):.1e} (~1e-12)")
    print(f"  extra memory: {mem_gib:.2f} GiB (target < {TARGET_MEMORY_GIB:.0f} GiB: "
          f"{verdict(mem_gib, TARGET_MEMORY_GIB, higher_is_better=False)})")
    print(f"  compare_layer: {sum(t_cmp):.1f} s for {len(hidden)} layers "
          f"(layer 0: {t_cmp[0]:.1f} s; median of the others {statistics.median(t_cmp[1:] or [0]):.1f} s)")

    print(contention.report())

if __name__ == "__main__":
    main()
