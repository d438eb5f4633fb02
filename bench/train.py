"""Benchmark of training: one epoch per optimizer as the project runs it, and the original loop.

Project: the config is composed as ``python -m agop_sweep optimizer=<name>`` composes it;
the model and optimizer come from agop_sweep.model.mlp.build_model and
agop_sweep.model.optim.build_optimizer, and the timed steps are Trainer.train_epoch itself, over
``--steps`` minibatches (the fastest of ``--repeats``), scaled to the epoch's ceil(n / batch)
steps. The evaluation is agop_sweep.model.mlp.evaluate over ``--eval-n`` samples, scaled to
the train and val sets.

Original loop (the peer): the training loop of the original training_100epochs.py, written
anew here, in the same process on the same initial model and data: a torch DataLoader
(shuffle, batch 128, ``--peer-workers`` workers, 0 = in this process) over a list of
per-item (image, one-hot target) tensors, nn.MSELoss, zero_grad / forward / backward /
step / loss.item() per step, and the optimizer built with the same hyperparameters but
torch's defaults otherwise (no fused kernels; torch.optim.Muon as the project uses it).

Measured through torch.profiler (public API, in the real Trainer.train_epoch steps): the
optimizer update, torch's ``Optimizer.step#<name>.step`` range; for Muon, the matmuls of
its Newton-Schulz iteration (the aten mm/addmm inside that range), the rest of the
Newton-Schulz (bf16 cast, norm, scaling) and the elementwise update (lerp, mul_, add_).

Rates: training and evaluation against a plain fp32 matmul timed in the same process, with
exact matmul FLOP counts (flops.train_flops: the input gradient of the first layer is not
computed, because the input does not require grad); the SGD and Adam updates against their
memory-traffic floor: bytes read + written per parameter over the bandwidth of an in-place
a += b on arrays past the caches (the floor), and over that of a += b repeated on as many
tensors of the parameters' shapes as the update touches (the warm floor, partly in cache),
each measured in the same process; Newton-Schulz against a bf16 matmul (Muon runs with
optimizer.ns_dtype=bf16 here, whatever the device does fast; bench/ns_dtype.py compares the
dtypes).

    python bench/train.py                          # width 1024, depth 5, SVHN sizes, CPU (~6 min)
    python bench/train.py --optimizers sgd,adam --steps 200
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from common import (
    N_SVHN_TEST,
    Contention,
    TrainerHarness,
    base_parser,
    compose_config,
    fastest_time,
    gflops,
    setup,
    svhn_shaped,
    timed,
    weight_shapes,
    write_json,
)
from flops import MatmulFlops, eval_flops, ns_flops, train_flops
from machine import Rates, stream_rate, tensor_stream
from omegaconf import DictConfig
from original import OriginalLoop
from torch.profiler import ProfilerActivity, profile
from train_report import (
    TARGET_EVAL,
    TARGET_NS,
    TARGET_TRAIN,
    TARGET_UPDATE,
    UPDATE_BYTES,
    epoch_tables,
    key_ratios,
    muon_table,
    peer_table,
    update_tables,
)

# float32 tensors per parameter in an update's working set (SGD p, g; Adam p, g, m, v; Muon p,
# g, its buffer and the lerp result): the warm floor streams as many over the same shapes.
WORKING_ARRAYS = {"sgd": 2, "adam": 4, "muon": 4}
# torch's other kernels for SGD and Adam; on the CPU, torch's default (fused and foreach
# unset) is the per-parameter loop, on CUDA foreach.
KERNEL_VARIANTS = {"foreach": {"fused": None, "foreach": True},
                   "per-parameter loop": {"fused": None, "foreach": False}}
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::matmul", "aten::bmm"})
UPDATE_OPS = frozenset({"aten::lerp_", "aten::lerp", "aten::mul_", "aten::add_"})


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="minibatch (default: trainer.batch_size)")
    p.add_argument("--n-val", type=int, default=N_SVHN_TEST, help="val samples evaluated per epoch")
    p.add_argument("--optimizers", default="sgd,adam,muon")
    p.add_argument("--steps", type=int, default=50, help="timed steps per repeat (scaled to the epoch)")
    p.add_argument("--muon-steps", type=int, default=10, help="timed Muon steps per repeat")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds of timed and profiled steps, each with its own matmul and bandwidth samples "
                        "(ratios: the median over rounds; times: the fastest)")
    p.add_argument("--eval-n", type=int, default=16384, help="samples of the timed evaluation")
    p.add_argument("--peer-workers", type=int, default=0,
                   help="DataLoader workers of the original loop (0: in this process; the original "
                        "used min(cores, 12))")
    return p.parse_args(argv)


def config(name: str, args: argparse.Namespace) -> DictConfig:
    overrides = [f"optimizer={name}", f"model.width={args.width}", f"model.depth={args.depth}"]
    if name == "muon":  # the tables compare Newton-Schulz with the bf16 matmul rate
        overrides.append("optimizer.ns_dtype=bf16")
    if args.batch is not None:
        overrides.append(f"trainer.batch_size={args.batch}")
    return compose_config(overrides)


# -- the update, through torch.profiler ---------------------------------------------------------


def profiled_steps(h: TrainerHarness, steps: int) -> dict[str, float]:
    """Seconds per step of torch's ``Optimizer.step#...`` ranges in ``steps`` real
    Trainer.train_epoch steps, split into matmuls (Muon's Newton-Schulz), elementwise update
    ops and the rest; CPU time on the CPU, kernel time on CUDA."""
    cuda = h.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")
    with profile(activities=activities) as prof:
        h.train_steps(steps)

    def total(e: Any) -> float:
        return (e.device_time_total if cuda else e.cpu_time_total) / 1e6

    def self_time(e: Any) -> float:
        return (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6

    split = {"step": 0.0, "matmul": 0.0, "update": 0.0, "other": 0.0}
    fastest = float("inf")

    def walk(e: Any) -> None:
        if e.name in MATMUL_OPS:
            split["matmul"] += total(e)
        elif e.name in UPDATE_OPS:
            split["update"] += total(e)
        else:
            split["other"] += self_time(e)
            for child in e.cpu_children:
                walk(child)

    ranges = [e for e in prof.events() if e.name.startswith("Optimizer.step#")]
    for e in ranges:
        split["step"] += total(e)
        fastest = min(fastest, total(e))
        walk(e)
    # On the CPU the range's own time is Python between the ops; on CUDA it has no kernels.
    return {k: v / steps for k, v in split.items()} | {"ranges": len(ranges), "fastest": fastest}


def ns_matmuls(shape: tuple[int, ...], steps: int, device: torch.device) -> float:
    """Seconds of the Newton-Schulz matmuls alone: bf16, the same shapes, no scaling terms."""
    m, k = min(shape), max(shape)
    x = torch.randn(m, k, device=device).to(torch.bfloat16) / math.sqrt(k)

    def run() -> None:
        for _ in range(steps):
            g = x @ x.T
            u = g @ g
            u @ x

    return fastest_time(run, device, repeats=3)


def step_time(run_steps: Callable[[int], float], steps: int, repeats: int) -> float:
    run_steps(min(3, steps))  # warm-up: optimizer state, allocator, kernels
    return min(run_steps(steps) for _ in range(repeats)) / steps  # fastest: see common.fastest_time


def update_alone(h: TrainerHarness, shapes: list[tuple[int, ...]], arrays: int, step: bool,
                 device: torch.device, rounds: int = 20) -> tuple[float | None, int, float]:
    """The optimizer's step alone (repeated on the last step's gradients; when ``step``) and
    its warm floor stream (:func:`machine.tensor_stream`), interleaved round by round so that
    both see the same machine state: a shared host's memory bandwidth drifts by up to 1.5x
    within minutes. Returns (fastest step s or None, stream bytes, fastest stream s)."""
    stream, nbytes = tensor_stream(shapes, arrays, device)
    stream()
    if step:
        h.trainer.optimizer.step()
    alone, warm = [], []
    for _ in range(rounds):
        if step:
            alone.append(timed(h.trainer.optimizer.step, device)[0])
        warm.append(timed(stream, device)[0])
    return (min(alone) if step else None), nbytes, min(warm)


def kernel_variants(h: TrainerHarness, name: str, steps: int, repeats: int,
                    configured: dict[str, float]) -> dict[str, dict[str, float]]:
    """The same steps with each of torch's other kernels for SGD / Adam (what-ifs)."""
    opt = h.trainer.optimizer.optimizers[name]
    out = {f"fused={opt.defaults.get('fused')} (configured)": configured}
    for label, flags in KERNEL_VARIANTS.items():
        params = opt.param_groups[0]["params"]
        h.trainer.optimizer.optimizers[name] = type(opt)(params, **{**opt.defaults, **flags})
        out[label] = {"step_s": step_time(h.train_steps, steps, repeats),
                      "update_s": profiled_steps(h, steps)["step"]}
    h.trainer.optimizer.optimizers[name] = opt
    return out


