"""The tables and key ratios bench/train.py prints, and the targets it checks them against."""

from __future__ import annotations

import argparse
from typing import Any

from common import gflops, table, verdict
from flops import eval_flops, train_flops
from machine import Rates

TARGET_TRAIN = 0.75  # SGD training FLOP/s / fp32 matmul FLOP/s
TARGET_EVAL = 0.60
TARGET_UPDATE = 1.2  # SGD and Adam update time / its memory-traffic floor
TARGET_NS = 1.3  # Newton-Schulz time / its FLOPs at the bf16 matmul rate
# Bytes an update reads + writes per float32 parameter. SGD (momentum 0, fused): p and g
# read, p written. Adam (fused): p, g, m, v read, p, m, v written. Muon's elementwise part:
# buf.lerp_(g) 12, g.lerp(buf) 12, p.mul_ 8, p.add_(bf16 update) 10 (its Newton-Schulz is
# compute-bound and compared with the bf16 matmul rate instead).
UPDATE_BYTES = {"sgd": 12, "adam": 28, "muon": 42}


def epoch_tables(res: dict[str, dict[str, Any]], args: argparse.Namespace, rates: Rates,
                 shapes: list[tuple[int, int]]) -> None:
    """One epoch per optimizer, and its FLOP/s against the matmul rate."""
    some = next(iter(res.values()))
    n_steps = some["epoch_steps"]
    table(["optimizer", "batch", "timed steps", "step ms", "fwd+bwd ms", "update ms", "train s/epoch",
           "eval s/epoch", "epoch s"],
          [[name, r["batch"], r["timed_steps"], f"{r['step_s'] * 1e3:.1f}", f"{r['grad_s'] * 1e3:.1f}",
            f"{r['update_s'] * 1e3:.2f}", f"{r['epoch_train_s']:.1f}", f"{r['epoch_eval_s']:.1f}",
            f"{r['epoch_train_s'] + r['epoch_eval_s']:.1f}"] for name, r in res.items()],
          title=f"One epoch: {args.n:,} train samples ({n_steps} steps) + evaluation of {args.n:,} "
                f"train and {args.n_val:,} val samples")
    print(f"step: Trainer.train_epoch over the timed steps, the fastest of {args.repeats}, scaled to the "
          f"epoch's {n_steps} steps; fwd+bwd: forward, loss and backward alone; update: torch's "
          f"Optimizer.step range in profiled steps; evaluation: evaluate.evaluate over "
          f"{min(args.eval_n, args.n):,} samples, scaled to {args.n + args.n_val:,}.")
    fl = train_flops(shapes, some["batch"])
    table(["optimizer", "GFLOP/step", "train GFLOP/s", "of matmul", "eval GFLOP/s", "of matmul"],
          [[name, f"{r['train_flops_step'] / 1e9:.1f}", f"{gflops(r['train_flops_step'], r['step_s']):.0f}",
            f"{r['train_efficiency']:.0%}", f"{gflops(eval_flops(shapes, 1), r['eval_s_per_sample']):.0f}",
            f"{r['eval_efficiency']:.0%}"] for name, r in res.items()],
          title="Achieved FLOP/s, exact matmul FLOPs (flops.train_flops, flops.eval_flops)")
    print("train GFLOP/s: at the fastest step; of matmul: the median over the rounds of each round's "
          "step FLOP/s over the matmul sample taken right after it; evaluation against the fastest sample.")
    print(f"a step at batch {some['batch']}: forward {fl['forward'] / 1e9:.2f} + weight gradients "
          f"{fl['weight_grads'] / 1e9:.2f} + input gradients {fl['input_grads'] / 1e9:.2f} (none for "
          f"the first layer: the input does not require grad) = {fl['total'] / 1e9:.2f} GFLOP; 6 x batch x "
          f"params would say {fl['naive_6x'] / 1e9:.2f} ({fl['naive_6x'] / fl['total'] - 1:+.0%}). Matmuls "
          f"dispatched in one step: "
          + ", ".join(f"{k} {r['counted_flops_step'] / 1e9:.2f}" for k, r in res.items()) + " GFLOP.")
    print(rates.fp32.describe())


