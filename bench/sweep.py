"""Benchmark of a whole run: the default schedule projected from measured parts.

Three real runs of the Trainer (data=synthetic), each watched by an observer between epochs:
1. memory over ``--mem-epochs`` epochs at ``--mem-width``, every one analysed, checkpointed
   and plotted (the observer draws and times the figures); the RSS after every epoch must not
   grow by more than 1 MiB an epoch over the second half;
2. a default-sized run of one epoch and one analysis: its peak memory and measured seconds;
3. per optimizer, four epochs of ``--steps`` steps with checkpoints at 2 and 4: an epoch's
   training, and its recording and persistence with and without a checkpoint.
The default schedule (conf/schedule/paper: 100 epochs, 25 analysed and checkpointed) is then
projected per optimizer and set against its FLOP bound. bench/README.md says what each
figure is.

    python -m bench.sweep                       # CPU, defaults (about 5 minutes)
    python -m bench.sweep --no-full-run         # skip 2.; the analysis is timed on a subset
    python -m bench.sweep --device cuda
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from agop_sweep.analyze.agop import jacobian_kernels, pass_flops
from agop_sweep.analyze.layers import analyze_model, exact_matmuls
from agop_sweep.model.mlp import build_model, evaluate
from agop_sweep.run.observers import FiguresObserver
from agop_sweep.store.state import STATE_FILE
from bench.common import (
    D_IN,
    GIB,
    MIB,
    N_CLASSES,
    N_SVHN_TEST,
    Contention,
    EpochLog,
    MatmulRate,
    base_parser,
    compose_config,
    dims,
    eval_flops,
    fastest_time,
    ns_flops,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    run_trainer,
    setup,
    svhn_shaped,
    table,
    timed,
    train_flops,
    verdict,
    weight_shapes,
    write_json,
)

# Growth allowed between the settled and the last epoch of the memory check, per epoch:
# above what features.npz legitimately keeps per analysis (~0.3 MB) and allocator noise,
# below a leaked copy of the model or of a chunk buffer at the check's width.
GROWTH_LIMIT_MIB = 1.0
PART_EPOCHS, PART_CHECKPOINTS = 4, (2, 4)


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = base_parser(__doc__.splitlines()[0], "sweep")
    p.add_argument("--n-val", type=int, default=N_SVHN_TEST)
    p.add_argument("--optimizers", default="sgd,adam,muon")
    p.add_argument("--steps", type=int, default=40, help="steps of a timed epoch (scaled to n)")
    p.add_argument("--muon-steps", type=int, default=20, help="steps of a timed Muon epoch")
    p.add_argument("--eval-n", type=int, default=16384, help="samples of the timed evaluation")
    p.add_argument("--analysis-n", type=int, default=8192,
                   help="samples of the analysis timed without the full run (scaled to n)")
    p.add_argument("--full-run", action=argparse.BooleanOptionalAction, default=True,
                   help="run 2. (a default-sized epoch and analysis; about 2 minutes on a CPU)")
    p.add_argument("--mem-epochs", type=int, default=20)
    p.add_argument("--mem-width", type=int, default=256)
    return p.parse_args(argv)


class TimedFigures(FiguresObserver):
    """The run's figures as trainer.plots=live draws them (from the trainer's feature log),
    each drawing timed: live refreshes (PNG) and the final one (PNG + PDF)."""

    def __init__(self) -> None:
        super().__init__("live", None)  # type: ignore[arg-type]  # run_trainer hands it the log
        self.seconds: dict[str, list[float]] = {"png": [], "pdf": []}

    def draw(self, record: Any, run_dir: Path, formats: tuple[str, ...]) -> None:
        t0 = time.perf_counter()
        super().draw(record, run_dir, formats)
        self.seconds[formats[-1]].append(time.perf_counter() - t0)


class Memory(EpochLog):
    """Per epoch the RSS after malloc_trim and the GPU memory allocated; at the end of epoch 0
    (the data loaded, the model built) the RSS and the peak so far, then the peak marks reset."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.load: dict[str, Any] = {}

    def observe(self, event: Any, row: dict[str, Any]) -> None:
        row["rss"] = rss_bytes(trim=True)
        row["cuda"] = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        if event.epoch == 0:
            self.load = {"rss": row["rss"], "peak": peak_rss_bytes(), "reset": reset_peak_rss(self.device)}


