"""What optimizer.ns_dtype changes: Muon's Newton-Schulz in bf16 (torch's and the original's)
against fp32, both against a float64 Newton-Schulz, over the same training steps.

For torch.optim.Muon (``optimizer=muon``) and the original script's Muon (``muon_seed``):
the same initial weights and minibatches, ``--steps`` steps with the orthogonalisation in
bf16, fp32 and float64. Reported: each dtype's distance from the float64 run (weights after
the last step, relative to how far the float64 run moved them; the loss at every step), the
error of one orthogonalisation against float64 on the first step's update, and the time of a
step in each dtype on this device (where bf16 is emulated, as on AVX2 CPUs, its steps are
the slow ones).

    python -m bench.ns_dtype                         # digits, width 256, depth 5, 20 steps
    python -m bench.ns_dtype --width 1024 --steps 5
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch

from agop_sweep.data.datasets import load_dataset
from agop_sweep.model.mlp import build_model, loss_fn
from agop_sweep.model.muon_seed import MuonSeed, orthogonalize
from agop_sweep.model.ns_precision import bf16_speed
from agop_sweep.model.optim import Muon, zeropower
from bench.common import OUT, Contention, compose_config, setup, table, write_json

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--json", default=str(OUT / "ns_dtype.json"), metavar="PATH",
                   help="the JSON file every figure is written to (default: %(default)s)")
    return p.parse_args(argv)


def _optimizer(name: str, params: list[torch.nn.Parameter], dtype: torch.dtype) -> Any:
    """The optimizer with its Newton-Schulz forced to ``dtype`` (float64 included)."""
    if name == "muon":
        opt = Muon(params, ns_dtype="fp32", lr=0.01, momentum=0.95, weight_decay=0.0)
        opt.step = lambda: opt._step_in(dtype)  # type: ignore[method-assign]
        return opt
    opt = MuonSeed(params, lr=0.01)
    opt.orthogonalize = lambda u, steps, eps, _dtype: orthogonalize(u, steps, eps, dtype)
    return opt


def trajectory(name: str, dtype: torch.dtype, args: argparse.Namespace, data: Any,
               device: torch.device) -> dict[str, Any]:
    torch.manual_seed(1717)
    model = build_model(data.n_features, args.width, args.depth, data.n_classes, "relu").to(device)
    start = [p.detach().clone() for p in model.parameters()]
    opt = _optimizer(name, list(model.parameters()), dtype)
    order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(0)).to(device)
    losses, seconds = [], []
    for step in range(args.steps):
        idx = order[(step * args.batch) % data.n_train:][: args.batch]
        loss = loss_fn("mse", model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t = time.perf_counter()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t)
        losses.append(loss.item())
    return {"weights": [p.detach().clone() for p in model.parameters()], "start": start,
            "losses": losses, "step_s": min(seconds)}


def one_call_errors(args: argparse.Namespace, data: Any) -> dict[str, float]:
    """Relative error of one orthogonalisation of a real first-step gradient (layer 1)."""
    torch.manual_seed(1717)
    model = build_model(data.n_features, args.width, args.depth, data.n_classes, "relu")
    loss_fn("mse", model(data.x_train[: args.batch]), data.y_train[: args.batch]).backward()
    g = model.middle[0].weight.grad
    coeffs = (3.4445, -4.7750, 2.0315)
    exact = zeropower(g.double(), coeffs, 5, 1e-7, torch.float64)
    return {k: float((zeropower(g, coeffs, 5, 1e-7, d).double() - exact).norm() / exact.norm())
            for k, d in DTYPES.items() if k != "fp64"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = setup(argparse.Namespace(threads=args.threads, device=args.device))
    contention = Contention()
    cfg = compose_config(["data=digits"])
    data = load_dataset(cfg.data, device)
    speed = bf16_speed(device.type)
    print(f"bf16 on this device: {speed.reason}")
    out: dict[str, Any] = {"one_call_error": one_call_errors(args, data), "bf16": speed.reason}
    rows = []
    for name in ("muon", "muon_seed"):
        runs = {k: trajectory(name, d, args, data, device) for k, d in DTYPES.items()}
        ref = runs["fp64"]
        moved = sum(float((w - s).norm() ** 2)
                    for w, s in zip(ref["weights"], ref["start"], strict=True)) ** 0.5
        for k in ("bf16", "fp32"):
            dist = sum(float((a - b).norm() ** 2) for a, b in
                       zip(runs[k]["weights"], ref["weights"], strict=True)) ** 0.5 / moved
            loss_gap = max(abs(a - b) / b for a, b in zip(runs[k]["losses"], ref["losses"], strict=True))
            out[f"{name}/{k}"] = {"weights_vs_fp64": dist, "max_loss_rel_vs_fp64": loss_gap,
                                  "step_s": runs[k]["step_s"], "final_loss": runs[k]["losses"][-1]}
            rows.append([name, k, f"{dist:.2e}", f"{loss_gap:.2e}", f"{runs[k]['losses'][-1]:.6f}",
                         f"{runs[k]['step_s'] * 1e3:.1f}"])
        rows.append([name, "fp64", "0", "0", f"{ref['losses'][-1]:.6f}", f"{ref['step_s'] * 1e3:.1f}"])
    table(["optimizer", "NS dtype", "|W - W_fp64| / |W_fp64 - W0|", "max loss gap", "final loss",
           "step ms"], rows, title=f"{args.steps} steps, digits, width {args.width}, depth {args.depth}, "
                                   f"batch {args.batch}")
    errs = out["one_call_error"]
    print(f"\none orthogonalisation against float64: bf16 {errs['bf16']:.2e}, fp32 {errs['fp32']:.2e}")
    share = contention.share()
    print(f"other processes' share of the CPU meanwhile: {share:.0%}" if share is not None else "")
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    out = run(args)
    write_json(args.json, out)
    print(f"written: {args.json}")
    return out


if __name__ == "__main__":
    main()
