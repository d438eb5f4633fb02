"""bench/conv.py's own correctness: its FLOP formulas (our conv AGOP pass, the papers' per-sample
vmap(jacrev) method in both variants, a training step) against the FLOPs torch dispatches as
torch.utils.flop_counter.FlopCounterMode counts them, the papers' method against the pass's
closed form, and the script's quick mode end to end (tiny sizes, seconds)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from agop_sweep.analyze.conv import conv_kernels
from agop_sweep.analyze.nfa import agop_from_kernel
from agop_sweep.model.cnn import CNN
from agop_sweep.model.mlp import loss_fn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench/ is not installed: it runs from the repository root
bench_conv = importlib.import_module("bench.conv")

# (image, channels, act, stride, pool, head, fc): the bench's shape, and every other path of the pass
CASES = {
    "bench": ((3, 8, 8), [4, 6], "relu", 1, "max", "gap", []),
    "stride2-avg-flatten-fc": ((3, 16, 16), [4, 6], "tanh", 2, "avg", "flatten", [12]),
    "nopool-gelu-fc2": ((2, 6, 6), [3, 5], "gelu", 1, "none", "gap", [7, 9]),
}


def make(case: str, dtype: torch.dtype = torch.float32) -> tuple[CNN, torch.Tensor, torch.Tensor]:
    image, channels, act, stride, pool, head, fc = CASES[case]
    torch.manual_seed(0)
    model = CNN(image, channels, 10, act, kernel=3, stride=stride, pool=pool, fc=fc, head=head).to(dtype)
    x = torch.rand(3, *image, dtype=dtype)
    return model.eval(), x, torch.randint(0, 10, (3,))


def torch_counts(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("case", list(CASES))
def test_flop_formulas_are_what_torch_dispatches(case: str) -> None:
    model, x, y = make(case)
    n = len(x)
    counted = torch_counts(lambda: conv_kernels(model, x, chunk_size=2))
    assert counted == bench_conv.pass_flops(model, n)["total"]
    for layer in range(len(model.convs)):
        for variant in bench_conv.VARIANTS:
            got = torch_counts(lambda layer=layer, variant=variant:
                               bench_conv.papers_agop(model, x, layer, 2, variant))
            want = bench_conv.papers_flops(model, n, layer, variant)
            assert got == want["total"], (layer, variant)
            assert want["total"] == bench_conv.papers_flops(model, n, layer, "patches")["total"]
    model.train()

    def step() -> None:
        loss_fn("mse", model(x), y).backward()

    assert torch_counts(step) == bench_conv.train_flops(model, n)["total"]


def test_formulas_scale_with_the_samples() -> None:
    model, _, _ = make("bench")
    for f in (lambda k: bench_conv.pass_flops(model, k), lambda k: bench_conv.papers_flops(model, k, 1),
              lambda k: bench_conv.train_flops(model, k)):
        assert f(6)["total"] == 6 * f(1)["total"] > 0


@pytest.mark.parametrize("case", list(CASES))
def test_papers_method_agrees_with_the_pass(case: str) -> None:
    """Both variants of the papers' method compute the pass's F^T K F (float64: to rounding)."""
    model, x, _ = make(case, torch.float64)
    kernels = conv_kernels(model, x, chunk_size=2).kernels
    for layer, conv in enumerate(model.convs):
        ours = agop_from_kernel(conv.weight.detach(), kernels[layer])
        for variant in bench_conv.VARIANTS:
            theirs = bench_conv.papers_agop(model, x, layer, 2, variant)
            assert float((theirs - ours).norm() / ours.norm()) < 1e-12, (layer, variant)


def test_quick_mode_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--quick runs every phase at tiny sizes (the memory probe in its subprocess too), prints
    its tables and writes its JSON."""
    out = tmp_path / "conv.json"
    results = bench_conv.main(["--quick", "--repeats", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    for text in ("Rounds (measured)", "papers / ours", "FLOPs per sample", "Key ratios", "extra peak RSS"):
        assert text in printed
    saved = json.loads(out.read_text())
    assert saved["flop_check"]["all_equal"] is True
    assert results["flop_check"]["all_equal"] is True
    assert saved["ratio_agop"] > 0 and saved["ratio_analysis"] > 0
    assert set(saved["papers_variants"]) <= set(bench_conv.VARIANTS)
    assert max(max(v) for v in saved["rel_err_f32"].values()) < 1e-5
    assert saved["memory"]["peak_delta"] >= 0 and saved["memory"]["n"] == 16
    assert saved["seconds_at_n"]["papers"] > 0 and len(saved["rounds"]) == 1