def memory_check(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    e = args.mem_epochs
    figures, probe = TimedFigures(), Memory(device)
    run_trainer(compose_config([
        "data=synthetic", f"device={device.type}", f"model.width={args.mem_width}", "optimizer=adam",
        f"schedule.epochs={e}", f"schedule.checkpoints=[{','.join(map(str, range(e + 1)))}]",
        "trainer.plots=off"]), device, [figures, probe])  # the figures are drawn by TimedFigures
    rss = [r["rss"] for r in probe.rows]
    # The first half settles allocator pools, lazy imports and matplotlib's caches (they grow
    # in steps, e.g. when the epoch axis gets two-digit labels); a leak keeps growing after.
    settle = (len(rss) - 1) // 2
    growth = statistics.linear_regression(range(settle, len(rss)), rss[settle:]).slope  # bytes/epoch
    return {"rss": rss, "cuda": [r["cuda"] for r in probe.rows], "settle": settle, "growth": growth,
            "plots": figures.seconds["png"], "final_plots": figures.seconds["pdf"]}


def full_run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    probe = Memory(device)
    run_trainer(compose_config([
        "data=synthetic", f"device={device.type}", f"model.width={args.width}", f"model.depth={args.depth}",
        f"data.n_train={args.n}", f"data.n_val={args.n_val}", "optimizer=sgd", "schedule.epochs=1",
        "schedule.checkpoints=[1]"]), device, [probe])
    doc = probe.document
    out = {
        "load_rss": probe.load["rss"], "load_peak": probe.load["peak"], "exact": probe.load["reset"],
        "run_peak": peak_rss_bytes(),
        "epoch0": doc["epochs"][0]["seconds"],  # full train + val evaluation
        "train": doc["epochs"][1]["train_seconds"],
        "analysis": doc["analysis"][0]["seconds"],
        "persist": [r["persist"] for r in probe.rows if r["persist"] is not None],
    }
    if device.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated(device)
    return out


def config(name: str, args: argparse.Namespace, device: torch.device, steps: int = 1) -> DictConfig:
    """Part 3.'s run for ``name``: ``steps`` minibatches an epoch, no analysis, no figures."""
    ns = ["optimizer.ns_dtype=bf16"] if name == "muon" else []  # its FLOP bound counts bf16 matmuls
    bs = compose_config().trainer.batch_size
    return compose_config([
        "data=synthetic", f"device={device.type}", f"optimizer={name}", *ns, f"model.width={args.width}",
        f"model.depth={args.depth}", f"data.n_train={steps * bs}", f"data.n_val={bs}", "analysis=off",
        "eval.full_train=false", "trainer.plots=off", f"schedule.epochs={PART_EPOCHS}",
        f"schedule.checkpoints=[{','.join(map(str, PART_CHECKPOINTS))}]"])


def analysis_subset(cfg: DictConfig, model: Any, x: torch.Tensor, y: torch.Tensor, n: int,
                    device: torch.device) -> float:
    """An analysis at n from one at ``len(x)`` samples: the pass scales with n, the rest does not."""
    init = [w.detach().clone() for w in model.hidden_weights()]
    t_all = timed(lambda: analyze_model(model, init, x, y, cfg.analysis, cfg.loss, 1, progress=False),
                  device)[0]
    with exact_matmuls():
        w = [p.detach() for p in model.hidden_weights()]
        t_pass = timed(lambda: jacobian_kernels(w, model.last.weight.detach(), model.act, model.act_grad,
                                                x, y, chunk_size=cfg.analysis.chunk_size), device)[0]
    return t_pass * n / x.shape[0] + max(0.0, t_all - t_pass)


def run_flops(args: argparse.Namespace, epochs: int, analysed: int, train_evals: int,
              batch: int, muon: dict[str, Any] | None) -> dict[str, float]:
    """Exact matmul FLOPs of one scheduled run: training, evaluation, the analysis passes
    (float32), and for Muon the Newton-Schulz matmuls (bf16)."""
    shapes = weight_shapes(args.width, args.depth)
    per_sample = train_flops(shapes, 1)["total"]
    out = {
        "training": epochs * args.n * per_sample,
        "evaluation": eval_flops(shapes, train_evals * args.n + (epochs + 1) * args.n_val),
        "analysis": analysed * pass_flops(dims(args.width, args.depth), N_CLASSES, args.n)["total"],
        "newton_schulz": 0.0,
    }
    if muon is not None:
        per_step = sum(ns_flops(s, muon["ns_steps"]) for s in shapes)
        out["newton_schulz"] = epochs * math.ceil(args.n / batch) * per_step
    return out


def measure_parts(args: argparse.Namespace, device: torch.device,
                  full: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], float, float]:
    """3.: per optimizer an epoch from timed steps and the persistence of an epoch with and
    without a checkpoint; once, the evaluation per sample and one analysis (from 2. when it
    ran, else from a subset)."""
    parts: dict[str, dict[str, Any]] = {}
    for name in [s.strip() for s in args.optimizers.split(",") if s.strip()]:
        steps = args.muon_steps if name == "muon" else args.steps
        cfg, log = config(name, args, device, steps), EpochLog()
        run_trainer(cfg, device, [log])
        rows, bs = log.rows, cfg.trainer.batch_size
        state = min(r["persist"] for r in rows[1:] if r["epoch"] not in PART_CHECKPOINTS)
        ckpt = max(0.0, min(r["persist"] for r in rows if r["epoch"] in PART_CHECKPOINTS) - state)
        n_steps = math.ceil(args.n / bs)
        parts[name] = {"train": min(r["train_seconds"] for r in rows[2:]) / steps * n_steps, "steps": steps,
                       "epoch_steps": n_steps, "ckpt": ckpt, "state": state, "batch": bs,
                       "ckpt_bytes": log.sizes[log.document["checkpoints"][str(PART_EPOCHS)]],
                       "state_bytes": log.sizes[STATE_FILE],
                       "ns_steps": cfg.optimizer.get("ns_steps") if name == "muon" else None}
    cfg = config("sgd", args, device)
    eval_n = min(args.eval_n, args.n)
    x, y = svhn_shaped(max(eval_n, min(args.analysis_n, args.n)), device)
    torch.manual_seed(cfg.seed)
    model = build_model(D_IN, args.width, args.depth, N_CLASSES, cfg.model.act).to(device).eval()
    eval_s = fastest_time(lambda: evaluate(model, x[:eval_n], y[:eval_n], cfg.loss, cfg.eval.batch_size),
                          device, repeats=3)
    if full is not None:
        analysis_s = full["analysis"]
    else:
        n_sub = min(args.analysis_n, args.n)
        analysis_s = analysis_subset(compose_config(), model, x[:n_sub], y[:n_sub], args.n, device)
    return parts, eval_s / eval_n, analysis_s


