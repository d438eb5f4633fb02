"""Structured configs: the schema that every YAML file under ``conf/`` is checked against.

Hydra merges each group's YAML into the typed dataclass below, so a wrong type or an
unknown key fails during composition with Hydra's own message. Values of the right type
that are still wrong (a negative learning rate, an epoch past the end) are caught by
:func:`validate`, which runs before any data is loaded.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from agop_sweep.errors import ConfigError
from agop_sweep.nfa import DEFAULT_METRIC, VARIANTS

ACTIVATIONS = ("relu", "tanh", "gelu")
LOSSES = ("mse", "ce")
OPTIMIZERS = ("sgd", "adam", "muon")
MUON_SCOPES = ("all", "hidden")
DATASETS = ("svhn", "digits", "synthetic")
PRECISIONS = ("fp32", "tf32", "bf16")
# When the per-run figures are drawn: after every analysed epoch and at the end, at the end only, never.
PLOT_MODES = ("live", "end", "off")


@dataclass
class OptimizerConfig:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = 0.0
    # SGD and Adam (also Muon's auxiliary Adam): torch's fused kernel, one per step for all
    # parameters; false: torch's default (a per-parameter loop on CPU, foreach on CUDA).
    fused: bool = True
    # SGD
    momentum: float = 0.0
    # Adam (and the auxiliary Adam of Muon's `hidden` scope)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # Muon (torch.optim.Muon)
    muon_momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    adjust_lr_fn: str = "original"
    scope: str = "all"
    aux_lr: float = 0.001


@dataclass
class ModelConfig:
    width: int = 1024
    depth: int = 5
    act: str = "relu"


@dataclass
class ScheduleConfig:
    name: str = MISSING
    epochs: int = MISSING
    # Epochs at which the model is checkpointed and analysed; 0 = the initial weights.
    checkpoints: list[int] = MISSING


@dataclass
class AnalysisConfig:
    enabled: bool = True
    primary: str = DEFAULT_METRIC
    # Samples per chunk of the AGOP pass: bounds its extra memory independently of n.
    chunk_size: int = 2048
    # Extra per-layer numbers (effective ranks, spectra shares, eigenvector alignment).
    spectra: bool = True
    # Per-run features.npz with the layer-0 diagonals and top eigenvectors.
    save_features: bool = True
    top_eigvecs: int = 8


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = "data/svhn"
    verify: bool = True
    download: bool = True
    url: str = "http://ufldl.stanford.edu/housenumbers/"
    # >0: hold out this fraction of the training set as validation instead of the test set.
    val_fraction: float = 0.0
    # Seeds the synthetic task and the val_fraction split (fixed across model seeds).
    seed: int = 0
    # synthetic task only
    n_train: int = 2048
    n_val: int = 512
    n_features: int = 3072
    n_classes: int = 10
    # Input shape (channels, height, width) for feature images; product = n_features.
    image_shape: list[int] = field(default_factory=lambda: [3, 32, 32])


@dataclass
class EvalConfig:
    # True: train loss/acc of every epoch from a full pass; False: running minibatch average
    # on epochs that are not analysed (analysed epochs always get the full pass for free).
    full_train: bool = True
    batch_size: int = 8192


@dataclass
class TrainerConfig:
    batch_size: int = 128
    precision: str = "tf32"
    compile: bool = False
    # Per-run figures: "live" (PNG after every analysed epoch, PNG + PDF at the end), "end", "off".
    plots: str = "live"


@dataclass
class Config:
    optimizer: OptimizerConfig = MISSING
    model: ModelConfig = MISSING
    schedule: ScheduleConfig = MISSING
    analysis: AnalysisConfig = MISSING
    data: DataConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: str = "mse"
    seed: int = 1717
    # auto | cpu | cuda | cuda:N
    device: str = "auto"
    # Torch CPU threads for this job; 0 = this machine's cores split over parallel jobs.
    threads: int = 0
    resume: bool = False


def register_configs() -> None:
    """Register the schema; ``config.yaml`` lists it first in its defaults, so every
    group's YAML is merged into a typed node and checked key by key."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def _fail(key: str, why: str, value: Any) -> ConfigError:
    return ConfigError(f"Invalid config: {key}={value!r}: {why}")