def newton_schulz(h: TrainerHarness, prof: dict[str, float], rates: Rates,
                  device: torch.device) -> dict[str, float]:
    """Muon's Newton-Schulz: its time in the profiled steps, its FLOPs, its matmuls alone."""
    group = h.trainer.optimizer.optimizers["muon"].param_groups[0]
    mshapes, ns_steps = [tuple(p.shape) for p in group["params"]], group["ns_steps"]
    rates.sample_bf16()
    out = {"ns_s": prof["matmul"] + prof["other"], "ns_flops": sum(ns_flops(s, ns_steps) for s in mshapes),
           "ns_matmuls_alone_s": sum(ns_matmuls(s, ns_steps, device) for s in mshapes)}
    rates.sample_bf16()
    return out


def paired_rounds(h: TrainerHarness, name: str, steps: int, rounds: int, rates: Rates,
                  device: torch.device) -> list[dict[str, Any]]:
    """``rounds`` rounds of: timed steps, an fp32 matmul sample, profiled steps, a bandwidth
    sample (for Muon also a bf16 sample). Each ratio is then taken within a round, between
    measurements seconds apart, and the median over rounds reported: this host's speed drifts
    by up to 8 % (its memory bandwidth by up to 1.5x) over minutes, which a ratio of the
    fastest samples of a whole run would not cancel."""
    h.train_steps(min(3, steps))  # warm-up: optimizer state, allocator, kernels
    out = []
    for _ in range(rounds):
        k = {"step_s": h.train_steps(steps) / steps, "fp32": rates.fp32.sample()}
        k["profile"] = profiled_steps(h, steps)
        k["bandwidth"] = stream_rate(device)
        rates.bandwidth.append(k["bandwidth"])
        if name == "muon":
            k["bf16"] = rates.bf16.sample()
        out.append(k)
    return out