@dataclass
class Schedule:
    """What the default schedule does, from the composed config."""

    epochs: int
    analysed: int  # analysed and checkpointed epochs
    train_evals: int  # full-train evaluations on the epochs that are not analysed

    @classmethod
    def default(cls) -> Schedule:
        cfg = compose_config()
        epochs, analysed = cfg.schedule.epochs, len(set(cfg.schedule.checkpoints))
        evals = (epochs + 1 - analysed) if cfg.eval.full_train else int(0 not in cfg.schedule.checkpoints)
        return cls(epochs, analysed, evals)


def project(args: argparse.Namespace, sched: Schedule, parts: dict[str, dict[str, Any]], mem: dict[str, Any],
            eval_per_sample: float, analysis_s: float) -> dict[str, tuple[float, dict[str, float]]]:
    """The projected run per optimizer (total seconds, and per part), printed as a table."""
    # With 1.'s epochs of history; trainer.plots=live: a PNG refresh after every analysed epoch
    # but the last, then PNG + PDF once at the end.
    plot_s = statistics.median(mem["plots"]) if mem["plots"] else 0.0
    final_plot_s = mem["final_plots"][-1] if mem["final_plots"] else 0.0
    rows, totals = [], {}
    for name, p in parts.items():
        t = {
            "training": sched.epochs * p["train"],
            "evaluation": eval_per_sample * (sched.train_evals * args.n + (sched.epochs + 1) * args.n_val),
            "analysis": sched.analysed * analysis_s,
            "checkpoint I/O": sched.analysed * p["ckpt"] + (sched.epochs + 1) * p["state"],
            "figures": (sched.analysed - 1) * plot_s + final_plot_s,
        }
        total = sum(t.values())
        totals[name] = (total, t)
        rows.append([name, f"{total / 3600:.2f}"] + [f"{v / 3600:.2f} ({v / total:.0%})" for v in t.values()])
    table(["optimizer", "total h", *next(iter(totals.values()))[1].keys()], rows,
          title=f"3. Projected default schedule: {sched.epochs} epochs, {sched.analysed} analyses and "
                f"checkpoints, n = {args.n:,} + {args.n_val:,} val")
    timed_steps = "/".join(str(int(p["steps"])) for p in parts.values())
    print(f"training: the Trainer's epochs of {timed_steps} steps (the fastest of 3) scaled to "
          f"{next(iter(parts.values()))['epoch_steps']} steps; evaluation: evaluate, "
          f"{eval_per_sample * 1e6:.0f} us/sample, {sched.train_evals} full train + {sched.epochs + 1} val "
          f"passes; analysis: {analysis_s:.1f} s each ("
          + ("measured in 2." if args.full_run else f"{args.analysis_n:,} samples, pass scaled to n") + "); "
          f"checkpoint I/O: {sched.analysed} checkpoints + {sched.epochs + 1} epochs' state.pt and "
          f"results.json; "
          f"figures: {sched.analysed - 1} PNG refreshes at {plot_s:.1f} s and PNG + PDF at the end, "
          f"{final_plot_s:.1f} s.")
    table(["optimizer", "epoch s", "checkpoint s", "checkpoint MB", "state + record s", "state MB"], [
        [n, f"{p['train']:.1f}", f"{p['ckpt']:.2f}", f"{p['ckpt_bytes'] / 1e6:.0f}", f"{p['state']:.2f}",
         f"{p['state_bytes'] / 1e6:.0f}"] for n, p in parts.items()], title="Measured parts")
    return totals


