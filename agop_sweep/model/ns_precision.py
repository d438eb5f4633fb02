"""In which dtype Muon's Newton-Schulz iteration runs: ``optimizer.ns_dtype``.

torch.optim.Muon and the original script's Muon orthogonalise in bfloat16, which is fast on
GPUs and on CPUs with native bf16 (AVX512-BF16, AMX) but 50-75x slower than float32 on an
ordinary AVX2 CPU, where oneDNN emulates it. ``auto`` measures the device once per process
and takes bf16 only where it is fast; ``bf16`` and ``fp32`` force a choice.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# The probe: square matmuls of this size, each dtype timed PROBE_REPEATS times after a warm-up.
# 256 keeps it cheap where bf16 is slow (about 40 ms a product on an AVX2 CPU) and still
# large enough for the matmul kernels, not the call overhead, to set the time.
PROBE_SIZE = 256
PROBE_REPEATS = 3
# bf16 counts as fast when a bf16 product takes at most this multiple of an fp32 one. Native
# bf16 runs at 0.3-2x the fp32 time; emulation at 50-75x: the threshold sits far from both.
SLOW_FACTOR = 4.0
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class Bf16Speed:
    """Whether ``device`` multiplies bfloat16 at speed, and why. ``bf16_flops``/``fp32_flops``:
    the probe's rates in FLOP/s (CPU only; None on CUDA, which is not probed)."""

    fast: bool
    reason: str
    bf16_flops: float | None = None
    fp32_flops: float | None = None

    @property
    def slowdown(self) -> float | None:
        """How many times slower a bf16 product is than an fp32 one (CPU probe only)."""
        if self.bf16_flops is None or self.fp32_flops is None:
            return None
        return self.fp32_flops / self.bf16_flops


def _probe_seconds(size: int, repeats: int) -> dict[torch.dtype, float]:
    """The fastest of ``repeats`` rounds of one (size x size) product per dtype, the dtypes
    interleaved so that a change of machine load hits both. The first products of a process
    pay for the thread pool and kernel selection: fp32 ones (cheap everywhere) absorb that."""
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(size, size, generator=gen)
    operands = {dtype: base.to(dtype) for dtype in DTYPES.values()}
    for _ in range(3):
        base @ base
    for a in operands.values():
        a @ a
    best = dict.fromkeys(operands, math.inf)
    for _ in range(repeats):
        for dtype, a in operands.items():
            start = time.perf_counter()
            a @ a
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return {dtype: max(seconds, 1e-9) for dtype, seconds in best.items()}


@functools.cache
def bf16_speed(device_type: str) -> Bf16Speed:
    """Measured once per process and device type (``cpu`` or ``cuda``)."""
    if device_type == "cuda":
        fast = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name()
        return Bf16Speed(fast, f"{name} {'has' if fast else 'has no'} native bf16")
    flops = 2 * PROBE_SIZE**3
    # On one thread: the ratio is the kernels', and a busy machine cannot stall one dtype's
    # thread team (OpenMP barriers) more than the other's.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = _probe_seconds(PROBE_SIZE, PROBE_REPEATS)
    finally:
        torch.set_num_threads(threads)
    fp32, bf16 = flops / seconds[torch.float32], flops / seconds[torch.bfloat16]
    fast = fp32 / bf16 <= SLOW_FACTOR
    return Bf16Speed(fast, f"a bf16 matmul on this CPU takes {fp32 / bf16:.1f}x the time of an fp32 one",
                     bf16, fp32)


def resolve_ns_dtype(requested: str, device_type: str) -> str:
    """``bf16`` or ``fp32``: ``requested`` itself, or for ``auto`` what the device does fast."""
    if str(requested) != "auto":
        return str(requested)
    speed = bf16_speed(device_type)
    chosen = "bf16" if speed.fast else "fp32"
    log.info("Newton-Schulz in %s (optimizer.ns_dtype=auto): %s", chosen, speed.reason)
    return chosen


def newton_schulz_flops(shapes: Iterable[tuple[int, int]], steps: int) -> int:
    """Matmul FLOPs of one orthogonalisation of each (rows, cols) matrix: per iteration the
    gram X X^T (2 m^2 k), its square (2 m^3) and the product with X (2 m^2 k), m <= k."""
    total = 0
    for rows, cols in shapes:
        m, k = min(rows, cols), max(rows, cols)
        total += steps * (4 * m * m * k + 2 * m**3)
    return total


def warn_if_slow(ns_dtype: str, device_type: str, shapes: Iterable[tuple[int, int]], steps: int,
                 steps_per_epoch: int) -> float | None:
    """Warn, with a projected time per epoch, when bf16 Newton-Schulz runs where bf16 is slow.
    Returns the projected seconds per epoch of the Newton-Schulz matmuls, None when fine."""
    if ns_dtype != "bf16" or device_type != "cpu":
        return None
    speed = bf16_speed(device_type)
    if speed.fast or speed.bf16_flops is None:
        return None
    seconds = newton_schulz_flops(shapes, steps) / speed.bf16_flops * steps_per_epoch
    log.warning("optimizer.ns_dtype=bf16 on a CPU without fast bf16 (%s): Newton-Schulz alone "
                "projects to about %s an epoch (%d steps); ns_dtype=auto or fp32 runs it in fp32",
                speed.reason, _duration(seconds), steps_per_epoch)
    return seconds


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
