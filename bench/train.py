"""Benchmark of training: one epoch per optimizer as the project runs it, and the original loop.

Project: a real run of the Trainer per optimizer (``python -m agop_sweep optimizer=<name>
data=synthetic`` at SVHN's input size, ``--steps`` minibatches an epoch, no analysis), watched
by an observer that works between its epochs: ``--repeats`` rounds of a timed epoch, an fp32
matmul sample, an epoch under torch.profiler (the optimizer update: torch's
``Optimizer.step#<name>.step`` range; Muon's Newton-Schulz matmuls inside it) and a bandwidth
sample; a last epoch under the matmul FLOP counter. Beside the run, with the project's
builders and the same initial weights: forward + backward alone, the evaluation, and
``optimizer.step()`` alone on fixed gradients with each of torch's kernels. The original
loop: bench/original.py's. Rates: training and evaluation against a plain fp32 matmul, the
updates against their memory-traffic floor, Newton-Schulz against a bf16 matmul (Muon runs
with optimizer.ns_dtype=bf16). bench/README.md says what each figure is.

    python -m bench.train                          # width 1024, depth 5, SVHN sizes, CPU (~6 min)
    python -m bench.train --optimizers sgd,adam --steps 200
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch.profiler import ProfilerActivity, profile

from agop_sweep.model.mlp import build_model, evaluate, loss_fn
from agop_sweep.model.optim import build_optimizer
from bench.common import (
    D_IN,
    N_CLASSES,
    N_SVHN_TEST,
    Contention,
    EpochLog,
    MatmulFlops,
    MatmulRate,
    base_parser,
    compose_config,
    eval_flops,
    fastest_time,
    gflops,
    ns_flops,
    run_trainer,
    setup,
    stream_rate,
    svhn_shaped,
    table,
    tensor_stream,
    timed,
    train_flops,
    verdict,
    weight_shapes,
    write_json,
)
from bench.original import OriginalLoop

TARGET_TRAIN = 0.75  # SGD training FLOP/s / fp32 matmul FLOP/s
TARGET_EVAL = 0.60
TARGET_UPDATE = 1.2  # SGD and Adam update time / its memory-traffic floor
TARGET_NS = 1.3  # Newton-Schulz time / its FLOPs at the bf16 matmul rate
# Bytes an update reads + writes per float32 parameter. SGD (momentum 0, fused): p, g read,
# p written. Adam (fused): p, g, m, v read, p, m, v written. Muon's elementwise part:
# buf.lerp_(g) 12, g.lerp(buf) 12, p.mul_ 8, p.add_(bf16 update) 10.
UPDATE_BYTES = {"sgd": 12, "adam": 28, "muon": 42}
# float32 tensors per parameter in an update's working set: the warm floor streams as many.
WORKING_ARRAYS = {"sgd": 2, "adam": 4, "muon": 4}
# torch's other kernels for SGD and Adam; on the CPU torch's default is the per-parameter loop.
KERNEL_VARIANTS = {"foreach": {"fused": None, "foreach": True},
                   "per-parameter loop": {"fused": None, "foreach": False}}
MATMUL_OPS = frozenset({"aten::mm", "aten::addmm", "aten::matmul", "aten::bmm"})
UPDATE_OPS = frozenset({"aten::lerp_", "aten::lerp", "aten::mul_", "aten::add_"})


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0], "train")
    p.add_argument("--batch", type=int, default=None, help="minibatch (default: trainer.batch_size)")
    p.add_argument("--n-val", type=int, default=N_SVHN_TEST, help="val samples evaluated per epoch")
    p.add_argument("--optimizers", default="sgd,adam,muon")
    p.add_argument("--steps", type=int, default=50, help="steps of a timed epoch (scaled to n)")
    p.add_argument("--muon-steps", type=int, default=10, help="steps of a timed Muon epoch")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds of a timed and a profiled epoch, each with its own matmul and bandwidth "
                        "samples (ratios: the median over rounds; times: the fastest)")
    p.add_argument("--eval-n", type=int, default=16384, help="samples of the timed evaluation")
    p.add_argument("--peer-workers", type=int, default=0,
                   help="DataLoader workers of the original loop (0: in this process; the original "
                        "used min(cores, 12))")
    return p.parse_args(argv)


@dataclass
class Rates:
    """The reference rates, sampled in every round; the fastest sample of each counts."""

    fp32: MatmulRate
    bf16: MatmulRate
    bandwidth: list[float] = field(default_factory=list)


def split_profile(prof: Any, steps: int, cuda: bool) -> dict[str, float]:
    """Seconds per step of torch's ``Optimizer.step#...`` ranges, split into matmuls (Muon's
    Newton-Schulz), elementwise update ops and the rest; CPU time on the CPU, kernel time on CUDA."""

    def total(e: Any) -> float:
        return (e.device_time_total if cuda else e.cpu_time_total) / 1e6

    split = {"step": 0.0, "matmul": 0.0, "update": 0.0, "other": 0.0}

    def walk(e: Any) -> None:
        if e.name in MATMUL_OPS:
            split["matmul"] += total(e)
        elif e.name in UPDATE_OPS:
            split["update"] += total(e)
        else:  # on the CPU a range's own time is Python between the ops
            split["other"] += (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6
            for child in e.cpu_children:
                walk(child)

    ranges = [e for e in prof.events() if e.name.startswith("Optimizer.step#")]
    for e in ranges:
        split["step"] += total(e)
        walk(e)
    return {k: v / steps for k, v in split.items()} | {"ranges": len(ranges),
                                                       "fastest": min(map(total, ranges), default=math.nan)}


class Rounds(EpochLog):
    """Works between the trainer's epochs: epoch 1 warms up; each round is a timed epoch, then
    an fp32 matmul sample, a profiled epoch, then a bandwidth sample (for Muon a bf16 sample);
    the last epoch runs under :class:`MatmulFlops`."""

    def __init__(self, name: str, steps: int, rounds: int, rates: Rates, device: torch.device):
        super().__init__()
        self.opt, self.steps, self.rates, self.device = name, steps, rates, device
        self.plan = ["warm-up", *["timed", "profiled"] * rounds, "counted"]  # epochs 1, 2, ...
        self.rounds: list[dict[str, Any]] = []
        self.counted = 0
        self._mode: Any = None  # the profiler or counter around the next epoch

    def observe(self, event: Any, row: dict[str, Any]) -> None:
        what = self.plan[event.epoch - 1] if event.epoch else "start"
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
        if what == "timed":
            step_s = row["train_seconds"] / self.steps
            self.rounds.append({"step_s": step_s, "fp32": self.rates.fp32.sample()})
        elif what == "profiled":
            k = self.rounds[-1]
            k["profile"] = split_profile(self._mode, self.steps, self.device.type == "cuda")
            k["bandwidth"] = stream_rate(self.device)
            self.rates.bandwidth.append(k["bandwidth"])
            if self.opt == "muon":
                k["bf16"] = self.rates.bf16.sample()
        elif what == "counted":
            self.counted = self._mode.total
        following = self.plan[event.epoch] if event.epoch < len(self.plan) else None
        self._mode = {"profiled": lambda: profile(activities=[ProfilerActivity.CPU] + (
            [ProfilerActivity.CUDA] if self.device.type == "cuda" else [])),
                      "counted": MatmulFlops}.get(following, lambda: None)()
        if self._mode is not None:
            self._mode.__enter__()

    def on_run_end(self, record: Any, run_dir: Any) -> None:
        if self._mode is not None:  # the run stopped early
            self._mode.__exit__(None, None, None)
            self._mode = None
        super().on_run_end(record, run_dir)


def config(name: str, args: argparse.Namespace, steps: int, epochs: int, device: torch.device) -> DictConfig:
    """The run: ``steps`` minibatches an epoch, a val set of one batch, no analysis, no figures."""
    bs = args.batch
    ns = ["optimizer.ns_dtype=bf16"] if name == "muon" else []  # compared with the bf16 matmul rate
    return compose_config([
        "data=synthetic", f"device={device.type}", f"optimizer={name}", *ns, f"model.width={args.width}",
        f"model.depth={args.depth}", f"trainer.batch_size={bs}", f"data.n_train={steps * bs}",
        f"data.n_val={bs}", "analysis=off", "eval.full_train=false", "trainer.plots=off",
        f"schedule.epochs={epochs}", f"schedule.checkpoints=[{epochs}]"])


def beside(name: str, cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, steps: int, eval_n: int,
           device: torch.device) -> dict[str, Any]:
    """With the project's builders and the trainer's initial weights: forward + loss + backward
    alone, the evaluation, and ``optimizer.step()`` alone on the last gradients (each kernel),
    interleaved round by round with its warm floor's stream (a shared host's bandwidth drifts)."""
    torch.manual_seed(cfg.seed)
    model = build_model(D_IN, cfg.model.width, cfg.model.depth, N_CLASSES, cfg.model.act,
                        init=cfg.model.init).to(device)
    opts, bs = build_optimizer(cfg.optimizer, model), cfg.trainer.batch_size

    def gradient() -> None:
        for s in range(steps):
            loss = loss_fn(cfg.loss, model(x[s * bs : (s + 1) * bs]), y[s * bs : (s + 1) * bs])
            opts.zero_grad()
            loss.backward()

    out: dict[str, Any] = {"grad_s": fastest_time(gradient, device, repeats=3) / steps}
    model.eval()
    out["eval_s_per_sample"] = fastest_time(lambda: evaluate(model, x[:eval_n], y[:eval_n], cfg.loss,
                                                             cfg.eval.batch_size), device, repeats=3) / eval_n
    model.train()
    kernels = {}
    if name != "muon":
        opt = opts.optimizers[name]
        kernels = {f"fused={opt.defaults.get('fused')} (configured)": opt.step} | {
            label: type(opt)(opt.param_groups[0]["params"], **{**opt.defaults, **flags}).step
            for label, flags in KERNEL_VARIANTS.items()}
    stream, nbytes = tensor_stream([p.shape for p in model.parameters()], WORKING_ARRAYS[name], device)
    alone: dict[str, list[float]] = {k: [] for k in kernels}
    warm = []
    for _ in range(21):  # the first round warms up (optimizer state, pages)
        for label, step in kernels.items():
            alone[label].append(timed(step, device)[0])
        warm.append(timed(stream, device)[0])
    out["params"] = sum(p.numel() for p in model.parameters())
    out["warm_bandwidth"] = nbytes / min(warm[1:])
    out["kernels"] = {label: {"alone_s": min(t[1:])} for label, t in alone.items()}
    return out


def measure(name: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor, device: torch.device,
            rates: Rates) -> dict[str, Any]:
    """One optimizer: the observed run, the measurements beside it, and the original loop."""
    steps = args.muon_steps if name == "muon" else args.steps
    observer = Rounds(name, steps, args.repeats, rates, device)
    cfg = config(name, args, steps, len(observer.plan), device)
    run_trainer(cfg, device, [observer])
    bs, shapes = cfg.trainer.batch_size, weight_shapes(args.width, args.depth)
    rounds = observer.rounds
    prof = sorted((k["profile"] for k in rounds), key=lambda p: p["step"])[(len(rounds) - 1) // 2]  # median
    fl = train_flops(shapes, bs)
    r: dict[str, Any] = {
        "step_s": min(k["step_s"] for k in rounds), "batch": bs, "epoch_steps": math.ceil(args.n / bs),
        "timed_steps": steps, "train_flops_step": fl["total"], "train_flops_step_naive_6x": fl["naive_6x"],
        "update_s": prof["step"], "profile": prof, "rounds": rounds,
        "counted_flops_step": (observer.counted - eval_flops(shapes, bs)) / steps,  # less the val batch
        **beside(name, cfg, x, y, steps, min(args.eval_n, x.shape[0]), device)}
    r["update_bytes"] = UPDATE_BYTES[name] * r["params"]
    r["epoch_train_s"] = r["step_s"] * r["epoch_steps"]
    r["epoch_eval_s"] = r["eval_s_per_sample"] * (args.n + args.n_val)
    if name == "muon":
        r["ns_flops"] = sum(ns_flops(s, cfg.optimizer.ns_steps) for s in shapes)
        r["ns_s"] = prof["matmul"] + prof["other"]
    peer = OriginalLoop(cfg, x, y, steps, device, args.peer_workers)
    r["peer_step_s"] = fastest_time(peer.epoch, device, repeats=args.repeats) / steps
    r["peer_loading_s"] = fastest_time(peer.loading, device, repeats=args.repeats) / steps
    r["peer_ratio"] = r["peer_step_s"] / r["step_s"]
    print(f"  {name}: step {r['step_s'] * 1e3:.1f} ms, update {prof['step'] * 1e3:.2f} ms, original loop "
          f"{r['peer_step_s'] * 1e3:.1f} ms", flush=True)
    return r


def derive(name: str, r: dict[str, Any], rates: Rates, shapes: list[tuple[int, int]]) -> None:
    """The ratios: per round (median and range) against the round's own reference samples; the
    evaluation against the run's fastest fp32 sample, the updates alone against the warm floor."""
    rounds = r["rounds"]

    def over_rounds(key: str, values: list[float]) -> None:
        r[key], r[f"{key}_range"] = statistics.median(values), [min(values), max(values)]

    over_rounds("train_efficiency", [r["train_flops_step"] / k["step_s"] / k["fp32"] for k in rounds])
    r["eval_efficiency"] = gflops(eval_flops(shapes, 1), r["eval_s_per_sample"]) / (rates.fp32.rate / 1e9)
    # SGD and Adam: the fastest Optimizer.step range of a round against that round's floor;
    # Muon's elementwise part has no range of its own: its mean per step.
    measured = [k["profile"]["update" if name == "muon" else "fastest"] for k in rounds]
    floors = [r["update_bytes"] / k["bandwidth"] for k in rounds]
    r["update_measured_s"], r["update_floor_s"] = statistics.median(measured), statistics.median(floors)
    over_rounds("update_vs_floor", [m / f for m, f in zip(measured, floors, strict=True)])
    r["update_warm_floor_s"] = r["update_bytes"] / r["warm_bandwidth"]
    for v in r["kernels"].values():
        v["vs_warm_floor"] = v["alone_s"] / r["update_warm_floor_s"]
    if name == "muon":
        p = [k["profile"] for k in rounds]
        over_rounds("ns_vs_bf16", [(q["matmul"] + q["other"]) / (r["ns_flops"] / k["bf16"])
                                   for q, k in zip(p, rounds, strict=True)])


