"""Shared helpers of the benchmarks: flags, timing, the CPU-contention report, SVHN-shaped
data, the project's config and Trainer driven piece by piece, tables and JSON.

The benchmarks run on shared machines, where other processes only ever add time: every
timing is the fastest of several repeats, and every script reports the CPU share other
processes took while it ran. Reference rates and memory are in machine.py, FLOP counts in
flops.py.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

# Runnable as `python bench/<name>.py` from the repository root without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2**30
D_IN, N_CLASSES, N_SVHN_TRAIN, N_SVHN_TEST = 3072, 10, 73_257, 26_032


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot (Linux /proc/stat), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


class Contention:
    """How much CPU other processes took while a benchmark ran: timings on a shared machine
    are only comparable when that share is small (two threads on two cores suffer most)."""

    def __init__(self) -> None:
        self.start = _cpu_ticks()
        self.own = os.times()

    def share(self) -> float | None:
        """The share of all CPUs' time that other processes used since the start; None
        where /proc/stat is not available."""
        end = _cpu_ticks()
        if self.start is None or end is None:
            return None
        busy, total = end[0] - self.start[0], end[1] - self.start[1]
        own = os.times()
        mine = (own.user + own.system + own.children_user + own.children_system
                - self.own.user - self.own.system - self.own.children_user - self.own.children_system)
        others = max(0.0, busy / os.sysconf("SC_CLK_TCK") - mine)
        return others * os.sysconf("SC_CLK_TCK") / max(1, total)

    def report(self) -> str:
        share = self.share()
        if share is None:
            return "CPU use of other processes: unknown (no /proc/stat)"
        return (f"CPU use of other processes while this ran: {share:.0%} of the machine "
                f"(above ~10% the timings, two-thread ones most, are not representative)")


def base_parser(description: str) -> argparse.ArgumentParser:
    """--device, --width, --depth, --n (training samples), --threads: the flags every script has."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--n", type=int, default=N_SVHN_TRAIN, help="training samples (SVHN: 73,257)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--matmul-size", type=int, default=4096,
                   help="size of the square reference matmul whose rate efficiencies are relative to")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results to this JSON file")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device_name(device)}, "
          f"{torch.get_num_threads()} CPU threads")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores visible)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` (device work included) and its result."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(timed(fn, device)[0] for _ in range(repeats))


def fastest_time(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """The fastest of ``repeats`` timings: other processes only ever add time, so on a shared
    machine the minimum is the least disturbed estimate of the work's own time."""
    for _ in range(warmup):
        fn()
    return min(timed(fn, device)[0] for _ in range(repeats))


def dims(width: int, depth: int, d_in: int = D_IN) -> list[int]:
    """[d_in, d_1, .., d_L] of the hidden layers."""
    return [d_in] + [width] * depth


def weight_shapes(
    width: int, depth: int, d_in: int = D_IN, n_classes: int = N_CLASSES
) -> list[tuple[int, int]]:
    """(d_out, d_in) of every weight matrix, readout included, in forward order."""
    d = dims(width, depth, d_in)
    return [(o, i) for i, o in itertools.pairwise(d)] + [(n_classes, width)]


def svhn_shaped(n: int, device: torch.device, seed: int = 0, n_classes: int = N_CLASSES,
                d_in: int = D_IN) -> tuple[torch.Tensor, torch.Tensor]:
    """n uniform [0, 1] images (n, d_in) float32 and labels (n,): SVHN's shapes and range.

    Timings do not depend on the pixel values; this is quick and needs no temporary copies.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return x.to(device), y.to(device)


def compose_config(overrides: Sequence[str] = ()) -> Any:
    """The project's full config as ``python -m agop_sweep <overrides>`` composes it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from agop_sweep.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="agop_sweep.conf"):
        return compose("config", overrides=list(overrides))


# -- output ------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Print a plain aligned table; floats as given by the caller (pre-format them)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    line = "  ".join("-" * w for w in widths)
    for k, r in enumerate(cells):
        pairs = enumerate(zip(r, widths, strict=True))
        print("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in pairs))
        if k == 0:
            print(line)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets target" if ok else "MISSES target"


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as None and tuples as lists: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as strict JSON, written atomically (the project's writer)."""
    from agop_sweep.store import atomic

    atomic.write_json(path, jsonable(obj))


# -- the project's training code, driven piece by piece ----------------------------------


def dataset(x: torch.Tensor, y: torch.Tensor, n: int, n_val: int = 0) -> Any:
    """An agop_sweep Dataset of the first ``n`` samples (val: the next ``n_val``)."""
    from agop_sweep.data.datasets import Dataset

    return Dataset("svhn", x[:n], y[:n], x[n : n + n_val], y[n : n + n_val], N_CLASSES, (3, 32, 32))


class TrainerHarness:
    """A real agop_sweep Trainer (config ``cfg``) whose pieces are timed one at a time:
    Trainer.train_epoch over a few steps, evaluate.evaluate, checkpoint and state writes."""

    def __init__(self, cfg: Any, x: torch.Tensor, y: torch.Tensor, device: torch.device):
        import tempfile

        from agop_sweep.run.device import Placement, effective_precision, set_precision
        from agop_sweep.run.trainer import Trainer

        set_precision(effective_precision(cfg.trainer.precision, str(device)))  # as the app does
        self.cfg, self.device, self.x, self.y = cfg, device, x, y
        self.bs: int = cfg.trainer.batch_size
        self._dir = tempfile.TemporaryDirectory()
        self.run_dir = Path(self._dir.name)
        self.trainer = Trainer(cfg, self.run_dir, Placement(str(device), torch.get_num_threads()))
        self.trainer.setup(dataset(x, y, self.bs))

    def close(self) -> None:
        self._dir.cleanup()

    def train_steps(self, steps: int) -> float:
        """Seconds of Trainer.train_epoch over ``steps`` minibatches (an epoch of that size)."""
        from agop_sweep.run.preemption import PreemptionGuard

        data = dataset(self.x, self.y, steps * self.bs)
        progress = self.trainer.new_epoch(1, data)
        return timed(lambda: self.trainer.train_epoch(data, progress, PreemptionGuard()), self.device)[0]

    def gradient(self, steps: int, repeats: int = 3) -> float:
        """Seconds of ``steps`` forward + loss + backward passes alone (no optimizer update)."""
        from agop_sweep.model.mlp import loss_fn

        model, cfg, bs = self.trainer.model, self.cfg, self.bs

        def run() -> None:
            for s in range(steps):
                xb, yb = self.x[s * bs : (s + 1) * bs], self.y[s * bs : (s + 1) * bs]
                with self.trainer.autocast():
                    loss = loss_fn(cfg.loss, model(xb).float(), yb)
                self.trainer.optimizer.zero_grad()
                loss.backward()

        return fastest_time(run, self.device, repeats=repeats)

    def evaluation(self, n: int, repeats: int = 3) -> float:
        """Seconds of evaluate.evaluate over ``n`` samples at eval.batch_size."""
        from agop_sweep.model.mlp import evaluate

        model = self.trainer.model
        model.eval()
        t = fastest_time(lambda: evaluate(model, self.x[:n], self.y[:n], self.cfg.loss,
                                         self.cfg.eval.batch_size), self.device, repeats=repeats)
        model.train()
        return t

    def checkpoint_write(self, repeats: int = 3) -> tuple[float, int]:
        """Seconds of one scheduled checkpoint (Trainer.save_checkpoint) and its bytes."""
        seconds = median_time(lambda: self.trainer.save_checkpoint(1), self.device, repeats=repeats)
        return seconds, (self.run_dir / self.trainer.save_checkpoint(1)).stat().st_size

    def state_write(self, repeats: int = 3) -> tuple[float, int]:
        """Seconds of the per-epoch resumable state (Trainer.save_state) and its bytes."""
        from agop_sweep.store.state import STATE_FILE

        t = self.trainer
        t.start(dataset(self.x, self.y, self.bs), None)  # a fresh record, as a new run has
        seconds = median_time(lambda: t.save_state(1, None), self.device, repeats=repeats)
        return seconds, (self.run_dir / STATE_FILE).stat().st_size
