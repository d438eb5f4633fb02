"""optimizer.ns_dtype: Newton-Schulz in bf16 (torch's and the original's) or fp32 (CPUs
without fast bf16). The fp32 path is torch's algorithm with one dtype changed: run in bf16 it
is torch.optim.Muon bit for bit; in fp32 it is closer to a float64 orthogonalisation."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz  # torch's own, to compare with
from torch.utils.flop_counter import FlopCounterMode

from agop_sweep.model import ns_precision
from agop_sweep.model.muon_seed import MuonSeed, orthogonalize
from agop_sweep.model.ns_precision import Bf16Speed, newton_schulz_flops, resolve_ns_dtype, warn_if_slow
from agop_sweep.model.optim import Muon, build_optimizer, zeropower

COEFFICIENTS = (3.4445, -4.7750, 2.0315)
SHAPES = [(24, 40), (40, 24), (32, 32)]


def _matrices(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) for shape in SHAPES]


@pytest.mark.parametrize("shape", SHAPES)
def test_zeropower_in_bf16_is_torchs_own_bit_for_bit(shape: tuple[int, int]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    ours = zeropower(g, COEFFICIENTS, 5, 1e-7, torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and ours.shape == shape
    assert torch.equal(ours, _zeropower_via_newtonschulz(g, COEFFICIENTS, 5, 1e-7))


def _float64_reference(g: torch.Tensor, steps: int) -> torch.Tensor:
    return zeropower(g.double(), COEFFICIENTS, steps, 1e-7, torch.float64)


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_newton_schulz_is_the_more_accurate(shape: tuple[int, int]) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(4))
    exact = _float64_reference(g, 5)
    err = {dtype: float((zeropower(g, COEFFICIENTS, 5, 1e-7, dtype).double() - exact).norm() / exact.norm())
           for dtype in (torch.bfloat16, torch.float32)}
    assert err[torch.float32] < 1e-5 < err[torch.bfloat16]


def _run(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int,
         step: callable | None = None) -> None:
    for k in range(steps):
        for p, g in zip(params, _matrices(100 + k), strict=True):
            p.grad = g
        (step or opt.step)()


@pytest.mark.parametrize(("nesterov", "adjust", "wd"),
                         [(True, "original", 0.0), (False, "match_rms_adamw", 0.1)])
def test_muon_step_is_torchs_algorithm_with_only_the_dtype_changed(nesterov: bool, adjust: str,
                                                                   wd: float) -> None:
    hyper = dict(lr=0.02, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust, weight_decay=wd, ns_steps=5)
    ref = [torch.nn.Parameter(m) for m in _matrices()]
    ours = [torch.nn.Parameter(m) for m in _matrices()]
    torch_opt = torch.optim.Muon(ref, **hyper)
    our_opt = Muon(ours, ns_dtype="fp32", **hyper)
    _run(torch_opt, ref, 4)
    _run(our_opt, ours, 4, step=lambda: our_opt._step_in(torch.bfloat16))  # the fp32 code path, in bf16
    for a, b in zip(ref, ours, strict=True):
        assert torch.equal(a.detach(), b.detach())
        assert torch.equal(torch_opt.state[a]["momentum_buffer"], our_opt.state[b]["momentum_buffer"])


def test_muon_bf16_is_torchs_step_and_fp32_stays_close_and_resumes() -> None:
    params = {d: [torch.nn.Parameter(m) for m in _matrices()] for d in ("torch", "bf16", "fp32")}
    opts = {"torch": torch.optim.Muon(params["torch"], lr=0.02),
            "bf16": Muon(params["bf16"], ns_dtype="bf16", lr=0.02),
            "fp32": Muon(params["fp32"], ns_dtype="fp32", lr=0.02)}
    for name, opt in opts.items():
        _run(opt, params[name], 3)
    for a, b, c in zip(params["torch"], params["bf16"], params["fp32"], strict=True):
        assert torch.equal(a, b)
        # bf16 rounding apart, not another algorithm
        assert 0 < float((a - c).detach().norm() / a.detach().norm()) < 0.02
    buffer = io.BytesIO()
    torch.save(opts["fp32"].state_dict(), buffer)
    again = Muon([torch.nn.Parameter(p.detach().clone()) for p in params["fp32"]], ns_dtype="fp32", lr=0.02)
    again.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    _run(opts["fp32"], params["fp32"], 2)
    _run(again, list(again.param_groups[0]["params"]), 2)
    for a, b in zip(params["fp32"], again.param_groups[0]["params"], strict=True):
        assert torch.equal(a, b)


def test_muon_seed_in_fp32_is_its_bf16_arithmetic_in_float32() -> None:
    g = _matrices(7)[1]
    x = g / (g.norm() + 1e-7)
    x = x.T  # tall: runs on the transpose
    for _ in range(3):
        a = x @ x.T
        x = COEFFICIENTS[0] * x + (COEFFICIENTS[1] * a + COEFFICIENTS[2] * a @ a) @ x
    assert torch.equal(orthogonalize(g, 3, 1e-7, torch.float32), x.T)
    w = torch.nn.Parameter(torch.ones(4, 6))
    opt = MuonSeed([w], lr=0.1, ns_dtype="fp32")
    w.grad = torch.arange(24.0).reshape(4, 6)
    opt.step()
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    with pytest.raises(ValueError, match="ns_dtype must be one of bf16, fp32, got 'fp16'"):
        MuonSeed([w], ns_dtype="fp16")


def test_flop_count_matches_the_matmuls_dispatched() -> None:
    steps = 3
    with FlopCounterMode(display=False) as counter:
        for g in _matrices():
            zeropower(g, COEFFICIENTS, steps, 1e-7, torch.float32)
    assert counter.get_total_flops() == newton_schulz_flops(SHAPES, steps)


def test_auto_takes_what_the_device_does_fast(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_ns_dtype("bf16", "cpu") == "bf16" and resolve_ns_dtype("fp32", "cpu") == "fp32"
    for fast, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(ns_precision, "bf16_speed", lambda _d, fast=fast: Bf16Speed(fast, "probed"))
        with caplog.at_level(logging.INFO, logger="agop_sweep.model.ns_precision"):
            assert resolve_ns_dtype("auto", "cpu") == expected
        assert f"Newton-Schulz in {expected} (optimizer.ns_dtype=auto): probed" in caplog.text


def test_the_probe_measures_both_dtypes_and_keeps_the_thread_count() -> None:
    threads = torch.get_num_threads()
    ns_precision.bf16_speed.cache_clear()
    speed = ns_precision.bf16_speed("cpu")
    assert torch.get_num_threads() == threads
    assert speed.bf16_flops > 0 and speed.fp32_flops > 0
    assert speed.fast == (speed.slowdown <= ns_precision.SLOW_FACTOR)
    assert f"{speed.slowdown:.1f}x" in speed.reason
    assert ns_precision.bf16_speed("cpu") is speed  # measured once per process


def test_slow_bf16_warns_with_a_projected_epoch(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    slow = Bf16Speed(False, "a bf16 matmul on this CPU takes 50.0x the time of an fp32 one", 1e9, 5e10)
    monkeypatch.setattr(ns_precision, "bf16_speed", lambda _d: slow)
    shapes = [(1024, 3072), *[(1024, 1024)] * 4, (10, 1024)]
    with caplog.at_level(logging.WARNING):
        seconds = warn_if_slow("bf16", "cpu", shapes, 5, 573)
    assert seconds == pytest.approx(newton_schulz_flops(shapes, 5) / 1e9 * 573)
    assert "Newton-Schulz alone projects to about 32.5 h an epoch (573 steps)" in caplog.text
    assert "50.0x" in caplog.text
    assert warn_if_slow("fp32", "cpu", shapes, 5, 573) is None
    monkeypatch.setattr(ns_precision, "bf16_speed", lambda _d: Bf16Speed(True, "fast"))
    assert warn_if_slow("bf16", "cpu", shapes, 5, 573) is None


@pytest.mark.parametrize("option", ["muon", "muon_seed"])
def test_the_builders_resolve_and_report_the_dtype(option: str, compose_config) -> None:
    model = torch.nn.Module()
    model.first = torch.nn.Linear(8, 6, bias=False)
    model.middle = torch.nn.ModuleList([torch.nn.Linear(6, 6, bias=False)])
    model.last = torch.nn.Linear(6, 3, bias=False)
    for dtype in ("bf16", "fp32"):
        cfg = compose_config(f"optimizer={option}", f"optimizer.ns_dtype={dtype}").optimizer
        opts = build_optimizer(cfg, model)
        assert opts.ns_dtype == dtype
        (opt,) = opts.optimizers.values()
        assert opt.ns_dtype == dtype
        assert opts.orthogonalized_shapes() == [(6, 8), (6, 6), (3, 6)]
    assert compose_config(f"optimizer={option}").optimizer.ns_dtype == "auto"
    assert build_optimizer(compose_config("optimizer=sgd").optimizer, model).ns_dtype is None
    assert math.isfinite(float(model.first.weight.detach().sum()))
