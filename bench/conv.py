"""Benchmark of the conv net's AGOP: agop_sweep's exact pass against the conv-NFA papers' method.

Ours: ``agop_sweep.analyze.conv.conv_kernels`` (every conv layer's K in one chunked forward and
one backward sweep for all c outputs; AGOP = F^T K F) and the whole analysis
(``agop_sweep.analyze.layers.analyze_model``). The papers' (Beaglehole et al. 2023;
Radhakrishnan et al. 2024), written anew here: per conv layer, per-sample
``torch.func.vmap(jacrev)`` of the "patch network" (the network as a function of the layer's
input patches as ``F.unfold`` cuts them), J^T J summed over positions and samples, float32,
vmap over samples in batches. Same model, same data, one process, at CIFAR size (3x32x32,
channels [64, 128, 256], 10 classes, kernel 3, max pooling, gap head); both are timed on
subsets in rounds and scaled linearly to n = 50,000. Also: both methods' FLOPs per sample
(formulas checked against torch's FlopCounterMode), the pass's FLOP/s against a plain fp32
matmul, the analysis's extra peak memory (in a subprocess), a training step at batch 128, and
where the pass's time goes. bench/README.md says what each figure is.

    python -m bench.conv            # CIFAR size, n = 50,000 projected (~4 min on 2 cores)
    python -m bench.conv --quick    # tiny sizes, seconds: the plumbing (tests/test_bench_conv.py)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.func import jacrev, vmap
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from agop_sweep.analyze import layers
from agop_sweep.analyze.conv import conv_kernels
from agop_sweep.analyze.layers import analyze_model, exact_matmuls
from agop_sweep.analyze.nfa import agop_from_kernel
from agop_sweep.model.cnn import CNN
from agop_sweep.model.mlp import loss_fn
from agop_sweep.model.optim import build_optimizer
from bench.common import (
    GIB,
    MIB,
    OUT,
    Contention,
    MatmulRate,
    compose_config,
    peak_memory,
    table,
    timed,
    verdict,
    write_json,
)

TARGET_SPEEDUP = 20.0  # the pass at least this many times faster than the papers' method, n = 50,000
TARGET_MEMORY_GIB = 4.0  # the analysis's extra peak memory
N_CIFAR = 50_000
VARIANTS = ("patches", "preact")

# Sizes of the full benchmark and of --quick (tiny: seconds, for the test); flags override both.
FULL = {"image": [3, 32, 32], "channels": [64, 128, 256], "n": N_CIFAR, "sub_n": 256, "chunk": 256,
        "ref_n": 48, "ref_batch": 16, "repeats": 3, "train_batch": 128, "train_steps": 3,
        "matmul_size": 4096, "mem_n": 256, "check_n": 2, "profile_n": 64}
QUICK = {"image": [3, 8, 8], "channels": [4, 8], "n": 1000, "sub_n": 16, "chunk": 8,
         "ref_n": 4, "ref_batch": 2, "repeats": 2, "train_batch": 8, "train_steps": 2,
         "matmul_size": 256, "mem_n": 16, "check_n": 2, "profile_n": 8}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace("[", "").replace("]", "").split(",") if v.strip()]


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (image 3x8x8, channels [4, 8], a few samples): seconds, for the test")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--image", type=_ints, help="C,H,W of the inputs (default 3,32,32)")
    p.add_argument("--channels", type=_ints, help="conv stages (default 64,128,256)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--n", type=int, help="training samples the times are scaled to (default 50,000)")
    p.add_argument("--sub-n", type=int, help="samples our pass and analysis are timed on "
                   "(default 256: one chunk)")
    p.add_argument("--chunk", type=int, help="the pass's analysis.conv_chunk_size (default 256)")
    p.add_argument("--ref-n", type=int, help="samples the papers' method is timed on (default 48)")
    p.add_argument("--ref-batch", type=int, help="samples per vmap batch of the papers' method (default 16)")
    p.add_argument("--repeats", type=int, help="rounds of the timed phases; medians are reported (default 3)")
    p.add_argument("--train-batch", type=int, help="the training step's batch (default 128)")
    p.add_argument("--train-steps", type=int, help="training steps timed per round (default 3)")
    p.add_argument("--matmul-size", type=int, help="size of the square reference matmul (default 4096)")
    p.add_argument("--mem-n", type=int, help="samples of the memory probe's analysis "
                   "(default 256: one chunk)")
    p.add_argument("--profile-n", type=int, help="samples of the pass's profile (default 64)")
    p.add_argument("--check-n", type=int, help="samples of the FLOP check at full size (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probe (a subprocess)")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of one chunk of the pass")
    p.add_argument("--json", metavar="PATH",
                   help="where every figure is written (default outputs/bench/conv.json; "
                        "--quick: conv_quick.json)")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)  # the probe's child
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.json is None:
        args.json = str(OUT / ("conv_quick.json" if args.quick else "conv.json"))
    args.sub_n = max(1, min(args.sub_n, args.n))
    args.ref_n = max(1, min(args.ref_n, args.n))
    return args


# -- model and data -----------------------------------------------------------------------------


def make_model(args: argparse.Namespace, device: torch.device) -> tuple[CNN, list[torch.Tensor]]:
    """The bench's CNN (relu, kernel 3, max pooling, gap head, no fc), its weights moved a little
    away from the init so that the "delta" NFM variants are computed too, as in a trained model."""
    torch.manual_seed(1717)
    model = CNN(tuple(args.image), list(args.channels), args.classes, "relu", kernel=3, pool="max",
                head="gap").to(device)
    init = [w.detach().clone() for w in model.hidden_weights()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * p.abs().mean() * torch.randn_like(p))
    return model.eval(), init


def image_data(n: int, image: Sequence[int], classes: int, device: torch.device,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n uniform [0, 1] images (n, C, H, W) and labels: CIFAR's shapes and range (timings do
    not depend on the values)."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, *image, generator=g), torch.randint(0, classes, (n,), generator=g)
    return x.to(device), y.to(device)


# -- exact FLOPs (2 per multiply-add, of the convolutions and matmuls; elementwise work not counted) --


def conv_sizes(model: CNN) -> list[tuple[int, int, int]]:
    """(positions P = H_out W_out, C_out, d = C_in k^2) of every conv layer: one sample's conv
    is P C_out d multiply-adds (FlopCounterMode counts padded positions in full, as unfold does)."""
    return [(h * w, conv.c_out, conv.weight.shape[1])
            for conv, (_, h, w) in zip(model.convs, model.conv_shapes, strict=True)]


def _fc_macs(model: CNN) -> tuple[int, int]:
    """Multiply-adds per sample of the hidden fc layers and of the readout."""
    return sum(fc.weight.numel() for fc in model.fcs), model.last.weight.numel()


def pass_flops(model: CNN, n: int) -> dict[str, int]:
    """:func:`conv_kernels` over n samples: the forward (convs, fcs, readout), the input
    gradients of the c output cotangents (every fc; every conv but the first: conv2d_input),
    and the kernels G^T G (c P C_out^2 per conv, c d_out^2 per fc, in float64)."""
    convs, (fc, head) = conv_sizes(model), _fc_macs(model)
    c = model.last.weight.shape[0]
    out = {
        "forward": 2 * n * (sum(p * o * d for p, o, d in convs) + fc + head),
        "input_grads": 2 * n * c * (sum(p * o * d for p, o, d in convs[1:]) + fc),
        "kernels_f64": 2 * n * c * (sum(p * o * o for p, o, _ in convs) + sum(f.weight.shape[0] ** 2
                                                                             for f in model.fcs)),
    }
    out["total"] = sum(out.values())
    return out


def papers_flops(model: CNN, n: int, layer: int, variant: str = "patches") -> dict[str, int]:
    """The papers' method (:func:`papers_agop`) for conv layer ``layer`` over n samples.

    inputs: the forward of the convs below (no grad; for ``preact`` also the layer's own conv);
    forward: the patch network's (``patches``: its first op, the layer as patches @ F^T), the
    convs above, fcs and readout; vjp: jacrev's backward for the c basis cotangents, input
    gradients only (readout 2 c^2 d, fcs, convs above, and for ``patches`` the patches' own
    gradient G F); jf (``preact``): the same G F, outside jacrev; jtj: the sum of J^T J,
    2 c P d^2 per sample.
    """
    convs, (fc, head) = conv_sizes(model), _fc_macs(model)
    c = model.last.weight.shape[0]
    p, o, d = convs[layer]
    own, below, above = p * o * d, sum(a * b * e for a, b, e in convs[:layer]), sum(
        a * b * e for a, b, e in convs[layer + 1:])
    patches = variant == "patches"
    out = {
        "inputs": 2 * n * (below + (0 if patches else own)),
        "forward": 2 * n * (above + fc + head + (own if patches else 0)),
        "vjp": 2 * n * c * (c * model.last.weight.shape[1] + fc + above + (own if patches else 0)),
        "jf": 0 if patches else 2 * n * c * own,
        "jtj": 2 * n * c * p * d * d,
    }
    out["total"] = sum(out.values())
    return out


def train_flops(model: CNN, batch: int) -> dict[str, int]:
    """One training step: forward and weight gradients of every layer, input gradients of every
    layer but the first (the images do not require grad)."""
    convs, (fc, head) = conv_sizes(model), _fc_macs(model)
    macs = [p * o * d for p, o, d in convs]
    out = {"forward": 2 * batch * (sum(macs) + fc + head),
           "weight_grads": 2 * batch * (sum(macs) + fc + head),
           "input_grads": 2 * batch * (sum(macs[1:]) + fc + head)}
    out["total"] = sum(out.values())
    return out


def counted(fn: Callable[[], Any]) -> int:
    """The FLOPs torch dispatches while ``fn`` runs (torch.utils.flop_counter.FlopCounterMode:
    convolutions, their backward, matmuls; also under vmap and jacrev)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


# -- the papers' method, written anew ----------------------------------------------------------


def layer_input(model: CNN, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The input (b, C_in, H, W) of conv layer ``layer`` for images ``x``."""
    h = x
    for conv in model.convs[:layer]:
        h = model.pooled(model.act(conv(h)))
    return h


def above(model: CNN, layer: int, z: torch.Tensor) -> torch.Tensor:
    """The logits (c,) of one sample from conv layer ``layer``'s pre-activation z (C, H, W)."""
    h = model.pooled(model.act(z[None]))
    for conv in model.convs[layer + 1:]:
        h = model.pooled(model.act(conv(h)))
    h = model.headed(h)
    for fc in model.fcs:
        h = model.act(fc(h))
    return model.last(h)[0]


def patch_network(model: CNN, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network as a function of one sample's patches p (P, C_in k^2) of conv ``layer``:
    z = p F^T at every position, then the rest of the network; logits (c,)."""
    conv = model.convs[layer]
    _, ho, wo = model.conv_shapes[layer]

    def f(p: torch.Tensor) -> torch.Tensor:
        z = (p @ conv.weight.T).T.reshape(conv.c_out, ho, wo)
        return above(model, layer, z)

    return f


def papers_agop(model: CNN, x: torch.Tensor, layer: int, batch: int,
                variant: str = "patches") -> torch.Tensor:
    """(1/n) sum_i sum_s J_is^T J_is of conv ``layer`` over the images ``x``, J_is = df(x_i)/dp_s
    (c, C_in k^2), float32, in batches of ``batch`` samples: the layer's inputs, then

    - ``patches``: J = vmap(jacrev(patch network))(patches), the patches cut by ``F.unfold``
      with the layer's padding and stride;
    - ``preact``: G = vmap(jacrev(rest of the network))(z) at the layer's pre-activation, and
      J = G F per position (the same J; G F is the product jacrev w.r.t. the patches performs);

    and the sum of J^T J over samples, positions and the c outputs, divided by n."""
    conv = model.convs[layer]
    d = conv.weight.shape[1]
    weight = conv.weight.detach()
    total = torch.zeros(d, d, dtype=weight.dtype, device=weight.device)
    if variant == "patches":
        jac = vmap(jacrev(patch_network(model, layer)))
    else:
        jac = vmap(jacrev(lambda z: above(model, layer, z)))
    with torch.no_grad():  # jacrev differentiates inside it all the same
        for xb in torch.split(x, batch):
            h = layer_input(model, layer, xb)
            if variant == "patches":
                patches = F.unfold(h, conv.kernel, padding=conv.padding, stride=conv.stride)
                j = jac(patches.transpose(1, 2).contiguous()).reshape(-1, d)  # (b c P, d)
            else:
                g = jac(conv(h))  # (b, c, C_out, H, W)
                j = g.flatten(3).transpose(2, 3).reshape(-1, conv.c_out) @ weight  # (b c P, d)
            total += j.T @ j
    return total / x.shape[0]


def papers_layer(model: CNN, x: torch.Tensor, layer: int, batch: int, variant: str,
                 device: torch.device) -> tuple[float, torch.Tensor, float]:
    """One conv layer by the papers' method, with its one correlation (F^T F against the AGOP,
    float64): seconds, the AGOP, the correlation."""
    def one() -> tuple[torch.Tensor, float]:
        a = papers_agop(model, x, layer, batch, variant)
        w = model.convs[layer].weight.detach().double()
        nfm, g = (w.T @ w).reshape(-1), a.double().reshape(-1)
        return a, float(nfm @ g / (nfm.norm() * g.norm()))

    t, (a, corr) = timed(one, device)
    return t, a, corr


# -- measurements -----------------------------------------------------------------------------------


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def flop_check(model: CNN, x: torch.Tensor, y: torch.Tensor, opt_cfg: Any, check_n: int) -> dict[str, Any]:
    """Each formula against the FLOPs torch dispatches (FlopCounterMode) on ``check_n`` samples:
    one chunk of the pass, the papers' method per layer in both variants (batch 1), and a
    training step of a copy of the model. Per entry ``counted``, ``formula`` and ``equal``."""
    xs, ys = x[:check_n], y[:check_n]
    out: dict[str, Any] = {}
    with exact_matmuls():
        out["pass"] = (counted(lambda: conv_kernels(model, xs, chunk_size=check_n)),
                       pass_flops(model, check_n)["total"])
        for layer in range(len(model.convs)):
            for variant in VARIANTS:
                out[f"papers_layer{layer}_{variant}"] = (
                    counted(lambda layer=layer, variant=variant: papers_agop(model, xs, layer, 1, variant)),
                    papers_flops(model, check_n, layer, variant)["total"])
    net = copy.deepcopy(model).train()
    opt = build_optimizer(opt_cfg, net)

    def step() -> None:
        opt.zero_grad()
        loss_fn("mse", net(xs), ys).backward()
        opt.step()

    out["train_step"] = (counted(step), train_flops(net, check_n)["total"])
    out = {k: {"counted": a, "formula": b, "equal": a == b} for k, (a, b) in out.items()}
    out["all_equal"] = all(v["equal"] for v in out.values())
    return out


class Rate(MatmulRate):
    """common.MatmulRate with a fixed number of products per sample (the median of ``repeats``):
    ``--quick``'s small matmul would otherwise take 192, slow to gather on a busy machine."""

    def __init__(self, device: torch.device, size: int, repeats: int = 3):
        super().__init__(device, size=size)
        self.repeats = repeats

    def sample(self) -> float:
        t = statistics.median(timed(lambda: self.a @ self.b, self.device)[0] for _ in range(self.repeats))
        self.samples.append(2 * self.size**3 / t)
        return self.samples[-1]


def float64_rate(device: torch.device, size: int) -> float:
    """FLOP/s of a float64 (size x size) matmul, the median of 3 after a warm-up: the bound of
    the pass's float64 kernel products."""
    a = torch.randn(size, size, dtype=torch.float64, device=device)
    a @ a
    return 2 * size**3 / statistics.median(timed(lambda: a @ a, device)[0] for _ in range(3))


def train_step_timer(model: CNN, x: torch.Tensor, y: torch.Tensor, opt_cfg: Any,
                     device: torch.device) -> Callable[[int], float]:
    """A copy of the model, trained with the project's SGD (forward, mse loss, backward, step) on
    one batch; the returned function times ``steps`` steps and gives the median step's seconds."""
    net = copy.deepcopy(model).train()
    opt = build_optimizer(opt_cfg, net)

    def step() -> None:
        opt.zero_grad()
        loss_fn("mse", net(x), y).backward()
        opt.step()

    for _ in range(2):
        step()  # warm-up: oneDNN's kernels, the optimizer's state
    return lambda steps: statistics.median(timed(step, device)[0] for _ in range(steps))


def profile_pass(model: CNN, x: torch.Tensor) -> list[tuple[str, float]]:
    """Where the pass spends its time on the chunk ``x`` (after the warm-up): self CPU time
    per aten op, as shares, largest first."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # no profiler start/stop lines in the tables
    with exact_matmuls(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        conv_kernels(model, x, chunk_size=len(x))
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    return sorted(((k, t / total) for k, t in events), key=lambda kv: -kv[1])


def pass_tensors(model: CNN, chunk: int) -> dict[str, float]:
    """The pass's largest tensors, GiB: G of the widest conv layer (c x chunk x C H W float32),
    and its float64 copy that the kernel product G^T G reads."""
    c = model.last.weight.shape[0]
    big = max(o * h * w for o, h, w in model.conv_shapes)
    return {"g_f32_gib": c * chunk * big * 4 / GIB, "g_f64_gib": c * chunk * big * 8 / GIB}


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """In this (fresh) process: the model and ``--mem-n`` images resident, a warm-up analysis of
    2 samples (libraries, thread pools), then ``analyze_model`` on the ``--mem-n`` samples: its
    peak RSS (the kernel's high-water mark VmHWM, reset just before through
    /proc/self/clear_refs) over the RSS before it."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, init = make_model(args, device)
    x, y = image_data(args.mem_n, args.image, args.classes, device)
    cfg = compose_config(["analysis=default", f"analysis.conv_chunk_size={args.chunk}"]).analysis
    analyze_model(model, init, x[:2], y[:2], cfg, "mse", 1, progress=False)
    with peak_memory(device) as m:
        analyze_model(model, init, x, y, cfg, "mse", 1, progress=False)
    return {"n": args.mem_n, "chunk": args.chunk, "rss_before": m["rss_before"],
            "data_bytes": x.numel() * x.element_size(), "peak_delta": m["rss_delta"],
            "peak_exact": m["rss_exact"], "cuda_delta": m.get("cuda_delta")}


def run_memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`memory_probe` in a fresh interpreter (this one's heap holds the papers' method's
    large tensors, freed but partly cached), its JSON from the last line of its output."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "bench.conv", "--memory-probe", "--device", args.device,
           "--threads", str(args.threads), "--image", ",".join(map(str, args.image)),
           "--channels", ",".join(map(str, args.channels)), "--classes", str(args.classes),
           "--chunk", str(args.chunk), "--mem-n", str(args.mem_n)]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"memory probe failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the benchmark -------------------------------------------------------------------------------


@contextlib.contextmanager
def pass_timer(seconds: list[float], device: torch.device) -> Iterator[None]:
    """Append the seconds of every ``conv_kernels`` call that ``analyze_model`` makes while
    inside: the pass's own time within the analysis, the rest being its per-layer work."""
    original = layers.conv_kernels

    def timed_pass(*a: Any, **k: Any) -> Any:
        t, out = timed(lambda: original(*a, **k), device)
        seconds.append(t)
        return out

    layers.conv_kernels = timed_pass
    try:
        yield
    finally:
        layers.conv_kernels = original


@dataclass
class Bench:
    """The model, data and configs every phase shares, and what the rounds measured."""

    args: argparse.Namespace
    device: torch.device
    model: CNN
    init: list[torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    cfg: Any
    rate: Rate
    rounds: list[dict[str, Any]] = field(default_factory=list)
    agops: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    corrs: list[float] = field(default_factory=list)
    n_metrics: int = 0


def measure_rounds(b: Bench) -> None:
    """``--repeats`` rounds, each: the whole analysis on ``--sub-n`` samples with its pass timed
    inside it, the papers' method per layer in both variants on ``--ref-n`` samples (interleaved),
    ``--train-steps`` training steps, a sample of the fp32 matmul rate, and the CPU share of
    other processes. The first round's AGOPs are kept for the agreement check."""
    args, device, model = b.args, b.device, b.model
    xs, ys, xr = b.x[: args.sub_n], b.y[: args.sub_n], b.x[: args.ref_n]
    warm = min(args.sub_n, 32)
    analyze_model(model, b.init, b.x[:warm], b.y[:warm], b.cfg.analysis, "mse", 1, progress=False)
    with exact_matmuls():
        for layer in range(len(model.convs)):
            for v in VARIANTS:
                papers_agop(model, xr[: args.ref_batch], layer, args.ref_batch, v)  # vmap/jacrev set-up
    tb = args.train_batch
    step_timer = train_step_timer(model, b.x[:tb], b.y[:tb], b.cfg.optimizer, device)
    b.rate.sample()
    for r in range(args.repeats):
        cont, inner = Contention(), []
        with pass_timer(inner, device):
            t, analysis = timed(lambda: analyze_model(model, b.init, xs, ys, b.cfg.analysis, "mse", 1,
                                                      progress=False), device)
        row: dict[str, Any] = {"round": r, "analysis_s": t, "pass_s": sum(inner), "rest_s": t - sum(inner),
                               "papers_layer_s": {v: [] for v in VARIANTS}}
        with exact_matmuls():
            for layer in range(len(model.convs)):
                for v in VARIANTS:
                    t, a, corr = papers_layer(model, xr, layer, args.ref_batch, v, device)
                    row["papers_layer_s"][v].append(t)
                    if r == 0:
                        b.agops.setdefault(v, []).append(a)
                        if v == VARIANTS[0]:
                            b.corrs.append(corr)
        row["train_step_s"] = step_timer(args.train_steps)
        row["matmul_flops"] = b.rate.sample()
        row["contention"] = cont.share()
        b.n_metrics = len(analysis.record["layers"][0]["metrics"])
        b.rounds.append(row)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _span(values: Sequence[float]) -> str:
    return f"{_median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def project(b: Bench) -> tuple[list[str], dict[str, Any]]:
    """The papers' faster variant per layer (median over the rounds), and per round the times
    at n, the ratios and the FLOP rates; returns the variants and the medians over rounds."""
    args, n, model = b.args, b.args.n, b.model
    n_layers = len(model.convs)
    variants = [min(VARIANTS, key=lambda v, layer=layer: _median([row["papers_layer_s"][v][layer]
                                                                   for row in b.rounds]))
                for layer in range(n_layers)]
    pf, tf = pass_flops(model, 1)["total"], train_flops(model, args.train_batch)["total"]
    ppf = sum(papers_flops(model, 1, layer, v)["total"] for layer, v in enumerate(variants))
    for row in b.rounds:
        row["papers_s"] = sum(row["papers_layer_s"][v][layer] for layer, v in enumerate(variants))
        per_ours, per_papers = row["pass_s"] / args.sub_n, row["papers_s"] / args.ref_n
        row["pass_n_s"] = per_ours * n
        row["analysis_n_s"] = row["pass_n_s"] + row["rest_s"]  # the per-layer work does not grow with n
        row["papers_n_s"] = per_papers * n
        row["ratio_agop"] = row["papers_n_s"] / row["pass_n_s"]
        row["ratio_analysis"] = row["papers_n_s"] / row["analysis_n_s"]
        row["pass_flops_per_s"] = pf / per_ours
        row["papers_flops_per_s"] = ppf / per_papers
        row["train_flops_per_s"] = tf / row["train_step_s"]
        for k in ("pass", "papers", "train"):
            row[f"{k}_of_mm"] = row[f"{k}_flops_per_s"] / row["matmul_flops"]
    keys = ("pass_s", "analysis_s", "rest_s", "papers_s", "pass_n_s", "analysis_n_s", "papers_n_s",
            "ratio_agop", "ratio_analysis", "pass_flops_per_s", "papers_flops_per_s", "train_flops_per_s",
            "pass_of_mm", "papers_of_mm", "train_of_mm", "train_step_s", "matmul_flops")
    med: dict[str, Any] = {k: _median([row[k] for row in b.rounds]) for k in keys}
    med["papers_layer_s_per_sample"] = {v: [_median([row["papers_layer_s"][v][layer] for row in b.rounds])
                                            / args.ref_n for layer in range(n_layers)] for v in VARIANTS}
    return variants, med


def report(b: Bench, variants: list[str], med: dict[str, Any], errs: dict[str, list[float]],
           check: dict[str, Any], rate64: float, profile: list[tuple[str, float]],
           mem: dict[str, Any] | None) -> None:
    """Print the tables."""
    args, n, model = b.args, b.args.n, b.model
    sizes = conv_sizes(model)
    table(["round", "pass s", "analysis s", "papers s", "train step s", "fp32 mm GFLOP/s", "AGOP ratio",
           "analysis ratio", "other CPU"],
          [[str(row["round"]), f"{row['pass_s']:.2f}", f"{row['analysis_s']:.2f}", f"{row['papers_s']:.2f}",
            f"{row['train_step_s']:.3f}", f"{row['matmul_flops'] / 1e9:.0f}", f"{row['ratio_agop']:.1f}x",
            f"{row['ratio_analysis']:.1f}x", "?" if row["contention"] is None else f"{row['contention']:.0%}"]
           for row in b.rounds],
          title=f"Rounds (measured): our analysis on {args.sub_n:,} samples (pass timed inside it), the "
                f"papers' method on {args.ref_n:,}, {args.train_steps} training steps at batch "
                f"{args.train_batch}; ratios at n = {n:,}")
    per = med["papers_layer_s_per_sample"]
    ppf = [papers_flops(model, 1, layer, v) for layer, v in enumerate(variants)]
    rows = []
    for layer, ((p, o, d), v) in enumerate(zip(sizes, variants, strict=True)):
        rows.append([f"conv {layer}", f"{o}x{d}", str(p), f"{per['patches'][layer] * 1e3:.0f} / "
                     f"{per['preact'][layer] * 1e3:.0f}", v, f"{per[v][layer] * n:.0f}",
                     f"{ppf[layer]['total'] / 1e9:.2f}",
                     f"{errs['patches'][layer]:.1e} / {errs['preact'][layer]:.1e}", f"{b.corrs[layer]:.3f}"])
    rows.append(["all layers", "", "", "", "", f"{med['papers_n_s']:.0f}",
                 f"{sum(q['total'] for q in ppf) / 1e9:.2f}", "", ""])
    table(["layer", "F", "positions", "ms/sample patches / preact", "faster", "s at n", "GFLOP/sample",
           "rel err vs ours", "corr F^T F"], rows,
          title=f"The papers' method per conv layer: vmap(jacrev) over samples in batches of "
                f"{args.ref_batch}, w.r.t. the patches or the pre-activation (J = G F); the faster is used; "
                f"s at n = {n:,}")
    table(["", "ours s", "papers s", "papers / ours", "target", ""], [
        ["AGOP of all conv layers", f"{med['pass_n_s']:.0f}", f"{med['papers_n_s']:.0f}",
         _span([row["ratio_agop"] for row in b.rounds]) + "x", f">= {TARGET_SPEEDUP:.0f}x",
         verdict(med["ratio_agop"], TARGET_SPEEDUP)],
        ["whole analysis", f"{med['analysis_n_s']:.0f}", f"{med['papers_n_s']:.0f}",
         _span([row["ratio_analysis"] for row in b.rounds]) + "x", "", ""],
    ], title=f"At n = {n:,}, projected: per-sample times x n (ours from {args.sub_n:,} samples, the "
             f"papers' from {args.ref_n:,}); the analysis adds its per-layer work, {med['rest_s']:.1f} s, "
             f"which does not grow with n; median (range) over {args.repeats} rounds, each ratio within "
             f"its round")
    pf, tf = pass_flops(model, 1), train_flops(model, args.train_batch)
    frows = [["ours: the pass", f"{pf['forward'] / 1e6:.1f}", f"{pf['input_grads'] / 1e6:.1f}",
              f"{pf['kernels_f64'] / 1e6:.1f} (G^T G, float64)", f"{pf['total'] / 1e6:.1f}", "", ""]]
    for layer, (q, v) in enumerate(zip(ppf, variants, strict=True)):
        frows.append([f"papers: conv {layer} ({v})", f"{(q['inputs'] + q['forward']) / 1e6:.1f}",
                      f"{(q['vjp'] + q['jf']) / 1e6:.1f}", f"{q['jtj'] / 1e6:.1f} (J^T J)",
                      f"{q['total'] / 1e6:.1f}", "",
                      f"{q['total'] / per[v][layer] / 1e9:.0f} GFLOP/s = "
                      f"{q['total'] / per[v][layer] / med['matmul_flops']:.0%} of matmul"])
    tot_p = sum(q["total"] for q in ppf)
    frows.append(["papers: all layers", "", "", "", f"{tot_p / 1e6:.1f}", f"{tot_p / pf['total']:.1f}x ours",
                  ""])
    frows.append([f"training step, batch {args.train_batch}", f"{tf['forward'] / args.train_batch / 1e6:.1f}",
                  f"{tf['input_grads'] / args.train_batch / 1e6:.1f}",
                  f"{tf['weight_grads'] / args.train_batch / 1e6:.1f} (weight grads)",
                  f"{tf['total'] / args.train_batch / 1e6:.1f}", "", ""])
    rate_rows = {"ours: the pass": "pass", "papers: all layers": "papers"}
    for r in frows:
        key = rate_rows.get(r[0], "train" if r[0].startswith("training") else None)
        if key:
            r[-1] = f"{med[f'{key}_flops_per_s'] / 1e9:.0f} GFLOP/s = {med[f'{key}_of_mm']:.0%} of matmul"
    table(["per sample, MFLOP", "forward", "input grads / vjp", "products", "total", "", "rate"], frows,
          title="FLOPs per sample (2 per multiply-add of convolutions and matmuls) and rates (median over "
                "rounds, each against its round's fp32 matmul)")
    bad = [k for k, v in check.items() if k != "all_equal" and not v["equal"]]
    print(f"formulas vs torch.utils.flop_counter.FlopCounterMode on {args.check_n} samples at full size "
          f"(the pass, the papers' method per layer and variant, a training step): "
          + ("all equal" if check["all_equal"] else "DIFFERENT: " + ", ".join(
              f"{k} counted {check[k]['counted']} formula {check[k]['formula']}" for k in bad)))
    mm = med["matmul_flops"]
    bound = (pf["total"] - pf["kernels_f64"]) / mm + pf["kernels_f64"] / rate64
    print(f"fp32 matmul {args.matmul_size}^3: {mm / 1e9:.0f} GFLOP/s (median of the rounds' samples, range "
          f"{min(b.rate.samples) / 1e9:.0f}-{max(b.rate.samples) / 1e9:.0f}); fp64 matmul "
          f"{min(2048, args.matmul_size)}^3: {rate64 / 1e9:.0f} GFLOP/s. The pass at "
          f"{med['pass_s'] / args.sub_n * 1e3:.1f} ms a sample is "
          f"{bound / (med['pass_s'] / args.sub_n):.0%} of its matmul bound (its float32 FLOPs at the fp32 "
          f"rate, G^T G at the fp64 rate)")
    if profile:
        print(f"the pass on {args.profile_n} samples, self CPU time by op: " + ", ".join(
            f"{k.removeprefix('aten::')} {s:.0%}" for k, s in profile[:8]))
    if mem is not None:
        tensors = pass_tensors(model, args.chunk)
        exact = "" if mem["peak_exact"] else " (upper bound: the peak mark could not be reset)"
        image = "x".join(map(str, args.image))
        print(f"extra peak RSS of analyze_model on {mem['n']:,} samples (chunk {args.chunk}) in a fresh "
              f"process, its data resident: {mem['peak_delta'] / GIB:.2f} GiB{exact}. The pass holds one "
              f"chunk at a time, so this does not grow with n (the data, {n:,} x {image} float32 = "
              f"{n * torch.Size(args.image).numel() * 4 / MIB:.0f} MiB, is the input, not extra). Its "
              f"largest tensors: G of the widest layer, c x chunk x C H W, {tensors['g_f32_gib']:.2f} GiB "
              f"in float32, {tensors['g_f64_gib']:.2f} GiB as the float64 copy G^T G reads")
        if mem.get("cuda_delta") is not None:
            print(f"extra peak CUDA memory of the analysis: {mem['cuda_delta'] / GIB:.2f} GiB")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement, printed as tables; returns them as a dict (also --json)."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    contention = Contention()
    print(f"torch {torch.__version__}, device {args.device} ({os.cpu_count()} cores), "
          f"{torch.get_num_threads()} threads")
    model, init = make_model(args, device)
    n = args.n
    x, y = image_data(max(args.sub_n, args.ref_n, args.train_batch, args.check_n, args.profile_n),
                      args.image, args.classes, device)
    cfg = compose_config(["analysis=default", "optimizer=sgd", f"analysis.conv_chunk_size={args.chunk}"])
    print(f"model: CNN {'x'.join(map(str, args.image))} -> conv {args.channels} (kernel 3, relu, "
          f"2x2 max pool) -> gap -> {args.classes}, no bias; conv F: "
          + ", ".join(f"{o}x{d} at {p} positions" for p, o, d in conv_sizes(model)))
    print(f"data: uniform images of that shape. Ours timed on {args.sub_n:,} samples (chunk "
          f"{args.chunk}), the papers' method on {args.ref_n:,} (vmap batches of {args.ref_batch}); both "
          f"scaled linearly to n = {n:,}, which is not run")

    check = flop_check(model, x, y, cfg.optimizer, args.check_n)
    rate = Rate(device, args.matmul_size, 3 if args.matmul_size >= 2048 else 9)
    b = Bench(args, device, model, init, x, y, cfg, rate)
    measure_rounds(b)
    variants, med = project(b)
    rate64 = float64_rate(device, min(2048, args.matmul_size))
    with exact_matmuls():  # agreement of the two methods on the papers' samples
        kp = conv_kernels(model, x[: args.ref_n], chunk_size=args.chunk)
    ours = [agop_from_kernel(conv.weight.detach().double(), k) for conv, k in zip(model.convs, kp.kernels,
                                                                                    strict=True)]
    errs = {v: [rel_err(a, o) for a, o in zip(b.agops[v], ours, strict=True)] for v in VARIANTS}
    profile = [] if args.no_profile else profile_pass(model, x[: args.profile_n])
    mem = None if args.no_memory else run_memory_probe(args)
    report(b, variants, med, errs, check, rate64, profile, mem)

    pf = pass_flops(model, 1)
    ppf = [papers_flops(model, 1, layer, v) for layer, v in enumerate(variants)]
    results = {
        "script": "conv", "device": args.device, "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "args": vars(args), "n": n, "sub_n": args.sub_n, "ref_n": args.ref_n,
        "scaled": f"ours timed on {args.sub_n} samples, the papers' method on {args.ref_n}; per-sample times "
                  f"scaled linearly to n = {n} (the analysis's per-layer work added once)",
        "conv_layers": [{"positions": p, "shape": [o, d]} for p, o, d in conv_sizes(model)],
        "papers_variants": variants, "rounds": b.rounds, "median": med,
        "ratio_agop": med["ratio_agop"], "ratio_analysis": med["ratio_analysis"],
        "seconds_at_n": {"pass": med["pass_n_s"], "analysis": med["analysis_n_s"],
                         "papers": med["papers_n_s"]},
        "flops_per_sample": {"pass": pf, "papers": ppf, "papers_total": sum(q["total"] for q in ppf),
                             "train_step": {k: v / args.train_batch
                                            for k, v in train_flops(model, args.train_batch).items()}},
        "flop_check": check, "matmul_fp32_flops": med["matmul_flops"], "matmul_fp32_samples": b.rate.samples,
        "matmul_fp64_flops": rate64, "pass_of_matmul": med["pass_of_mm"],
        "papers_of_matmul": med["papers_of_mm"], "train_step_of_matmul": med["train_of_mm"],
        "rel_err_f32": errs, "papers_corr": b.corrs, "n_metrics": b.n_metrics, "pass_profile": profile[:12],
        "memory": mem, "extra_memory_gib": None if mem is None else (
            mem["peak_delta"] if mem.get("cuda_delta") is None else mem["cuda_delta"]) / GIB,
        "pass_tensors": pass_tensors(model, args.chunk),
        "targets": {"ratio_agop": TARGET_SPEEDUP, "extra_memory_gib": TARGET_MEMORY_GIB},
    }
    key_ratios(results)
    print(contention.report())
    return results | {"contention": contention.share()}


def key_ratios(r: dict[str, Any]) -> None:
    fp, med = r["flops_per_sample"], r["median"]
    flop_ratio = fp["papers_total"] / fp["pass"]["total"]
    print("\nKey ratios")
    print(f"  papers' method / our pass, AGOP of all conv layers, n = {r['n']:,}: {r['ratio_agop']:.1f}x "
          f"(target >= {TARGET_SPEEDUP:.0f}x: {verdict(r['ratio_agop'], TARGET_SPEEDUP)})")
    if r["ratio_agop"] < TARGET_SPEEDUP:
        jtj = sum(q["jtj"] for q in fp["papers"]) / fp["papers_total"]
        ours, theirs = med["pass_of_mm"], med["papers_of_mm"]
        print(f"    why: the papers' method does {flop_ratio:.1f}x our FLOPs per sample (its J^T J in the "
              f"patch dimension C_in k^2 is {jtj:.0%} of them, a large matmul), and runs at {theirs:.0%} of "
              f"the fp32 matmul rate against our pass's {ours:.0%}: {flop_ratio:.1f} x {ours:.2f} / "
              f"{theirs:.2f} = {flop_ratio * ours / theirs:.1f}x; at equal rates it would be "
              f"{flop_ratio:.1f}x")
    print(f"  papers' method / the whole analysis (analyze_model, {r['n_metrics']} metric variants, spectra, "
          f"features): {r['ratio_analysis']:.1f}x")
    print(f"  FLOPs per sample: papers {fp['papers_total'] / 1e9:.2f} G, ours "
          f"{fp['pass']['total'] / 1e9:.2f} G ({flop_ratio:.1f}x); formulas "
          f"{'equal to' if r['flop_check']['all_equal'] else 'DIFFERENT from'} "
          f"FlopCounterMode")
    print(f"  FLOP/s / fp32 matmul FLOP/s: our pass {r['pass_of_matmul']:.0%}, the papers' method "
          f"{r['papers_of_matmul']:.0%}, a training step at batch {r['args']['train_batch']} "
          f"{r['train_step_of_matmul']:.0%}")
    print(f"  relative error, papers' method against our F^T K F (float32): "
          f"{max(max(v) for v in r['rel_err_f32'].values()):.1e}")
    if r["extra_memory_gib"] is not None:
        print(f"  extra memory of the analysis: {r['extra_memory_gib']:.2f} GiB (target < "
              f"{TARGET_MEMORY_GIB:.0f} GiB: "
              f"{verdict(r['extra_memory_gib'], TARGET_MEMORY_GIB, higher_is_better=False)})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(args)))
        return {}
    results = run(args)
    write_json(args.json, results)
    print(f"written: {args.json}")
    return results


if __name__ == "__main__":
    main()
