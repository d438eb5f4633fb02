"""Benchmark of training (issue 7.1): one epoch per optimizer, as the project runs it.

The config is composed as ``python -m agop_sweep optimizer=<name>`` composes it; the model
and optimizer come from agop_sweep.model.build_model / agop_sweep.optim.build_optimizer,
and the timed steps are Trainer._train_epoch itself, over ``--steps`` minibatches, scaled to
the epoch's ceil(n / batch) steps. The evaluation is agop_sweep.train.evaluate over
``--eval-n`` samples, scaled to the train and val sets. Efficiencies are relative to a plain
fp32 matmul timed in the same process; Muon's Newton-Schulz also to a bf16 one.

    python bench/train.py                          # width 1024, depth 5, SVHN sizes, CPU
    python bench/train.py --optimizers sgd,adam --steps 200
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from common import (
    N_SVHN_TEST,
    Contention,
    MatmulRate,
    TrainerHarness,
    base_parser,
    compose_config,
    gflops,
    median_time,
    setup,
    stream_rate,
    svhn_shaped,
    sync,
    table,
    verdict,
    weight_shapes,
)
from omegaconf import DictConfig
from torch.optim import _muon

TARGET_TRAIN = 0.70
TARGET_EVAL = 0.60
TARGET_NS = 1.3
# Bytes an update moves per float32 parameter at the least: SGD reads p and g and writes p;
# Adam also reads and writes both moments; Muon's momentum alone is SGD's plus one array.
UPDATE_BYTES = {"sgd": 12, "adam": 28, "muon": 20}


def parse() -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="minibatch (default: trainer.batch_size)")
    p.add_argument("--n-val", type=int, default=N_SVHN_TEST, help="val samples evaluated per epoch")
    p.add_argument("--optimizers", default="sgd,adam,muon")
    p.add_argument("--steps", type=int, default=100, help="timed steps per repeat (scaled to the epoch)")
    p.add_argument("--muon-steps", type=int, default=40, help="timed Muon steps per repeat")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--eval-n", type=int, default=16384, help="samples of the timed evaluation")
    return p.parse_args()


def config(name: str, args: argparse.Namespace) -> DictConfig:
    overrides = [f"optimizer={name}", f"model.width={args.width}", f"model.depth={args.depth}"]
    if args.batch is not None:
        overrides.append(f"trainer.batch_size={args.batch}")
    return compose_config(overrides)


def ns_flops(shape: tuple[int, ...], steps: int) -> int:
    """FLOPs of torch.optim._muon._zeropower_via_newtonschulz on a (rows, cols) gradient.

    It works on X (m, k), m = min(rows, cols) (tall matrices are transposed); each step is
    gram = X X^T (2 m^2 k), addmm(gram, gram, gram) (2 m^3), addmm(X, update, X) (2 m^2 k).
    """
    m, k = min(shape), max(shape)
    return steps * (4 * m * m * k + 2 * m**3)


def ns_matmuls(shape: tuple[int, ...], steps: int, device: torch.device) -> float:
    """Seconds of the Newton-Schulz matmuls alone: bf16, the same shapes, no scaling terms."""
    m, k = min(shape), max(shape)
    x = torch.randn(m, k, device=device).to(torch.bfloat16) / math.sqrt(k)

    def run() -> None:
        for _ in range(steps):
            g = x @ x.T
            u = g @ g
            u @ x

    return median_time(run, device, repeats=3)


def muon_group(h: TrainerHarness) -> dict:
    return h.trainer.optimizer.optimizers["muon"].param_groups[0]


def newton_schulz(h: TrainerHarness, steps: int) -> tuple[float, float]:
    """Seconds of Trainer._train_epoch over ``steps`` Muon steps, and the part of it spent in
    torch's Newton-Schulz (timed in place: Muon.step calls it through the module global)."""
    original = _muon._zeropower_via_newtonschulz
    spent = 0.0

    def timed_ns(*args: object, **kwargs: object) -> torch.Tensor:
        nonlocal spent
        sync(h.device)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        sync(h.device)
        spent += time.perf_counter() - t0
        return out

    _muon._zeropower_via_newtonschulz = timed_ns
    try:
        total = h.train_steps(steps)
    finally:
        _muon._zeropower_via_newtonschulz = original
    return total, spent