def tables(res: dict[str, dict[str, Any]], args: argparse.Namespace, rates: Rates,
           shapes: list[tuple[int, int]]) -> None:
    some = next(iter(res.values()))
    table(["optimizer", "batch", "timed steps", "step ms", "fwd+bwd ms", "update ms", "train s/epoch",
           "eval s/epoch", "epoch s"],
          [[name, r["batch"], r["timed_steps"], f"{r['step_s'] * 1e3:.1f}", f"{r['grad_s'] * 1e3:.1f}",
            f"{r['update_s'] * 1e3:.2f}", f"{r['epoch_train_s']:.1f}", f"{r['epoch_eval_s']:.1f}",
            f"{r['epoch_train_s'] + r['epoch_eval_s']:.1f}"] for name, r in res.items()],
          title=f"One epoch: {args.n:,} train samples ({some['epoch_steps']} steps) + evaluation of "
                f"{args.n:,} train and {args.n_val:,} val samples")
    print(f"step: a timed epoch of the Trainer, the fastest of {args.repeats}, scaled; fwd+bwd: forward, "
          f"loss and backward alone; update: torch's Optimizer.step range in the profiled epochs; "
          f"evaluation: evaluate over {min(args.eval_n, args.n):,} samples, scaled.")
    fl = train_flops(shapes, some["batch"])
    table(["optimizer", "GFLOP/step", "train GFLOP/s", "of matmul", "eval GFLOP/s", "of matmul"],
          [[name, f"{r['train_flops_step'] / 1e9:.1f}", f"{gflops(r['train_flops_step'], r['step_s']):.0f}",
            f"{r['train_efficiency']:.0%}", f"{gflops(eval_flops(shapes, 1), r['eval_s_per_sample']):.0f}",
            f"{r['eval_efficiency']:.0%}"] for name, r in res.items()],
          title="Achieved FLOP/s, exact matmul FLOPs")
    print(f"of matmul: the median over the rounds of each round's step FLOP/s over the matmul sample taken "
          f"right after it. A step at batch {some['batch']}: forward {fl['forward'] / 1e9:.2f} + weight "
          f"gradients {fl['weight_grads'] / 1e9:.2f} + input gradients {fl['input_grads'] / 1e9:.2f} "
          f"(none for the first layer) = {fl['total'] / 1e9:.2f} GFLOP; 6 x batch x params would say "
          f"{fl['naive_6x'] / 1e9:.2f}. Dispatched in a step of the counted epoch: "
          + ", ".join(f"{k} {r['counted_flops_step'] / 1e9:.2f}" for k, r in res.items()) + " GFLOP.")
    print(rates.fp32.describe())
    rows = []
    for name, r in res.items():
        alone = next(iter(r["kernels"].values()), None)  # the configured kernel's; none for Muon
        in_steps = r["profile"]["update"] if name == "muon" else r["update_s"]
        rows.append([name, UPDATE_BYTES[name], f"{r['update_bytes'] / 1e6:.0f}", f"{in_steps * 1e3:.2f}",
                     "-" if name == "muon" else f"{r['update_measured_s'] * 1e3:.2f}",
                     f"{r['update_floor_s'] * 1e3:.2f}", f"{r['update_vs_floor']:.2f}x",
                     "-" if alone is None else f"{alone['alone_s'] * 1e3:.2f}",
                     f"{r['update_warm_floor_s'] * 1e3:.2f}",
                     "-" if alone is None else f"{alone['vs_warm_floor']:.2f}x"])
    table(["optimizer", "B/param", "MB moved", "in steps ms", "fastest ms", "floor ms", "fastest/floor",
           "alone ms", "warm floor ms", "alone/warm"], rows,
          title="Optimizer update against its memory-traffic floor (bytes read + written / bandwidth)")
    bw = rates.bandwidth
    print(f"in steps: the mean Optimizer.step range per profiled step (Muon: its lerp_, lerp, mul_, add_); "
          f"fastest: the fastest range of a round; floor: at the bandwidth of a += b on arrays past the "
          f"caches sampled after that round ({min(bw) / 1e9:.1f}-{max(bw) / 1e9:.1f} GB/s); medians over the "
          f"rounds. alone: optimizer.step() on fixed gradients, interleaved with the warm floor, a += b over "
          f"the update's working set ("
          + ", ".join(f"{k} {r['warm_bandwidth'] / 1e9:.1f}" for k, r in res.items()) + " GB/s).")
    variants = [[name, label, f"{v['alone_s'] * 1e3:.2f}", f"{v['vs_warm_floor']:.2f}x"]
                for name, r in res.items() for label, v in r["kernels"].items()]
    if variants:
        table(["optimizer", "kernels", "alone ms", "of warm floor"], variants,
              title="optimizer.step() alone with each of torch's kernels (what-ifs)")
    table(["optimizer", "project step ms", "original loop step ms", "its DataLoader alone ms",
           "original / project"],
          [[name, f"{r['step_s'] * 1e3:.1f}", f"{r['peer_step_s'] * 1e3:.1f}",
            f"{r['peer_loading_s'] * 1e3:.2f}", f"{r['peer_ratio']:.2f}x"] for name, r in res.items()],
          title=f"The original script's loop ({args.peer_workers} DataLoader workers) against the Trainer")
    if "muon" in res:
        r, p = res["muon"], res["muon"]["profile"]
        print(rates.bf16.describe())
        table(["part", "ms / step"], [
            ["step (Trainer)", f"{r['step_s'] * 1e3:.1f}"],
            ["  gradient (forward + backward)", f"{r['grad_s'] * 1e3:.1f}"],
            ["  Muon.step (profiler range)", f"{p['step'] * 1e3:.1f}"],
            ["    Newton-Schulz matmuls (aten mm/addmm in the range)", f"{p['matmul'] * 1e3:.1f}"],
            ["    Newton-Schulz rest (bf16 cast, norm, scaling) + Python", f"{p['other'] * 1e3:.1f}"],
            ["    elementwise update (lerp_, lerp, mul_, add_)", f"{p['update'] * 1e3:.1f}"],
            [f"NS FLOPs ({r['ns_flops'] / 1e9:.0f} GFLOP) at the bf16 {rates.bf16.size} matmul rate",
             f"{r['ns_flops'] / rates.bf16.rate * 1e3:.1f}"],
        ], title="Muon step split (torch.profiler over the real steps)")