def update_tables(res: dict[str, dict[str, Any]], rates: Rates) -> None:
    """The updates against their memory-traffic floors, and torch's other kernels."""
    rows = []
    for name, r in res.items():
        alone = r["update_alone_s"]
        rows.append([name, UPDATE_BYTES[name], f"{r['update_bytes'] / 1e6:.0f}",
                     f"{(r['profile']['update'] if name == 'muon' else r['update_s']) * 1e3:.2f}",
                     "-" if name == "muon" else f"{r['update_measured_s'] * 1e3:.2f}",
                     f"{r['update_floor_s'] * 1e3:.2f}", f"{r['update_vs_floor']:.2f}x",
                     "-" if alone is None else f"{alone * 1e3:.2f}", f"{r['update_warm_floor_s'] * 1e3:.2f}",
                     "-" if alone is None else f"{r['update_alone_vs_warm_floor']:.2f}x"])
    table(["optimizer", "B/param", "MB moved", "in steps ms", "fastest ms", "floor ms", "fastest/floor",
           "alone ms", "warm floor ms", "alone/warm"], rows,
          title="Optimizer update against its memory-traffic floor (bytes read + written / bandwidth)")
    bw, warm = rates.bandwidth, ", ".join(f"{k} {r['warm_bandwidth'] / 1e9:.1f}" for k, r in res.items())
    print(f"in steps: SGD's and Adam's Optimizer.step range, Muon's elementwise part (lerp_, lerp, mul_, "
          f"add_), profiled in real Trainer.train_epoch steps (after a backward; the gradients new each "
          f"step), the mean per step; fastest: the fastest of those ranges in a round; floor: at the "
          f"bandwidth of a += b on 256 MiB float32 arrays (in place, as the updates: 12 bytes per element) "
          f"sampled right after that round ({len(bw)} samples in this process: {min(bw) / 1e9:.1f}-"
          f"{max(bw) / 1e9:.1f} GB/s); fastest, floor and their ratio are medians over the rounds. alone: "
          f"optimizer.step() repeated on the last step's gradients, interleaved with the warm floor's "
          f"stream (the fastest of 20 each). warm floor: at the "
          f"bandwidth of a += b repeated over the update's working set (as many float32 tensors of the "
          f"parameters' shapes; partly cache-resident): {warm} GB/s.")
    variants = [[name, label, f"{v['step_s'] * 1e3:.1f}", f"{v['update_s'] * 1e3:.2f}",
                 f"{v['update_vs_floor']:.2f}x"]
                for name, r in res.items() for label, v in r.get("kernels", {}).items()]
    if variants:
        table(["optimizer", "kernels", "step ms", "update ms", "of floor"], variants,
              title="The project's step with each of torch's optimizer kernels (what-ifs; optimizer.fused "
                    "picks the first or torch's default)")


