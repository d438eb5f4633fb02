"""What the benchmarks share: flags, timing and the CPU-contention report, exact FLOP counts,
the machine's reference rates and this process's memory, tables and JSON, and a real run of
the project's Trainer watched by observers.

The benchmarks run on shared machines, where other processes only ever add time: every
timing and every reference rate is the fastest of several samples, and every script reports
the CPU share other processes took while it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import itertools
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from agop_sweep.run.observers import EpochEnd, FiguresObserver, Observer

GIB, MIB = 2**30, 2**20
D_IN, N_CLASSES, N_SVHN_TRAIN, N_SVHN_TEST = 3072, 10, 73_257, 26_032
OUT = Path(__file__).resolve().parents[1] / "outputs" / "bench"  # where --json writes by default
aten = torch.ops.aten


# -- flags, timing, contention ----------------------------------------------------------------


def base_parser(description: str, name: str) -> argparse.ArgumentParser:
    """--device, --width, --depth, --n (training samples), --threads, --matmul-size, --json."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--n", type=int, default=N_SVHN_TRAIN, help="training samples (SVHN: 73,257)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--matmul-size", type=int, default=4096,
                   help="size of the square reference matmul whose rate efficiencies are relative to")
    p.add_argument("--json", default=str(OUT / f"{name}.json"), metavar="PATH",
                   help="the JSON file every figure is written to (default: %(default)s)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"torch {torch.__version__}, device {name}, {torch.get_num_threads()} CPU threads")
    return device


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


def fastest_time(fn: Callable[[], Any], device: torch.device, repeats: int = 5, warmup: int = 1) -> float:
    """The fastest of ``repeats`` timings: the least disturbed estimate of the work's own time."""
    for _ in range(warmup):
        fn()
    return min(timed(fn, device)[0] for _ in range(repeats))


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
    """The share of the machine's CPU time that other processes took since this was made."""

    def __init__(self) -> None:
        self.start, self.own = _cpu_ticks(), sum(os.times()[:4])

    def share(self) -> float | None:
        end, hz = _cpu_ticks(), os.sysconf("SC_CLK_TCK")
        if self.start is None or end is None:
            return None
        mine = (sum(os.times()[:4]) - self.own) * hz
        return max(0.0, end[0] - self.start[0] - mine) / max(1, end[1] - self.start[1])

    def report(self) -> str:
        share = self.share()
        if share is None:
            return "CPU use of other processes: unknown (no /proc/stat)"
        return (f"CPU use of other processes while this ran: {share:.0%} of the machine "
                f"(above ~10% the timings, two-thread ones most, are not representative)")


# -- sizes and data ---------------------------------------------------------------------------


def dims(width: int, depth: int, d_in: int = D_IN) -> list[int]:
    """[d_in, d_1, .., d_L] of the hidden layers."""
    return [d_in] + [width] * depth


def weight_shapes(width: int, depth: int, d_in: int = D_IN,
                  n_classes: int = N_CLASSES) -> list[tuple[int, int]]:
    """(d_out, d_in) of every weight matrix, readout included, in forward order."""
    return [(o, i) for i, o in itertools.pairwise(dims(width, depth, d_in))] + [(n_classes, width)]


def svhn_shaped(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n uniform [0, 1] inputs (n, 3072) and labels (n,): SVHN's shapes and range (timings do
    not depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, D_IN, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g)
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


# -- exact matmul FLOPs (2 per multiply-add; elementwise work, < 0.1 %, not counted) ------------


def train_flops(shapes: Sequence[tuple[int, int]], batch: int) -> dict[str, int]:
    """One training step of the bias-free MLP with weights of ``shapes`` (d_out, d_in): forward
    and weight gradients 2 b d_in d_out per layer, input gradients for every layer but the first
    (the input does not require grad, so autograd never computes d loss / d x)."""
    macs = [o * i for o, i in shapes]
    out = {"forward": 2 * batch * sum(macs), "weight_grads": 2 * batch * sum(macs),
           "input_grads": 2 * batch * sum(macs[1:])}
    out["total"] = sum(out.values())
    out["naive_6x"] = 6 * batch * sum(macs)  # the usual 6 x params x batch count, for comparison
    return out


def eval_flops(shapes: Sequence[tuple[int, int]], n: int) -> int:
    """Evaluating ``n`` samples (forward only)."""
    return 2 * n * sum(o * i for o, i in shapes)


def ns_flops(shape: Sequence[int], steps: int) -> int:
    """torch.optim.Muon's Newton-Schulz on one (rows, cols) matrix: on X (m, k), m = min, each
    step is X X^T (2 m^2 k), gram @ gram (2 m^3) and update @ X (2 m^2 k) (torch/optim/_muon.py)."""
    m, k = min(shape), max(shape)
    return steps * (4 * m * m * k + 2 * m**3)


class MatmulFlops(TorchDispatchMode):
    """The matmul FLOPs actually dispatched (mm, addmm, bmm, baddbmm and the vector forms),
    under autograd and torch.func alike. torch.utils.flop_counter.FlopCounterMode counts the
    same under plain autograd but fails under torch.func.jacrev, which the original's AGOP uses."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        op = func._overloadpacket
        if op in (aten.mm, aten.bmm):
            self.total += 2 * args[0].numel() * args[1].shape[-1]
        elif op in (aten.addmm, aten.baddbmm):
            self.total += 2 * args[1].numel() * args[2].shape[-1]
        elif op in (aten.mv, aten.dot, aten.vdot):
            self.total += 2 * args[0].numel()
        elif op is aten.addmv:
            self.total += 2 * args[1].numel()
        return func(*args, **(kwargs or {}))


# -- what the machine can do, and what this process holds ----------------------------------------


class MatmulRate:
    """The FLOP/s of a plain (size x size) @ (size x size) matmul, sampled around the measured
    phases; the fastest sample (each the median of a few products) is the rate."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, size: int = 4096):
        self.device, self.dtype, self.size = device, dtype, size
        g = torch.Generator().manual_seed(0)
        self.a, self.b = (torch.randn(size, size, generator=g).to(device, dtype) for _ in range(2))
        self.samples: list[float] = []
        self.a @ self.b  # warm up (library init, page faults)

    def sample(self) -> float:
        repeats = max(3, min(192, 3 * (4096 // self.size) ** 3))  # about as long for 1024..4096
        t = statistics.median(timed(lambda: self.a @ self.b, self.device)[0] for _ in range(repeats))
        self.samples.append(2 * self.size**3 / t)
        return self.samples[-1]

    @property
    def rate(self) -> float:
        return max(self.samples) if self.samples else self.sample()

    def describe(self) -> str:
        lo, hi = min(self.samples), max(self.samples)
        name = str(self.dtype).removeprefix("torch.")
        return (f"{name} matmul {self.size}^3: {self.rate / 1e9:.0f} GFLOP/s, the fastest of "
                f"{len(self.samples)} samples (range {lo / 1e9:.0f}-{hi / 1e9:.0f})")


def tensor_stream(shapes: Sequence[Sequence[int]], arrays: int,
                  device: torch.device) -> tuple[Callable[[], None], int]:
    """a += b over tensors of ``shapes``, ``arrays // 2`` pairs per shape, and the bytes it
    moves (12 per element: a and b read, a written in place, as an optimizer update does)."""
    pairs = [(torch.rand(*s, device=device), torch.rand(*s, device=device))
             for s in shapes for _ in range(max(1, arrays // 2))]

    def stream() -> None:
        for a, b in pairs:
            a.add_(b)

    return stream, sum(12 * a.numel() for a, _ in pairs)


def stream_rate(device: torch.device) -> float:
    """Memory bandwidth, bytes/s, of a += b on 256 MiB float32 arrays (1 GiB on a GPU), far
    past the caches; the fastest of 7 after a warm-up (fresh pages stream slower)."""
    stream, nbytes = tensor_stream([((1024 if device.type == "cuda" else 256) * MIB // 4,)], 2, device)
    return nbytes / fastest_time(stream, device, repeats=7)


def rss_bytes(trim: bool = False) -> int:
    """Resident set size of this process; ``trim``: after glibc's malloc_trim returns the
    allocator's free pages, which come and go by tens of MiB and would hide or fake a leak."""
    if trim and (name := ctypes.util.find_library("c")):
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since start or the last :func:`reset_peak_rss`)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss(device: torch.device) -> bool:
    """Reset the peak-RSS mark (Linux; False where that fails) and the device's peak memory."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict that gets, on exit, ``rss_delta``: the peak RSS over the RSS at entry
    (``rss_exact`` False: the peak mark could not be reset, so an upper bound), and on CUDA
    ``cuda_delta``, the same for allocated tensor bytes."""
    out: dict[str, float] = {"rss_exact": reset_peak_rss(device), "rss_before": rss_bytes()}
    cuda_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        yield out
    finally:
        if device.type == "cuda":
            sync(device)
            out["cuda_delta"] = torch.cuda.max_memory_allocated(device) - cuda_before
        out["rss_delta"] = peak_rss_bytes() - out["rss_before"]


# -- the project's Trainer, run and observed -------------------------------------------------------


class EpochLog(Observer):
    """Per epoch: its entry's seconds, and ``persist``, the seconds between the entry being
    timed and the observers being told (recording and persisting the epoch: checkpoint,
    features.npz, results.json, state.pt), from this observer's own clock: the trainer starts
    the next epoch's clock right after the observers return. Subclasses add to each row in
    :meth:`observe`. At the run's end: its record, ``document``, and the bytes of every file in
    the run dir, ``sizes``."""

    name = "bench"

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.document: dict[str, Any] = {}
        self.sizes: dict[str, int] = {}
        self._left: float | None = None

    def on_epoch_end(self, event: EpochEnd) -> None:
        arrived, entry = time.perf_counter(), event.entry
        row = {"epoch": event.epoch, "seconds": entry["seconds"], "train_seconds": entry.get("train_seconds"),
               "persist": None if self._left is None else arrived - self._left - entry["seconds"],
               "analysed": event.analysis is not None}
        self.observe(event, row)
        self.rows.append(row)
        self._left = time.perf_counter()

    def observe(self, event: EpochEnd, row: dict[str, Any]) -> None:
        pass

    def on_run_end(self, record: Any, run_dir: Path) -> None:
        self.document = record.document()
        files = (f for f in run_dir.rglob("*") if f.is_file())
        self.sizes = {str(f.relative_to(run_dir)): f.stat().st_size for f in files}


def run_trainer(cfg: Any, device: torch.device, observers: Sequence[Observer]) -> None:
    """A real run of the config ``cfg`` (from :func:`compose_config`), as the app runs it, in a
    temporary directory, watched by ``observers``."""
    from agop_sweep.config import validate
    from agop_sweep.run.device import Placement, effective_precision, set_precision
    from agop_sweep.run.trainer import Trainer

    validate(cfg)
    set_precision(effective_precision(cfg.trainer.precision, str(device)))  # as the app does
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp), Placement(str(device), torch.get_num_threads()), observers)
        for o in observers:  # a figures observer draws from the trainer's own feature log
            if isinstance(o, FiguresObserver):
                o.features = trainer.features
        trainer.run()


# -- output ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Print a plain aligned table (cells pre-formatted by the caller)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    for k, r in enumerate(cells):
        pairs = enumerate(zip(r, widths, strict=True))
        print("  ".join(c.rjust(w) if k and i else c.ljust(w) for i, (c, w) in pairs))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    return "meets target" if (value >= target if higher_is_better else value <= target) else "MISSES target"


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

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, jsonable(obj))
