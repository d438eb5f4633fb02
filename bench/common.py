"""Shared helpers of the benchmarks: timing, reference matmul rates, memory, tables.

The benchmarks run on shared machines, where other processes only ever add time: every
timing is the fastest of several repeats, every efficiency is a ratio to the fastest sample
of a plain matmul timed in the same process around the same time, and every script reports
the CPU share other processes took while it ran.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

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


class MatmulRate:
    """The FLOP/s of a plain (size x size) @ (size x size) matmul, sampled repeatedly.

    Take :meth:`sample` before and after (or between) the phases being measured; the fastest
    sample is the rate that efficiencies are relative to (each sample is a median of a few
    products), so contention while sampling cannot make an efficiency look better.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, size: int = 4096):
        self.device, self.dtype, self.size = device, dtype, size
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(size, size, generator=g).to(device, dtype)
        self.b = torch.randn(size, size, generator=g).to(device, dtype)
        self.samples: list[float] = []
        self.a @ self.b  # warm up (library init, page faults)

    def sample(self, repeats: int | None = None) -> float:
        if repeats is None:  # about as long for sizes 1024..4096: 3 products at 4096
            repeats = max(3, min(192, 3 * (4096 // self.size) ** 3))
        t = median_time(lambda: self.a @ self.b, self.device, repeats=repeats, warmup=0)
        rate = 2 * self.size**3 / t
        self.samples.append(rate)
        return rate

    @property
    def rate(self) -> float:
        if not self.samples:
            self.sample()
        return max(self.samples)

    def describe(self) -> str:
        lo, hi = min(self.samples), max(self.samples)
        name = str(self.dtype).removeprefix("torch.")
        return (f"{name} matmul {self.size}^3: {self.rate / 1e9:.0f} GFLOP/s, the fastest of "
                f"{len(self.samples)} samples (range {lo / 1e9:.0f}-{hi / 1e9:.0f})")


def compose_config(overrides: Sequence[str] = ()) -> Any:
    """The project's full config as ``python -m agop_sweep <overrides>`` composes it."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from agop_sweep.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(version_base="1.3", config_module="agop_sweep.conf"):
        return compose("config", overrides=list(overrides))


def stream_rate(device: torch.device, mib: int | None = None) -> float:
    """Memory bandwidth in bytes/s of a += b on ``mib`` MiB float32 arrays (default 256 on a
    CPU, far past its caches; 1024 on a GPU): 12 bytes per element (a and b read, a written
    in place), the access pattern of an optimizer update. (An out-of-place c = a + b also
    reads c's cache lines before writing them on most CPUs, so counting 12 bytes for it would
    understate the bandwidth by up to a quarter.) Freshly allocated arrays stream slower
    until their pages settle, so the fastest of 7 runs after a warm-up is taken."""
    if mib is None:
        mib = 1024 if device.type == "cuda" else 256
    n = mib * 2**20 // 4
    a, b = (torch.rand(n, device=device) for _ in range(2))
    t = fastest_time(lambda: a.add_(b), device, repeats=7)
    return 3 * 4 * n / t


def tensor_stream(shapes: Sequence[Sequence[int]], arrays: int,
                  device: torch.device) -> tuple[Callable[[], None], int]:
    """a += b over tensors of the given shapes, ``arrays // 2`` pairs per shape, and the
    bytes it moves: the working set of an update that touches ``arrays`` float32 tensors per
    parameter, at the same per-tensor granularity. Repeated, the caches stay warm: the
    fastest the same bytes can stream where they partly fit in cache."""
    pairs = [(torch.rand(*s, device=device), torch.rand(*s, device=device))
             for s in shapes for _ in range(max(1, arrays // 2))]

    def stream() -> None:
        for a, b in pairs:
            a.add_(b)

    return stream, sum(12 * a.numel() for a, _ in pairs)


# -- memory ------------------------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss_bytes()


def trimmed_rss_bytes() -> int:
    """RSS after glibc's malloc_trim returns the allocator's free pages to the system (where
    there is glibc): what live allocations hold, without the allocator's cached pages, which
    come and go by tens of MiB between epochs and would hide or fake a leak."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):  # not glibc
            ctypes.CDLL(name).malloc_trim(0)
    return rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since start or the last :func:`reset_peak_rss`)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict that gets, on exit: ``rss_before``, ``rss_peak`` and ``rss_delta`` (bytes;
    the delta is the peak over the RSS at entry), and on CUDA ``cuda_before``/``cuda_peak``/
    ``cuda_delta`` (allocated tensor bytes). ``rss_exact`` is False where the peak mark could
    not be reset, so the delta is then an upper bound."""
    out: dict[str, float] = {}
    exact = reset_peak_rss()
    out["rss_before"] = rss_bytes()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        out["cuda_before"] = torch.cuda.memory_allocated(device)
    try:
        yield out
    finally:
        if device.type == "cuda":
            sync(device)
            out["cuda_peak"] = torch.cuda.max_memory_allocated(device)
            out["cuda_delta"] = out["cuda_peak"] - out["cuda_before"]
        out["rss_peak"] = peak_rss_bytes()
        out["rss_delta"] = out["rss_peak"] - out["rss_before"]
        out["rss_exact"] = exact


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


# -- exact FLOP counts -------------------------------------------------------------------
#
# Matmul FLOPs (2 per multiply-add) of what each code path performs; elementwise work
# (activations, masks, losses, optimizer updates) is not counted: it is memory-bound and
# under 0.1 % of the matmul FLOPs here. MatmulFlops counts the same thing at run time, from
# the aten matmuls dispatched, and tests/test_bench.py checks every formula against it.


def train_flops(shapes: Sequence[tuple[int, int]], batch: int) -> dict[str, int]:
    """Matmul FLOPs of one training step (forward, loss, backward) of the bias-free MLP with
    weights of ``shapes`` (d_out, d_in), forward order, at ``batch`` samples.

    forward: 2 b d_in d_out per layer; backward: the weight gradient (2 b d_in d_out) of
    every layer and the input gradient (2 b d_in d_out) of every layer but the first: the
    input does not require grad, so autograd never computes d loss / d x.
    """
    macs = [o * i for o, i in shapes]
    out = {"forward": 2 * batch * sum(macs), "weight_grads": 2 * batch * sum(macs),
           "input_grads": 2 * batch * sum(macs[1:])}
    out["total"] = sum(out.values())
    out["naive_6x"] = 6 * batch * sum(macs)  # the usual 6 x params x batch count, for comparison
    return out


def eval_flops(shapes: Sequence[tuple[int, int]], n: int) -> int:
    """Matmul FLOPs of evaluating ``n`` samples (forward only)."""
    return 2 * n * sum(o * i for o, i in shapes)


def ns_flops(shape: Sequence[int], steps: int) -> int:
    """Matmul FLOPs of torch.optim.Muon's Newton-Schulz on one (rows, cols) matrix.

    torch/optim/_muon.py works on X (m, k), m = min(rows, cols) (tall matrices transposed);
    each of the ``steps`` iterations is gram = X X^T (2 m^2 k), addmm(gram, gram, gram)
    (2 m^3) and addmm(X, update, X) (2 m^2 k).
    """
    m, k = min(shape), max(shape)
    return steps * (4 * m * m * k + 2 * m**3)


class MatmulFlops(TorchDispatchMode):
    """Counts the matmul FLOPs that are actually dispatched (mm, addmm, bmm, baddbmm, and
    the vector forms), under autograd and torch.func transforms alike; ``by_op`` splits them.

    torch.utils.flop_counter.FlopCounterMode does the same for plain autograd but cannot run
    under torch.func.jacrev (its module hooks break autograd.grad), which the reference uses.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.by_op: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        op = func._overloadpacket
        flops = 0
        if op in (aten.mm, aten.bmm):
            a, b = args[0], args[1]
            flops = 2 * a.numel() * b.shape[-1]
        elif op in (aten.addmm, aten.baddbmm):
            a, b = args[1], args[2]
            flops = 2 * a.numel() * b.shape[-1]
        elif op in (aten.mv, aten.addmv, aten.dot, aten.vdot):
            a = args[1] if op is aten.addmv else args[0]
            flops = 2 * a.numel()
        if flops:
            self.total += flops
            self.by_op[str(op)] = self.by_op.get(str(op), 0) + flops
        return out


# -- the project's training code, driven piece by piece ----------------------------------


def dataset(x: torch.Tensor, y: torch.Tensor, n: int, n_val: int = 0) -> Any:
    """An agop_sweep Dataset of the first ``n`` samples (val: the next ``n_val``)."""
    from agop_sweep.data import Dataset

    return Dataset("svhn", x[:n], y[:n], x[n : n + n_val], y[n : n + n_val], N_CLASSES, (3, 32, 32))


class TrainerHarness:
    """A real agop_sweep Trainer (config ``cfg``) whose pieces are timed one at a time:
    Trainer.train_epoch over a few steps, evaluate.evaluate, checkpoint and state writes."""

    def __init__(self, cfg: Any, x: torch.Tensor, y: torch.Tensor, device: torch.device):
        import tempfile

        from agop_sweep.device import Placement, set_precision
        from agop_sweep.train import Trainer

        set_precision(cfg.trainer.precision)  # as the app does for every job
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
        from agop_sweep.preemption import PreemptionGuard

        data = dataset(self.x, self.y, steps * self.bs)
        progress = self.trainer.new_epoch(1, data)
        return timed(lambda: self.trainer.train_epoch(data, progress, PreemptionGuard()), self.device)[0]

    def gradient(self, steps: int, repeats: int = 3) -> float:
        """Seconds of ``steps`` forward + loss + backward passes alone (no optimizer update)."""
        from agop_sweep.model import loss_fn

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
        from agop_sweep.evaluate import evaluate

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
        from agop_sweep.resume import STATE_FILE

        t = self.trainer
        t.start(dataset(self.x, self.y, self.bs), None)  # a fresh record, as a new run has
        seconds = median_time(lambda: t.save_state(1, None), self.device, repeats=repeats)
        return seconds, (self.run_dir / STATE_FILE).stat().st_size