def key_ratios(res: dict[str, dict[str, Any]]) -> None:
    print("\nKey ratios")
    for name, r in res.items():
        (lo, hi), target = r["train_efficiency_range"], ""
        if name == "sgd":
            target = f" (target >= {TARGET_TRAIN:.0%}: {verdict(r['train_efficiency'], TARGET_TRAIN)})"
        print(f"  {name} training FLOP/s / matmul: {r['train_efficiency']:.0%}, the median of "
              f"{len(r['rounds'])} rounds ({lo:.0%}-{hi:.0%}){target}")
        print(f"  {name} evaluation FLOP/s / matmul: {r['eval_efficiency']:.0%} "
              f"(target >= {TARGET_EVAL:.0%}: {verdict(r['eval_efficiency'], TARGET_EVAL)})")
        if name != "muon":
            v, (lo, hi) = r["update_vs_floor"], r["update_vs_floor_range"]
            alone = next(iter(r["kernels"].values()))["vs_warm_floor"]
            print(f"  {name} update, the fastest in the steps / its memory-traffic floor: {v:.2f}x ({lo:.2f}-"
                  f"{hi:.2f}x) (target <= {TARGET_UPDATE}x: {verdict(v, TARGET_UPDATE, False)}); alone / "
                  f"the warm floor: {alone:.2f}x")
        else:
            v, (lo, hi) = r["ns_vs_bf16"], r["ns_vs_bf16_range"]
            print(f"  muon Newton-Schulz / its FLOPs at the bf16 matmul rate: {v:.2f}x ({lo:.2f}-{hi:.2f}x) "
                  f"(target <= {TARGET_NS}x: {verdict(v, TARGET_NS, False)})")
        print(f"  {name} original loop / project step: {r['peer_ratio']:.2f}x "
              f"({r['peer_step_s'] * 1e3:.1f} vs {r['step_s'] * 1e3:.1f} ms)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, printed as tables; returns them as a dict."""
    device = setup(args)
    contention = Contention()
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # no profiler start/stop lines in the tables
    names = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    shapes = weight_shapes(args.width, args.depth)
    args.batch = args.batch or compose_config().trainer.batch_size
    x, y = svhn_shaped(max(min(args.eval_n, args.n), args.steps * args.batch, args.muon_steps * args.batch),
                       device)
    rates = Rates(MatmulRate(device, size=args.matmul_size),
                  MatmulRate(device, torch.bfloat16, size=args.matmul_size))
    rates.fp32.sample()
    res = {name: measure(name, args, x, y, device, rates) for name in names}
    for name, r in res.items():
        derive(name, r, rates, shapes)
    tables(res, args, rates, shapes)
    key_ratios(res)
    print(contention.report())
    return {
        "script": "train", "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args), "matmul_fp32_flops": rates.fp32.rate, "matmul_samples": rates.fp32.samples,
        "matmul_bf16_flops": rates.bf16.rate if rates.bf16.samples else None,
        "bandwidth_bytes_per_s": max(rates.bandwidth), "bandwidth_samples": rates.bandwidth,
        "optimizers": res, "contention": contention.share(),
        "targets": {"sgd_train_efficiency": TARGET_TRAIN, "eval_efficiency": TARGET_EVAL,
                    "update_vs_floor": TARGET_UPDATE, "ns_vs_bf16": TARGET_NS},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    results = run(args)
    write_json(args.json, results)
    print(f"written: {args.json}")
    return results


if __name__ == "__main__":
    main()
