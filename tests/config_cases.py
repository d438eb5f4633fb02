"""Config cases shared by tests/test_config.py (in-process) and tests/test_config_cli.py
(the same through ``python -m agop_sweep``): every config group and option under conf/, the
overrides that composition refuses, and those that validate refuses in one line."""

from __future__ import annotations

from importlib import resources

import yaml

CONF = resources.files("agop_sweep.conf")


def config_options() -> dict[str, list[str]]:
    """Every config group under conf/ and its options, read from the package's files."""
    return {
        group.name: sorted(f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml"))
        for group in CONF.iterdir()
        if group.is_dir() and any(f.name.endswith(".yaml") for f in group.iterdir())
    }


def option_yaml(group: str, option: str) -> dict:
    return yaml.safe_load((CONF / group / f"{option}.yaml").read_text()) or {}



# Overrides that composition refuses, and the words its report holds.
COMPOSITION_ERRORS = [
    (["model.width=abc"], ["model.width=abc", "could not be converted to Integer"]),
    (["optimizer.foo=1"], ["optimizer.foo", "Key 'foo' not in 'SGDConfig'"]),
    (["schedule.checkpoints=three"], ["schedule.checkpoints"]),
    # a key of another option
    (["optimizer=sgd", "optimizer.betas=[0.8,0.9]"], ["optimizer.betas", "Key 'betas' not in 'SGDConfig'"]),
    (["optimizer=sgd", "optimizer.scope=hidden"], ["optimizer.scope", "Key 'scope' not in 'SGDConfig'"]),
    (["optimizer=muon_seed", "optimizer.weight_decay=0.1"],
     ["optimizer.weight_decay", "Key 'weight_decay' not in 'MuonSeedConfig'"]),
    (["data=digits", "data.n_val=10"], ["data.n_val", "Key 'n_val' not in 'DigitsConfig'"]),
    (["data=synthetic", "data.root=x"], ["data.root", "Key 'root' not in 'SyntheticConfig'"]),
    (["data=digits", "data.split=random"], ["data.split", "expected one of [default, seed]"]),
    # a value outside a closed choice
    (["model.act=swish"], ["model.act", "expected one of [relu, tanh, gelu]"]),
    (["loss=hinge"], ["loss", "expected one of [mse, ce]"]),
    (["optimizer=muon", "optimizer.scope=some"],
     ["optimizer.scope", "expected one of [all, middle, hidden]"]),
    (["optimizer=muon", "optimizer.adjust_lr_fn=rms"], ["optimizer.adjust_lr_fn", "original"]),
    (["optimizer=muon", "optimizer.ns_dtype=fp16"],
     ["optimizer.ns_dtype", "expected one of [auto, bf16, fp32]"]),
    (["optimizer=sgd", "optimizer.ns_dtype=fp32"],
     ["optimizer.ns_dtype", "Key 'ns_dtype' not in 'SGDConfig'"]),
    (["trainer.plots=sometimes"], ["trainer.plots", "expected one of [live, end, off]"]),
    (["trainer.precision=fp8"],
     ["trainer.precision", "expected one of [fp32, tf32, bf16, fp16, fp16_on_cuda]"]),
    (["model.init=orthogonal"], ["model.init", "expected one of [default, shared_middle, seed]"]),
    (["data.order=random"], ["data.order", "expected one of [default, seed]"]),
    (["data.split=random"], ["data.split", "expected one of [default, seed]"]),
    (["optimizer.name=rmsprop"], ["optimizer.name", "muon_seed"]),
]


# Legal types, wrong values, and keys added with `+`: (overrides, key that the one-line message names).
BAD_VALUES = [
    (["optimizer.lr=0"], "optimizer.lr"),
    (["optimizer.lr=-1"], "optimizer.lr"),
    (["optimizer=adam", "optimizer.lr=nan"], "optimizer.lr"),
    (["model.width=0"], "model.width"),
    (["model.depth=0"], "model.depth"),
    (["schedule.epochs=3", "schedule.checkpoints=[0,5]"], "schedule.checkpoints"),
    (["schedule.checkpoints=[0,1,1]", "schedule.epochs=3"], "schedule.checkpoints"),
    (["schedule.checkpoints=[]"], "schedule.checkpoints"),
    (["schedule.epochs=0", "schedule.checkpoints=[0]"], "schedule.epochs"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["data=digits", "data.val_fraction=-0.1"], "data.val_fraction"),
    (["data.split=seed", "data.val_fraction=0.3"], "data.val_fraction"),
    (["device=tpu"], "device"),
    (["optimizer=muon", "optimizer.scope=hidden", "model.depth=1"], "optimizer.scope"),
    (["optimizer=muon", "optimizer.aux_betas=[0.9]"], "optimizer.aux_betas"),
    (["optimizer=muon", "optimizer.aux_lr=0"], "optimizer.aux_lr"),
    (["optimizer=sgd", "optimizer.momentum=1"], "optimizer.momentum"),
    (["optimizer=adam", "optimizer.betas=[0.9,1.0]"], "optimizer.betas"),
    (["optimizer=muon_seed", "optimizer.momentum=-0.1"], "optimizer.momentum"),
    (["optimizer=muon_seed", "optimizer.ns_steps=0"], "optimizer.ns_steps"),
    (["optimizer=muon_seed", "optimizer.eps=0"], "optimizer.eps"),
    (["optimizer.name=adam"], "optimizer.name"),
    (["data=synthetic", "data.n_classes=1"], "data.n_classes"),
    (["data=synthetic", "data.n_val=0"], "data.n_val"),  # issue 22: null validation metrics
    (["data=synthetic", "data.n_val=-3"], "data.n_val"),
    (["analysis.primary=raw_cos_nfm"], "analysis.primary"),
    (["model.init=shared_middle", "model.depth=1"], "model.init"),
    # seeds outside what torch and NumPy take (issue 22): each was a 50-line traceback
    (["seed=99999999999999999999999"], "seed"),
    (["seed=-1"], "seed"),
    (["data=synthetic", "data.seed=-1"], "data.seed"),
    (["data=digits", "data.seed=18446744073709551616"], "data.seed"),
    (["device=cpu", "trainer.precision=fp16"], "trainer.precision"),
    (["experiment=seed", "device=cpu", "trainer.precision=fp16"], "trainer.precision"),
    # keys that `+` adds get past composition; validate names them
    (["+model.widht=64"], "model.widht"),
    (["+optimizer.betas=[0.8,0.9]"], "optimizer.betas"),
    (["data=digits", "+data.n_val=10"], "data.n_val"),
    (["+trainer.epochs=3"], "trainer.epochs"),
    (["+foo=1"], "foo"),
]