def _one_of(cfg: DictConfig, key: str, options: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value not in options:
        raise _fail(key, f"must be one of {', '.join(options)}", value)


def _positive(cfg: DictConfig, key: str, minimum: float = 0, strict: bool = True) -> None:
    value = OmegaConf.select(cfg, key)
    bad = not math.isfinite(value) or (value <= minimum if strict else value < minimum)
    if bad:
        op = ">" if strict else ">="
        raise _fail(key, f"must be {op} {minimum}", value)


def validate(cfg: DictConfig) -> None:
    """Check every value whose type is right but whose value is not.

    Raises :class:`ConfigError` with one line naming the key, the value and the rule.
    Cheap: it runs before any data is touched.
    """
    _one_of(cfg, "optimizer.name", OPTIMIZERS)
    _positive(cfg, "optimizer.lr")
    _positive(cfg, "optimizer.weight_decay", strict=False)
    if not 0 <= cfg.optimizer.momentum < 1:
        raise _fail("optimizer.momentum", "must be in [0, 1)", cfg.optimizer.momentum)
    if not 0 <= cfg.optimizer.muon_momentum < 1:
        raise _fail("optimizer.muon_momentum", "must be in [0, 1)", cfg.optimizer.muon_momentum)
    betas = list(cfg.optimizer.betas)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise _fail("optimizer.betas", "must be two numbers in [0, 1)", betas)
    _positive(cfg, "optimizer.eps")
    _positive(cfg, "optimizer.ns_steps", minimum=1, strict=False)
    _one_of(cfg, "optimizer.adjust_lr_fn", ("original", "match_rms_adamw"))
    _one_of(cfg, "optimizer.scope", MUON_SCOPES)
    _positive(cfg, "optimizer.aux_lr")

    _positive(cfg, "model.width", minimum=1, strict=False)
    _positive(cfg, "model.depth", minimum=1, strict=False)
    _one_of(cfg, "model.act", ACTIVATIONS)
    if cfg.optimizer.name == "muon" and cfg.optimizer.scope == "hidden" and cfg.model.depth < 2:
        raise _fail(
            "optimizer.scope",
            "needs model.depth >= 2 (hidden = the middle layers; use scope=all)",
            cfg.optimizer.scope,
        )
    _one_of(cfg, "loss", LOSSES)

    epochs = cfg.schedule.epochs
    if epochs < 1:
        raise _fail("schedule.epochs", "must be >= 1 (a schedule needs epochs to train)", epochs)
    checkpoints = list(cfg.schedule.checkpoints)
    if not checkpoints:
        raise _fail("schedule.checkpoints", "must list at least one epoch", checkpoints)
    for e in checkpoints:
        if not 0 <= e <= epochs:
            raise _fail(
                "schedule.checkpoints",
                f"epoch {e} is outside 0..schedule.epochs={epochs}",
                checkpoints,
            )
    if len(set(checkpoints)) != len(checkpoints):
        raise _fail("schedule.checkpoints", "lists an epoch twice", checkpoints)

    _one_of(cfg, "analysis.primary", VARIANTS)
    _positive(cfg, "analysis.chunk_size", minimum=1, strict=False)
    _positive(cfg, "analysis.top_eigvecs", minimum=1, strict=False)

    _one_of(cfg, "data.name", DATASETS)
    if not 0 <= cfg.data.val_fraction < 1:
        raise _fail("data.val_fraction", "must be in [0, 1)", cfg.data.val_fraction)
    if cfg.data.name == "synthetic":
        for key in ("n_train", "n_features"):
            _positive(cfg, f"data.{key}", minimum=1, strict=False)
        _positive(cfg, "data.n_val", minimum=0, strict=False)
        _positive(cfg, "data.n_classes", minimum=2, strict=False)
    shape = list(cfg.data.image_shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise _fail("data.image_shape", "must be [channels, height, width] >= 1", shape)

    _positive(cfg, "trainer.batch_size", minimum=1, strict=False)
    _positive(cfg, "eval.batch_size", minimum=1, strict=False)
    _one_of(cfg, "trainer.precision", PRECISIONS)
    _one_of(cfg, "trainer.plots", PLOT_MODES)
    _positive(cfg, "threads", minimum=0, strict=False)
    device = cfg.device
    if not (device in ("auto", "cpu", "cuda") or _is_cuda_index(device)):
        raise _fail("device", "must be auto, cpu, cuda or cuda:N", device)


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


def upgrade_saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A config that an earlier version saved with a run (state.pt, .hydra/config.yaml), in
    today's schema, so that such runs can still be resumed and re-analysed.

    ``trainer.live_plots`` (bool) became ``trainer.plots`` (true: ``live``, false: ``end``);
    runs from before ``optimizer.fused`` took torch's default, unfused step.
    """
    out = copy.deepcopy(saved)
    trainer = out.get("trainer")
    if isinstance(trainer, dict) and "live_plots" in trainer:
        live = trainer.pop("live_plots")
        trainer.setdefault("plots", "live" if live else "end")
    optimizer = out.get("optimizer")
    if isinstance(optimizer, dict) and "fused" not in optimizer:
        optimizer["fused"] = False
    return out


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (what results.json and checkpoints store)."""
    out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]