def measure(name: str, cfg: DictConfig, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor,
            device: torch.device, rates: Rates) -> dict[str, Any]:
    """One optimizer: the project's steps, gradient, evaluation and update, the what-ifs, the
    original loop, and for Muon its Newton-Schulz."""
    h = TrainerHarness(cfg, x, y, device)
    n_steps = math.ceil(args.n / h.bs)
    steps = min(args.muon_steps if name == "muon" else args.steps, n_steps)
    eval_n = min(args.eval_n, args.n)
    rounds = paired_rounds(h, name, steps, args.repeats, rates, device)
    step_s = min(k["step_s"] for k in rounds)  # fastest: see common.fastest_time
    prof = sorted((k["profile"] for k in rounds), key=lambda p: p["step"])[(len(rounds) - 1) // 2]  # median
    grad_s = h.gradient(steps) / steps
    eval_s = h.evaluation(eval_n) / eval_n  # per sample
    with MatmulFlops() as counter:
        h.train_steps(1)
    pshapes = [tuple(p.shape) for p in h.trainer.model.parameters()]
    alone_s, warm_bytes, warm_s = update_alone(h, pshapes, WORKING_ARRAYS[name], name != "muon", device)
    params = sum(p.numel() for p in h.trainer.model.parameters())
    fl = train_flops(weight_shapes(args.width, args.depth), h.bs)
    r: dict[str, Any] = {"step_s": step_s, "grad_s": grad_s, "batch": h.bs, "epoch_steps": n_steps,
                         "timed_steps": steps, "params": params, "train_flops_step": fl["total"],
                         "train_flops_step_naive_6x": fl["naive_6x"], "eval_s_per_sample": eval_s,
                         "update_s": prof["step"], "update_alone_s": alone_s, "profile": prof,
                         "rounds": rounds,
                         "counted_flops_step": counter.total, "warm_bandwidth": warm_bytes / warm_s,
                         "epoch_train_s": step_s * n_steps, "epoch_eval_s": eval_s * (args.n + args.n_val),
                         "update_bytes": UPDATE_BYTES[name] * params}
    if name in ("sgd", "adam"):
        configured = {"step_s": step_s, "update_s": prof["step"]}
        r["kernels"] = kernel_variants(h, name, steps, args.repeats, configured)
    peer = OriginalLoop(cfg, x, y, steps, device, args.peer_workers)
    r["peer_step_s"] = step_time(lambda k, p=peer: timed(p.epoch, device)[0], steps, args.repeats)
    r["peer_loading_s"] = fastest_time(peer.loading, device, repeats=args.repeats) / steps
    r["peer_ratio"] = r["peer_step_s"] / step_s
    del peer
    if name == "muon":
        r |= newton_schulz(h, prof, rates, device)
    h.close()
    print(f"  {name}: step {step_s * 1e3:.1f} ms, update {prof['step'] * 1e3:.2f} ms, original loop "
          f"{r['peer_step_s'] * 1e3:.1f} ms", flush=True)
    return r


def derive(name: str, r: dict[str, Any], rates: Rates, shapes: list[tuple[int, int]]) -> None:
    """The ratios: per round (median and range over the rounds) where the round has its own
    reference sample; the evaluation and the 1024 bf16 rate against the run's fastest sample."""
    rounds = r["rounds"]
    eff = [r["train_flops_step"] / k["step_s"] / k["fp32"] for k in rounds]
    r["train_efficiency"], r["train_efficiency_range"] = statistics.median(eff), [min(eff), max(eff)]
    r["eval_efficiency"] = gflops(eval_flops(shapes, 1), r["eval_s_per_sample"]) / (rates.fp32.rate / 1e9)
    # SGD and Adam: the fastest Optimizer.step range of a round's profiled steps against that
    # round's floor; Muon's elementwise part has no range of its own: its mean per step.
    measured = [k["profile"]["update" if name == "muon" else "fastest"] for k in rounds]
    floors = [r["update_bytes"] / k["bandwidth"] for k in rounds]
    vs = [m / f for m, f in zip(measured, floors, strict=True)]
    r["update_measured_s"], r["update_floor_s"] = statistics.median(measured), statistics.median(floors)
    r["update_vs_floor"], r["update_vs_floor_range"] = statistics.median(vs), [min(vs), max(vs)]
    r["update_warm_floor_s"] = r["update_bytes"] / r["warm_bandwidth"]
    alone = r["update_alone_s"]
    r["update_alone_vs_warm_floor"] = None if alone is None else alone / r["update_warm_floor_s"]
    for v in r.get("kernels", {}).values():
        v["update_vs_floor"] = v["update_s"] / r["update_floor_s"]
    if name == "muon":
        ns = [(k["profile"]["matmul"] + k["profile"]["other"]) / (r["ns_flops"] / k["bf16"]) for k in rounds]
        r["ns_vs_bf16"], r["ns_vs_bf16_range"] = statistics.median(ns), [min(ns), max(ns)]
        r["ns_vs_bf16_1024"] = r["ns_s"] / (r["ns_flops"] / rates.bf16_1024.rate)
        r["ns_vs_alone"] = r["ns_s"] / r["ns_matmuls_alone_s"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, printed as tables; returns them as a dict (also --json)."""
    device = setup(args)
    contention = Contention()
    names = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    shapes = weight_shapes(args.width, args.depth)
    x, y = svhn_shaped(max(args.n, min(args.eval_n, args.n)), device)
    rates = Rates.new(device, args.matmul_size)
    rates.fp32.sample()
    configs = {name: config(name, args) for name in names}  # all up front: a bad name fails now
    res = {name: measure(name, configs[name], args, x, y, device, rates) for name in names}
    for name, r in res.items():
        derive(name, r, rates, shapes)

    epoch_tables(res, args, rates, shapes)
    update_tables(res, rates)
    peer_table(res, args)
    if "muon" in res:
        muon_table(res["muon"], rates)
    share = contention.share()
    key_ratios(res)
    print(contention.report())
    return {
        "script": "train", "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args), "matmul_fp32_flops": rates.fp32.rate, "matmul_samples": rates.fp32.samples,
        "matmul_bf16_flops": rates.bf16.rate if rates.bf16.samples else None,
        "matmul_bf16_1024_flops": rates.bf16_1024.rate if rates.bf16_1024.samples else None,
        "bandwidth_bytes_per_s": rates.bw, "bandwidth_samples": rates.bandwidth, "optimizers": res,
        "targets": {"sgd_train_efficiency": TARGET_TRAIN, "eval_efficiency": TARGET_EVAL,
                    "update_vs_floor": TARGET_UPDATE, "ns_vs_bf16": TARGET_NS},
        "contention": share,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    results = run(args)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
