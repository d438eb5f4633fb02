"""Refactors keep every number: fixed-seed digits runs against results.json files written by
the code before the architecture change (tests/golden/, timings and provenance left out)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import strip_timing

from agop_sweep.config import validate
from agop_sweep.device import Placement
from agop_sweep.resume import flatten
from agop_sweep.train import Trainer

GOLDEN = Path(__file__).parent / "golden"
# The runs that wrote the golden files (threads=1: the analysis sums in float32, and a
# different thread count changes its rounding at 1e-8).
OVERRIDES = ["data=digits", "schedule=smoke", "model.width=32", "model.depth=3", "device=cpu",
             "threads=1", "trainer.plots=off"]
PROVENANCE = {"pid", "host", "threads", "version", "git", "torch"}
# Config keys renamed since the golden files were written: old name -> new name (Muon's
# momentum; in the old flat schema an SGD run carried it too, unused).
RENAMED = {"muon": {"optimizer.muon_momentum": "optimizer.momentum"}}
# ... and the old flat schema's SGD momentum, which a Muon run carried unused.
UNUSED = {"muon": {"optimizer.momentum"}}
# Training runs on another CPU may round differently in the last float32 bits.
REL = 1e-5


def assert_close(new: Any, old: Any, where: str = "") -> None:
    """``new`` equals ``old`` exactly in structure, keys, ints and strings; floats to REL."""
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        missing = set(old) - set(new)
        assert not missing, f"{where}: keys gone: {sorted(missing)}"
        for k in old:
            assert_close(new[k], old[k], f"{where}.{k}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    elif isinstance(old, float) and not isinstance(new, bool):
        assert isinstance(new, (int, float)) and math.isclose(new, old, rel_tol=REL, abs_tol=1e-12), \
            f"{where}: {new} != {old}"
    else:
        assert new == old, f"{where}: {new!r} != {old!r}"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "muon"])
def test_results_equal_the_golden_record(optimizer: str, compose_config, tmp_path: Path) -> None:
    cfg = compose_config(f"optimizer={optimizer}", *OVERRIDES)
    validate(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(cfg, tmp_path, Placement("cpu", 1)).run()
    finally:
        torch.set_num_threads(threads)
    new = strip_timing(json.loads((tmp_path / "results.json").read_text()))
    old = json.loads((GOLDEN / f"digits_smoke_{optimizer}.json").read_text())
    assert {k: new["run"].get(k) for k in old["run"]} == old["run"]  # later versions add keys
    assert not set(old["run"]) & PROVENANCE
    for key in ("status", "epochs", "analysis", "checkpoints", "schema_version"):
        assert_close(new[key], old[key], key)
    # The config: every setting both versions have agrees (one schema per option dropped the
    # other options' keys, e.g. Adam's betas from an SGD run).
    old_cfg, new_cfg = flatten(old["config"]), flatten(new["config"])
    renamed = RENAMED.get(optimizer, {})
    shared = {k for k in old_cfg if renamed.get(k, k) in new_cfg and (k in renamed or "muon_" not in k)
              and k not in UNUSED.get(optimizer, set())}
    assert len(shared) >= 25
    assert {k: new_cfg[renamed.get(k, k)] for k in shared} == {k: old_cfg[k] for k in shared}
