"""Start-up checks of a composed config, each failure one line naming the key.

Hydra already refuses a wrong type, a value outside an enum, and a key the schema lacks
(without ``+``) while composing. :func:`validate` catches the rest before any data is
loaded: keys added with ``+``, values of the right type that are still wrong (a negative
learning rate, an epoch past the end), and combinations that do not go together.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Sequence
from enum import Enum
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agop_sweep.analyze.names import METRICS
from agop_sweep.config.schema import (
    OPTION_SCHEMAS,
    Config,
    DataConfig,
    DataOrder,
    DatasetName,
    DataSplit,
    ModelConfig,
    ModelInit,
    ModelName,
    MuonScope,
    OptimizerConfig,
    Pool,
    Precision,
)
from agop_sweep.config.store import structured
from agop_sweep.errors import ConfigError

# Base types of the nodes whose schema is the option's own (picked by ``name``), and their group.
_BASES: dict[type, str] = {OptimizerConfig: "optimizer", DataConfig: "data", ModelConfig: "model"}


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value.value if isinstance(value, Enum) else value


def _fail(key: str, why: str, value: Any) -> ConfigError:
    return ConfigError(f"Invalid config: {key}={_plain(value)!r}: {why}")


@functools.cache
def _field_types(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _node_schema(node: DictConfig, declared: type, key: str) -> type:
    """The schema of ``node``: its own structured type where it has one (an option's schema
    merged into a base-typed node), else the option its ``name`` picks, else ``declared``."""
    if declared not in _BASES:
        return declared
    own = OmegaConf.get_type(node)
    if isinstance(own, type) and issubclass(own, declared) and own is not declared:
        return own
    options = OPTION_SCHEMAS[_BASES[declared]]
    name = _plain(node.get("name"))
    if name not in options:
        raise _fail(f"{key}.name", f"must be one of {', '.join(options)}", name)
    return options[name]


def check_keys(node: DictConfig, schema: type = Config, prefix: str = "") -> None:
    """Every key of ``node`` is a field of its schema, at every depth (``+key=...`` adds
    keys that composition lets through)."""
    fields = _field_types(schema)
    group = prefix[:-1]
    where = f"{group}={_plain(node.get('name'))}" if group in OPTION_SCHEMAS else group or "the config"
    for key in node:
        if key not in fields and not (key == "hydra" and not prefix):
            has = ", ".join(fields)
            raise _fail(f"{prefix}{key}", f"no such key for {where} (it has {has})", node.get(key))
    for key, declared in fields.items():
        child = node._get_node(key) if key in node else None
        if isinstance(child, DictConfig) and dataclasses.is_dataclass(declared) and not child._is_missing():
            check_keys(child, _node_schema(child, declared, f"{prefix}{key}"), f"{prefix}{key}.")


def _check_name(cfg: DictConfig, group: str) -> None:
    """An option's ``name`` is its schema's: ``optimizer=sgd optimizer.name=adam`` is refused."""
    own = OmegaConf.get_type(cfg[group])
    expected = getattr(own, "name", None) if isinstance(own, type) else None
    if isinstance(expected, Enum) and cfg[group].name != expected:
        name = _plain(cfg[group].name)
        raise _fail(f"{group}.name", f"must be {expected.value} for {group}={expected.value}; "
                    f"choose the option itself with {group}={name}", name)


def _number(cfg: DictConfig, key: str, minimum: float = 0, strict: bool = True) -> None:
    value = OmegaConf.select(cfg, key)
    bad = not math.isfinite(value) or (value <= minimum if strict else value < minimum)
    if bad:
        raise _fail(key, f"must be {'>' if strict else '>='} {minimum}", value)


# The seeds every consumer takes: torch's generators ([-2**63, 2**64 - 1], and a negative seed is
# silently remapped, so -1 and 2**64 - 1 would be one run), NumPy's default_rng (>= 0) and the
# int64 columns of aggregate's tables (< 2**63). Outside it a run died in a 50-line traceback.
SEED_MAX = 2**63 - 1


def _seed(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not 0 <= value <= SEED_MAX:
        raise _fail(key, "must be an integer in [0, 2**63 - 1]", value)


def _fraction(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if not 0 <= value < 1:
        raise _fail(key, "must be in [0, 1)", value)


def _betas(cfg: DictConfig, key: str) -> None:
    betas = list(OmegaConf.select(cfg, key))
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise _fail(key, "must be two numbers in [0, 1)", betas)


def _validate_optimizer(cfg: DictConfig) -> None:
    opt = cfg.optimizer
    _check_name(cfg, "optimizer")
    _number(cfg, "optimizer.lr")
    if "weight_decay" in opt:
        _number(cfg, "optimizer.weight_decay", strict=False)
    if "momentum" in opt:
        _fraction(cfg, "optimizer.momentum")
    if "betas" in opt:
        _betas(cfg, "optimizer.betas")
    if "eps" in opt:
        _number(cfg, "optimizer.eps")
    if "ns_steps" in opt:
        _number(cfg, "optimizer.ns_steps", minimum=1, strict=False)
    if "aux_lr" in opt:
        _number(cfg, "optimizer.aux_lr")
        _betas(cfg, "optimizer.aux_betas")
        _number(cfg, "optimizer.aux_eps")
    check_muon_scope(opt.get("scope"), hidden_layers(cfg.model))


def hidden_layers(model: DictConfig) -> int:
    """How many hidden (analysed) layers the ``model`` node builds: ``depth`` for the MLP, the
    conv stages and fc layers for the CNN."""
    if model.get("name") == ModelName.cnn:
        return len(model.channels) + len(model.fc)
    return int(model.depth)


def check_muon_scope(scope: Any, hidden: int) -> None:
    """Muon's ``scope=middle`` needs middle layers (``hidden`` >= 2 hidden layers). The
    optimizer's builder asks too, for a node given to it without :func:`validate`."""
    if scope == MuonScope.middle and hidden < 2:
        raise _fail("optimizer.scope", "needs >= 2 hidden layers (model.depth >= 2, or conv stages "
                    "and fc layers together; middle, alias hidden: the layers between the first "
                    "and the readout; use scope=all)", scope)