def flop_bounds(args: argparse.Namespace, sched: Schedule, parts: dict[str, dict[str, Any]],
                totals: dict[str, tuple[float, dict[str, float]]], rate: MatmulRate,
                bf16: MatmulRate) -> dict[str, dict[str, Any]]:
    """The projected runs against their exact matmul FLOPs at this machine's rates."""
    rows, bounds = [], {}
    for name, p in parts.items():
        fl = run_flops(args, sched.epochs, sched.analysed, sched.train_evals, p["batch"],
                       {"ns_steps": p["ns_steps"]} if p["ns_steps"] else None)
        fp32 = fl["training"] + fl["evaluation"] + fl["analysis"]
        bound = fp32 / rate.rate + fl["newton_schulz"] / bf16.rate
        projected = totals[name][0]
        bounds[name] = {"flops": fl, "bound_seconds": bound, "projected_seconds": projected,
                        "of_bound": bound / projected}
        rows.append([name] + [f"{v / 1e12:.0f}" for v in fl.values()]
                    + [f"{bound / 3600:.2f}", f"{projected / 3600:.2f}", f"{bound / projected:.0%}"])
    table(["optimizer", "training TFLOP", "evaluation TFLOP", "analysis TFLOP", "Newton-Schulz TFLOP",
           "bound h", "projected h", "bound / projected"], rows,
          title="FLOP bound of the projected run: exact matmul FLOPs at this machine's matmul rates")
    print(f"fp32 work at the {rate.describe()}; Newton-Schulz (bf16) at the {bf16.describe()}. "
          f"Not counted: the analysis's float64 per-layer work (eigendecompositions), figures, I/O.")
    return bounds