def peer_table(res: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    table(["optimizer", "project step ms", "original loop step ms", "its DataLoader alone ms",
           "original / project"],
          [[name, f"{r['step_s'] * 1e3:.1f}", f"{r['peer_step_s'] * 1e3:.1f}",
            f"{r['peer_loading_s'] * 1e3:.2f}", f"{r['peer_ratio']:.2f}x"] for name, r in res.items()],
          title="The original script's loop against Trainer.train_epoch, same model, data and process")
    print(f"original loop: DataLoader over per-item tensors (batch {next(iter(res.values()))['batch']}, "
          f"shuffle, {args.peer_workers} workers), nn.MSELoss on one-hot targets, torch's optimizer "
          f"defaults (sgd/adam unfused), loss.item() every step; loading = iterating its DataLoader alone.")


def muon_table(r: dict[str, Any], rates: Rates) -> None:
    print(rates.bf16.describe())
    print(rates.bf16_1024.describe())
    p = r["profile"]
    table(["part", "ms / step"], [
        ["step (Trainer.train_epoch)", f"{r['step_s'] * 1e3:.1f}"],
        ["  gradient (forward + backward)", f"{r['grad_s'] * 1e3:.1f}"],
        ["  Muon.step (profiler range)", f"{p['step'] * 1e3:.1f}"],
        ["    Newton-Schulz matmuls (aten mm/addmm in the range)", f"{p['matmul'] * 1e3:.1f}"],
        ["    Newton-Schulz rest (bf16 cast, norm, scaling) + Python", f"{p['other'] * 1e3:.1f}"],
        ["    elementwise update (lerp_, lerp, mul_, add_)", f"{p['update'] * 1e3:.1f}"],
        ["NS matmuls alone, bf16, the same shapes", f"{r['ns_matmuls_alone_s'] * 1e3:.1f}"],
        [f"NS FLOPs ({r['ns_flops'] / 1e9:.0f} GFLOP) at the bf16 {rates.bf16.size} matmul rate",
         f"{r['ns_flops'] / rates.bf16.rate * 1e3:.1f}"],
        ["NS FLOPs at the bf16 1024 matmul rate", f"{r['ns_flops'] / rates.bf16_1024.rate * 1e3:.1f}"],
        ["NS FLOPs at the fp32 4096 matmul rate", f"{r['ns_flops'] / rates.fp32.rate * 1e3:.1f}"],
    ], title="Muon step split (torch.profiler over the real steps)")
    print("NS FLOPs of a (rows, cols) matrix, m = min, k = max: ns_steps x (4 m^2 k + 2 m^3), "
          "from torch/optim/_muon.py (X X^T, gram @ gram, update @ X).")


def key_ratios(res: dict[str, dict[str, Any]]) -> None:
    print("\nKey ratios")
    for name, r in res.items():
        e, (lo, hi) = r["train_efficiency"], r["train_efficiency_range"]
        target = f" (target >= {TARGET_TRAIN:.0%}: {verdict(e, TARGET_TRAIN)})" if name == "sgd" else ""
        print(f"  {name} training FLOP/s / matmul: {e:.0%}, the median of {len(r['rounds'])} rounds "
              f"({lo:.0%}-{hi:.0%}){target}")
    for name, r in res.items():
        if name in ("sgd", "adam"):
            v, (lo, hi) = r["update_vs_floor"], r["update_vs_floor_range"]
            print(f"  {name} update, the fastest in the steps / its memory-traffic floor: {v:.2f}x "
                  f"({lo:.2f}-{hi:.2f}x) "
                  f"(target <= {TARGET_UPDATE}x: {verdict(v, TARGET_UPDATE, higher_is_better=False)}); "
                  f"alone / the warm floor, interleaved: {r['update_alone_vs_warm_floor']:.2f}x")
    for name, r in res.items():
        print(f"  {name} evaluation FLOP/s / matmul: {r['eval_efficiency']:.0%} "
              f"(target >= {TARGET_EVAL:.0%}: {verdict(r['eval_efficiency'], TARGET_EVAL)})")
    for name, r in res.items():
        print(f"  {name} original loop / project step: {r['peer_ratio']:.2f}x "
              f"({r['peer_step_s'] * 1e3:.1f} vs {r['step_s'] * 1e3:.1f} ms)")
    if "muon" in res:
        r = res["muon"]
        lo, hi = r["ns_vs_bf16_range"]
        print(f"  muon Newton-Schulz / its FLOPs at the bf16 matmul rate: {r['ns_vs_bf16']:.2f}x "
              f"({lo:.2f}-{hi:.2f}x) "
              f"(target <= {TARGET_NS}x: {verdict(r['ns_vs_bf16'], TARGET_NS, higher_is_better=False)}); "
              f"at the bf16 1024 rate {r['ns_vs_bf16_1024']:.2f}x; "
              f"over its own matmuls timed alone {r['ns_vs_alone']:.2f}x")
        if "sgd" in res:
            print(f"  muon step / sgd step: {r['step_s'] / res['sgd']['step_s']:.1f}x")