Shape = tuple[int, int, int]


def stage_shapes(image_shape: Sequence[int], channels: Sequence[int], kernel: int, stride: int,
                 pooled: bool) -> list[tuple[Shape, Shape]]:
    """Per conv stage on inputs of ``image_shape`` (C, H, W): the (C, H, W) of its conv's
    output (padding kernel // 2, ``stride``) and of the stage's output after 2x2 pooling (the
    same without ``pooled``). Pure arithmetic: the CNN and :func:`conv_stage_shapes` share it."""
    _, h, w = (int(s) for s in image_shape)
    pad, out = kernel // 2, []
    for c in channels:
        h, w = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
        conv = (int(c), h, w)
        if pooled:
            h, w = h // 2, w // 2
        out.append((conv, (int(c), h, w)))
    return out


def conv_stage_shapes(model: DictConfig, image_shape: list[int]) -> list[tuple[Shape, Shape]]:
    """:func:`stage_shapes` of the CNN ``model`` node, with a one-line ConfigError where a
    stage's output would be empty; the model builder calls it too, for inputs whose shape
    comes from a file (data=npz)."""
    shapes = stage_shapes(image_shape, list(model.channels), int(model.kernel), int(model.stride),
                          model.pool != Pool.none)
    for i, (_, (_, h, w)) in enumerate(shapes):
        if h < 1 or w < 1:
            raise _fail("model.channels", f"stage {i} leaves no pixels of the {list(image_shape)} "
                        "inputs: use fewer stages, model.pool=none or model.stride=1",
                        model.channels)
    return shapes


def _validate_cnn(cfg: DictConfig) -> None:
    model = cfg.model
    for key in ("channels", "fc"):
        values = list(model[key])
        if (key == "channels" and not values) or any(not isinstance(v, int) or v < 1 for v in values):
            need = "a non-empty list" if key == "channels" else "a list"
            raise _fail(f"model.{key}", f"must be {need} of integers >= 1", values)
    _number(cfg, "model.kernel", minimum=1, strict=False)
    _number(cfg, "model.stride", minimum=1, strict=False)
    if model.init != ModelInit.default:
        raise _fail("model.init", "exists for model=mlp only (the original script's MLP); a CNN "
                    "takes init=default", model.init)
    if cfg.data.get("order") == DataOrder.seed:
        raise _fail("data.order", "replays the original script's batches for its MLP (model=mlp); "
                    "a CNN takes data.order=default", cfg.data.order)
    shape = list(cfg.data.get("image_shape") or [])
    if len(shape) == 3 and all(isinstance(v, int) and v >= 1 for v in shape):
        conv_stage_shapes(model, shape)


def _validate_model_and_schedule(cfg: DictConfig) -> None:
    _check_name(cfg, "model")
    if cfg.model.name == ModelName.cnn:
        _validate_cnn(cfg)
    else:
        _number(cfg, "model.width", minimum=1, strict=False)
        _number(cfg, "model.depth", minimum=1, strict=False)
        if cfg.model.init == ModelInit.shared_middle and cfg.model.depth < 2:
            raise _fail("model.init", "needs model.depth >= 2 (depth 1 has no middle layers)",
                        cfg.model.init)
    epochs = cfg.schedule.epochs
    if epochs < 1:
        raise _fail("schedule.epochs", "must be >= 1 (a schedule needs epochs to train)", epochs)
    checkpoints = list(cfg.schedule.checkpoints)
    if not checkpoints:
        raise _fail("schedule.checkpoints", "must list at least one epoch", checkpoints)
    for e in checkpoints:
        if not 0 <= e <= epochs:
            raise _fail("schedule.checkpoints", f"epoch {e} is outside 0..schedule.epochs={epochs}",
                        checkpoints)
    if len(set(checkpoints)) != len(checkpoints):
        raise _fail("schedule.checkpoints", "lists an epoch twice", checkpoints)
    if cfg.analysis.primary not in METRICS:
        raise _fail("analysis.primary", f"must be one of {', '.join(METRICS)}", cfg.analysis.primary)
    _number(cfg, "analysis.chunk_size", minimum=1, strict=False)
    _number(cfg, "analysis.conv_chunk_size", minimum=1, strict=False)
    _number(cfg, "analysis.top_eigvecs", minimum=1, strict=False)