def key_numbers(args: argparse.Namespace, totals: dict[str, tuple[float, dict[str, float]]],
                full: dict[str, Any] | None, mem: dict[str, Any], bounds: dict[str, dict[str, Any]]) -> None:
    print("\nKey numbers")
    for name, (total, t) in totals.items():
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in t.items())
        print(f"  {name}: {total / 3600:.1f} h per run; {shares}")
    if full is not None:
        exact = "" if full["exact"] else " (upper bound: the peak mark could not be reset)"
        print(f"  peak RSS of a default-sized run: {full['run_peak'] / GIB:.2f} GiB after epoch 0 "
              f"({full['load_rss'] / GIB:.2f} GiB resident then, the data loaded and the model built; the "
              f"peak until then, the synthetic generator's while loading, {full['load_peak'] / GIB:.2f} GiB)"
              f"{exact}")
        if "cuda_peak" in full:
            print(f"  peak GPU memory of a default-sized run: {full['cuda_peak'] / GIB:.2f} GiB")
    settled = mem["rss"][mem["settle"]] / MIB
    print(f"  memory over {args.mem_epochs} epochs: {settled:.0f} MiB at epoch {mem['settle']} -> "
          f"{mem['rss'][-1] / MIB:.0f} MiB at epoch {args.mem_epochs}, {mem['growth'] / MIB:+.2f} MiB/epoch "
          f"(least-squares slope over epochs {mem['settle']}-{args.mem_epochs}, RSS after malloc_trim) "
          f"(limit {GROWTH_LIMIT_MIB} MiB/epoch: {verdict(mem['growth'] / MIB, GROWTH_LIMIT_MIB, False)})")
    for name, b in bounds.items():
        print(f"  {name}: the FLOP bound is {b['of_bound']:.0%} of the projected run "
              f"({b['bound_seconds'] / 3600:.2f} h of {b['projected_seconds'] / 3600:.2f} h)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = setup(args)
    contention = Contention()
    rate = MatmulRate(device, size=args.matmul_size)
    bf16 = MatmulRate(device, torch.bfloat16, size=min(1024, args.matmul_size))  # Muon's matrices
    rate.sample()

    mem = memory_check(args, device)  # 1. memory over a run at small width
    gc.collect()
    table(["epoch", "RSS MiB", "GPU allocated MiB"],
          [[i, f"{r / MIB:.1f}", f"{c / MIB:.1f}" if device.type == "cuda" else "-"]
           for i, (r, c) in enumerate(zip(mem["rss"], mem["cuda"], strict=True))],
          title=f"1. RSS after every epoch: the Trainer, data=synthetic, width {args.mem_width}, "
                f"{args.mem_epochs} epochs, every epoch analysed, checkpointed and plotted")
    full = full_run(args, device) if args.full_run else None  # 2. a default-sized run
    gc.collect()
    parts, eval_per_sample, analysis_s = measure_parts(args, device, full)  # 3. the parts
    for _ in range(2):
        rate.sample()
        bf16.sample()

    sched = Schedule.default()
    totals = project(args, sched, parts, mem, eval_per_sample, analysis_s)
    if full is not None:
        cross = f" (projected from steps above: {parts['sgd']['train']:.1f} s)" if "sgd" in parts else ""
        print(f"2. default-sized run (sgd, 1 epoch, 1 analysis) measured: train epoch {full['train']:.1f} s"
              f"{cross}, epoch-0 evaluation (train + val) {full['epoch0']:.1f} s, analysis "
              f"{full['analysis']:.1f} s, recording and persisting epoch 1 "
              f"{', '.join(f'{s:.1f}' for s in full['persist'])} s")
    bounds = flop_bounds(args, sched, parts, totals, rate, bf16)
    key_numbers(args, totals, full, mem, bounds)
    print(contention.report())
    results = {
        "script": "sweep", "device": str(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args), "matmul_fp32_flops": rate.rate, "matmul_bf16_flops": bf16.rate,
        "projected": {name: {"total_seconds": total, **parts_t} for name, (total, parts_t) in totals.items()},
        "parts": parts, "bounds": bounds, "analysis_seconds": analysis_s,
        "eval_seconds_per_sample": eval_per_sample,
        "memory": {k: mem[k] for k in ("rss", "growth", "settle")},
        "full_run": full, "contention": contention.share(),
    }
    write_json(args.json, results)
    print(f"written: {args.json}")
    return results


if __name__ == "__main__":
    main()
