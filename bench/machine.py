"""What the machine can do, and what this process holds: the reference rates every
efficiency is measured against (a plain matmul, memory bandwidth) and the process's memory.

Other processes only ever add time, so every rate is the fastest of its samples.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from common import fastest_time, median_time, sync


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


def stream_rate(device: torch.device, mib: int | None = None) -> float:
    """Memory bandwidth in bytes/s of a += b on ``mib`` MiB float32 arrays (default 256 on a
    CPU, far past its caches; 1024 on a GPU): 12 bytes per element (a and b read, a written
    in place), the access pattern of an optimizer update. (An out-of-place c = a + b also
    reads c's cache lines before writing them on most CPUs, so counting 12 bytes for it would
    understate the bandwidth by up to a quarter.) Freshly allocated arrays stream slower
    until their pages settle, so the fastest of 7 runs after a warm-up is taken."""
    if mib is None:
        mib = 1024 if device.type == "cuda" else 256
    stream, nbytes = tensor_stream([(mib * 2**20 // 4,)], 2, device)
    return nbytes / fastest_time(stream, device, repeats=7)


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


@dataclass
class Rates:
    """The reference rates, sampled around the measurements; the fastest sample of each counts."""

    fp32: MatmulRate
    bf16: MatmulRate
    bf16_1024: MatmulRate  # at the size of Muon's matrices (smaller only with a smaller --matmul-size)
    bandwidth: list[float]

    @classmethod
    def new(cls, device: torch.device, size: int) -> Rates:
        return cls(MatmulRate(device, size=size), MatmulRate(device, torch.bfloat16, size=size),
                   MatmulRate(device, torch.bfloat16, size=min(1024, size)), [])

    @property
    def bw(self) -> float:
        return max(self.bandwidth)  # the fastest sample: the lowest floor

    def sample_bf16(self, times: int = 2) -> None:
        for _ in range(times):  # bf16 rates vary most: sampled around the Newton-Schulz timings
            self.bf16.sample()
            self.bf16_1024.sample()