def _validate_data(cfg: DictConfig) -> None:
    data = cfg.data
    _check_name(cfg, "data")
    if "val_fraction" in data:
        _fraction(cfg, "data.val_fraction")
    check_split(data)
    if "n_features" in data:  # synthetic: n_train, n_val and n_features are what it generates
        for key in ("n_train", "n_features"):
            _number(cfg, f"data.{key}", minimum=1, strict=False)
        # No validation samples would leave every val metric null ; split=seed holds
        # out the original script's 20 % of the training set instead, and n_val goes unused.
        if data.get("split") != DataSplit.seed and data.n_val < 1:
            raise _fail("data.n_val", "must be >= 1 (the validation set; data.split=seed holds out 20% "
                        "of the training set instead)", data.n_val)
        _number(cfg, "data.n_classes", minimum=2, strict=False)
    if "normalize" in data:  # every dataset of real samples: n_train 0 is the whole training set
        _number(cfg, "data.n_train", strict=False)
    # digits has no test set: val_fraction 0 would leave no validation samples (every val
    # metric null); split=seed holds out the original script's 20 % instead.
    if data.name == DatasetName.digits and data.get("split") != DataSplit.seed and data.val_fraction == 0:
        raise _fail("data.val_fraction", "must be > 0 for data=digits, which has no test set to "
                    "validate on", data.val_fraction)
    if "path" in data and not data.path:
        raise _fail("data.path", "must name the .npz file (with x_train, y_train, x_test, y_test)",
                    data.path)
    if "seed" in data:
        _seed(cfg, "data.seed")
    shape = list(data.image_shape)
    if (len(shape) != 3 or any(s < 1 for s in shape)) and not (shape == [] and "path" in data):
        npz = " (data=npz: or [], the file's)" if "path" in data else ""
        raise _fail("data.image_shape", f"must be [channels, height, width] >= 1{npz}", shape)


def check_split(data: DictConfig) -> None:
    """``data.split`` is a :class:`DataSplit`, and ``split=seed`` goes with no other
    ``val_fraction``. The data loader asks too, for a node given to it without :func:`validate`."""
    split = _plain(data.get("split", DataSplit.default))
    if split not in set(DataSplit):  # a node without the schema's type
        raise _fail("data.split", f"must be one of {', '.join(DataSplit)}", split)
    if split == DataSplit.seed and data.get("val_fraction", 0.0) not in (0.0, 0.2):
        raise _fail("data.val_fraction", "must be 0 (or 0.2) with data.split=seed, which holds out "
                    "the original script's 20% of the training set", data.val_fraction)


def check_precision(precision: str, device: str) -> None:
    """fp16 autocast needs CUDA: call with the device a job resolved to (``auto`` -> cpu)."""
    if precision == Precision.fp16 and not str(device).startswith("cuda"):
        raise _fail("trainer.precision", f"fp16 autocast needs a CUDA device, and this run is on "
                    f"{device}; use trainer.precision=fp32 (or bf16) on a CPU", precision)


def _validate_run(cfg: DictConfig) -> None:
    _number(cfg, "trainer.batch_size", minimum=1, strict=False)
    _number(cfg, "eval.batch_size", minimum=1, strict=False)
    _number(cfg, "threads", minimum=0, strict=False)
    _seed(cfg, "seed")
    device = cfg.device
    if not (device in ("auto", "cpu", "cuda") or _is_cuda_index(device)):
        raise _fail("device", "must be auto, cpu, cuda or cuda:N", device)
    if device == "cpu":
        check_precision(cfg.trainer.precision, device)


def _is_cuda_index(device: str) -> bool:
    prefix, _, index = device.partition(":")
    return prefix == "cuda" and index.isdigit()


def validate(cfg: DictConfig) -> None:
    """Check what composition lets through; raise :class:`ConfigError` with one line naming
    the key, the value and the rule. Cheap: it runs before any data is touched. A config
    that is not typed (a plain dict made into a DictConfig) is typed first, so that its
    enums and types are checked too."""
    check_keys(cfg)
    if OmegaConf.get_type(cfg) is not Config:
        try:
            cfg = structured({k: v for k, v in _plain(cfg).items() if k != "hydra"})
        except OmegaConfBaseException as e:
            raise ConfigError(f"Invalid config: {str(e).splitlines()[0]}") from None
    _validate_optimizer(cfg)
    _validate_model_and_schedule(cfg)
    _validate_data(cfg)
    _validate_run(cfg)