def step_time(h: TrainerHarness, steps: int, repeats: int) -> float:
    h.train_steps(min(3, steps))  # warm-up: optimizer state, allocator, kernels
    return statistics.median(h.train_steps(steps) for _ in range(repeats)) / steps


def main() -> None:
    args = parse()
    device = setup(args)
    contention = Contention()
    names = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    mac = sum(o * i for o, i in weight_shapes(args.width, args.depth))  # sum d_in d_out
    eval_n = min(args.eval_n, args.n)
    x, y = svhn_shaped(max(args.n, eval_n), device)
    rate, bf16 = MatmulRate(device), MatmulRate(device, torch.bfloat16)
    bf16_1024 = MatmulRate(device, torch.bfloat16, size=1024)  # the size of Muon's matrices
    rate.sample()
    bandwidth = stream_rate(device)

    rows, eff_rows, res, variants = [], [], {}, []
    for name in names:
        h = TrainerHarness(config(name, args), x, y, device)
        n_steps = math.ceil(args.n / h.bs)
        steps = min(args.muon_steps if name == "muon" else args.steps, n_steps)
        if name == "muon":  # the Newton-Schulz share is timed inside the same steps
            h.train_steps(min(3, steps))
            runs = [newton_schulz(h, steps) for _ in range(args.repeats)]
            step_s = statistics.median(t for t, _ in runs) / steps
            ns_s = statistics.median(ns for _, ns in runs) / steps
        else:
            step_s = step_time(h, steps, args.repeats)
        grad_s = h.gradient(steps) / steps
        eval_s = h.evaluation(eval_n) / eval_n  # per sample
        rate.sample()
        r = res[name] = {"step": step_s, "grad": grad_s, "bs": h.bs, "n_steps": n_steps, "steps": steps}
        r["train_eff"] = gflops(6 * h.bs * mac, step_s) / (rate.rate / 1e9)
        r["eval_eff"] = gflops(2 * mac, eval_s) / (rate.rate / 1e9)
        epoch_train, epoch_eval = step_s * n_steps, eval_s * (args.n + args.n_val)
        rows.append([name, h.bs, steps, f"{step_s * 1e3:.1f}", f"{grad_s * 1e3:.1f}",
                     f"{(step_s - grad_s) * 1e3:.1f}", f"{epoch_train:.1f}", f"{epoch_eval:.1f}",
                     f"{epoch_train + epoch_eval:.1f}"])
        params = sum(p.numel() for p in h.trainer.model.parameters())
        r["floor"] = UPDATE_BYTES[name] * params / bandwidth
        eff_rows.append([name, f"{gflops(6 * h.bs * mac, step_s):.0f}", f"{r['train_eff']:.0%}",
                         f"{gflops(2 * mac, eval_s):.0f}", f"{r['eval_eff']:.0%}"])
        if name in ("sgd", "adam"):  # what-if: optimizer.fused=false, torch's default
            opt = h.trainer.optimizer.optimizers[name]
            h.trainer.optimizer.optimizers[name] = type(opt)(
                opt.param_groups[0]["params"], **{**opt.defaults, "fused": None})
            variants.append([f"{name} fused={bool(opt.defaults['fused'])} (as configured)",
                             f"{step_s * 1e3:.1f}"])
            variants.append([f"{name} fused=None (torch's default: loop on CPU, foreach on CUDA)",
                             f"{step_time(h, steps, args.repeats) * 1e3:.1f}"])
            h.trainer.optimizer.optimizers[name] = opt
        if name == "muon":
            shapes = [tuple(p.shape) for p in muon_group(h)["params"]]
            ns_steps = muon_group(h)["ns_steps"]
            for _ in range(2):  # bf16 rates vary most: sample them around the Newton-Schulz timings
                bf16.sample()
                bf16_1024.sample()
            r["ns"] = ns_s
            r["ns_flops"] = sum(ns_flops(s, ns_steps) for s in shapes)
            r["ns_mm"] = sum(ns_matmuls(s, ns_steps, device) for s in shapes)
            for _ in range(2):
                bf16.sample()
                bf16_1024.sample()
        h.close()

    n_steps = next(iter(res.values()))["n_steps"]
    table(["optimizer", "batch", "timed steps", "step ms", "fwd+bwd ms", "update ms", "train s/epoch",
           "eval s/epoch", "epoch s"], rows,
          title=f"One epoch: {args.n:,} train samples ({n_steps} steps) + evaluation of {args.n:,} "
                f"train and {args.n_val:,} val samples")
    print(f"steps: Trainer._train_epoch over the timed steps, median of {args.repeats}, scaled to the "
          f"epoch's {n_steps} steps; evaluation: train.evaluate over {eval_n:,} samples, "
          f"scaled to {args.n + args.n_val:,}. update = step - (forward + backward).")
    table(["optimizer", "train GFLOP/s", "of matmul", "eval GFLOP/s", "of matmul", "update floor ms"],
          [[*row, f"{res[row[0]]['floor'] * 1e3:.1f}"] for row in eff_rows],
          title="Achieved FLOP/s (train: 6 x batch x sum(d_in d_out) a step; eval: 2 x n x sum(d_in d_out))")
    print(f"update floor: the bytes an update must move (sgd 12, adam 28, muon >= 20 per parameter) at "
          f"the measured memory bandwidth, {bandwidth / 1e9:.1f} GB/s (c = a + b, 64 MiB arrays)")
    print(rate.describe())
    print(bf16.describe())
    print(bf16_1024.describe())
    if variants:
        table(["variant", "step ms"], variants,
              title="The same step with torch's fused and default optimizer kernels (optimizer.fused)")

    if "muon" in res:
        r = res["muon"]
        at_bf16, at_fp32 = r["ns_flops"] / bf16.rate, r["ns_flops"] / rate.rate
        at_1024 = r["ns_flops"] / bf16_1024.rate
        table(["part", "ms / step"], [
            ["step (Trainer._train_epoch)", f"{r['step'] * 1e3:.1f}"],
            ["  gradient (forward + backward)", f"{r['grad'] * 1e3:.1f}"],
            ["  Newton-Schulz (torch's, every matrix, timed in the step)", f"{r['ns'] * 1e3:.1f}"],
            ["  rest of the update (step - gradient - NS)",
             f"{(r['step'] - r['grad'] - r['ns']) * 1e3:.1f}"],
            ["NS matmuls alone, bf16, the same shapes", f"{r['ns_mm'] * 1e3:.1f}"],
            [f"NS FLOPs ({r['ns_flops'] / 1e9:.0f} GFLOP) at the bf16 4096 matmul rate",
             f"{at_bf16 * 1e3:.1f}"],
            ["NS FLOPs at the bf16 1024 matmul rate", f"{at_1024 * 1e3:.1f}"],
            ["NS FLOPs at the fp32 4096 matmul rate", f"{at_fp32 * 1e3:.1f}"],
        ], title="Muon step split")
        print("NS FLOPs of a (rows, cols) matrix, m = min, k = max: ns_steps x (4 m^2 k + 2 m^3), "
              "from torch/optim/_muon.py (X X^T, gram @ gram, update @ X).")

    print("\nKey ratios")
    for name in ("sgd", "adam"):
        if name in res:
            e = res[name]["train_eff"]
            print(f"  {name} training FLOP/s / matmul: {e:.0%} "
                  f"(target >= {TARGET_TRAIN:.0%}: {verdict(e, TARGET_TRAIN)})")
    for name, r in res.items():
        print(f"  {name} evaluation FLOP/s / matmul: {r['eval_eff']:.0%} "
              f"(target >= {TARGET_EVAL:.0%}: {verdict(r['eval_eff'], TARGET_EVAL)})")
    if "muon" in res:
        r = res["muon"]
        ratio = r["ns"] / (r["ns_flops"] / bf16.rate)
        print(f"  muon Newton-Schulz / its FLOPs at the bf16 matmul rate: {ratio:.2f}x "
              f"(target <= {TARGET_NS}x: {verdict(ratio, TARGET_NS, higher_is_better=False)}); "
              f"at the bf16 1024 rate {r['ns'] / (r['ns_flops'] / bf16_1024.rate):.2f}x; "
              f"at the fp32 rate {r['ns'] / (r['ns_flops'] / rate.rate):.2f}x; "
              f"over its own matmuls timed alone {r['ns'] / r['ns_mm']:.2f}x")
        if "sgd" in res:
            print(f"  muon step / sgd step: {r['step'] / res['sgd']['step']:.1f}x")

    print(contention.report())

if __name__ == "__main__":
    main()
