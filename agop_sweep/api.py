"""The library API for notebooks: the exact NFA of a model, and the numbers of runs.

- :func:`nfa`: per hidden layer, the AGOP over every sample of ``x``, its kernel and the
  metrics of results.json, for agop_sweep's MLP and CNN (their fast passes) and for a
  ``nn.Sequential`` of your own;
- :func:`load_runs`: the tidy table ``aggregate`` writes, as a pandas DataFrame;
- :func:`load_run`: one run's results.json as a :class:`~agop_sweep.store.record.RunRecord`;
- :func:`~agop_sweep.model.network.load_model`: the trained network of a checkpoint.

These are the code paths of the app (``analyze.layers``, ``aggregate.tables``), not copies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from agop_sweep.analyze.agop import KernelPass, chunk_starts, jacobian_kernels
from agop_sweep.analyze.conv import conv_kernels, float64_gram
from agop_sweep.analyze.layers import exact_matmuls, layer_entry
from agop_sweep.analyze.names import DEFAULT_METRIC
from agop_sweep.analyze.nfa import agop_from_kernel, compare_layer
from agop_sweep.errors import UserError
from agop_sweep.model.cnn import CNN
from agop_sweep.model.mlp import MLP, LayerInfo
from agop_sweep.model.network import load_model

if TYPE_CHECKING:
    import pandas as pd

    from agop_sweep.store.record import RunRecord

__all__ = ["LayerNFA", "UnsupportedModelError", "load_model", "load_run", "load_runs", "nfa"]


class UnsupportedModelError(UserError):
    """A model :func:`nfa` cannot take: it names the module."""


@dataclass
class LayerNFA:
    """One hidden layer's NFA, as :func:`nfa` finds it.

    ``weight``: the weight matrix W (d_out, d_in), a conv's filters as (C_out, C_in k k);
    ``kernel``: K (d_out, d_out) float64; ``agop``: W^T K W (d_in, d_in) float64, for a conv
    layer the patch AGOP (summed over positions, mean over samples); ``metrics``: every
    correlation variant by its results.json name (the delta ones None without ``init``);
    ``entry``: the layer's results.json entry (``weight_change``, ``alpha_star``,
    ``alpha_corr``, ``alphas``, ``spectra``, ...).
    """

    layer: int
    kind: str
    weight: torch.Tensor
    kernel: torch.Tensor
    agop: torch.Tensor
    metrics: dict[str, float | None]
    entry: dict[str, Any] = field(repr=False)

    @property
    def alpha_star(self) -> float | None:
        """The a in [0, 2] that maximises corr(NFM, AGOP^a) for ``primary``'s kinds."""
        return self.entry.get("alpha_star")

    @property
    def weight_change(self) -> float | None:
        """|W - W0|_F / |W0|_F; None without ``init``."""
        return self.entry.get("weight_change")


# -- a user's own nn.Sequential ----------------------------------------------------------------

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid)
_PASSIVE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity,
            nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    """The modules of a (nested) nn.Sequential in forward order, with their dotted names."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix or type(module).__name__, module


def _sequence(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules of ``model``; UnsupportedModelError naming the first one :func:`nfa`
    cannot take, and for a model whose layers it cannot see."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedModelError(
            f"nfa() takes agop_sweep's MLP or CNN, or an nn.Sequential (nested or not); got "
            f"{type(model).__name__}: write its layers as an nn.Sequential")
    leaves = list(_leaves(model, ""))
    for name, m in leaves:
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise UnsupportedModelError(
                    f"nfa() cannot take module {name} ({m}): a Conv2d needs groups=1 and numeric zero "
                    "padding")
        elif not isinstance(m, (nn.Linear, *_ELEMENTWISE, *_PASSIVE)):
            raise UnsupportedModelError(
                f"nfa() cannot take module {name} ({type(m).__name__}): it takes Linear, Conv2d, "
                "ReLU, LeakyReLU, Tanh, GELU, SiLU, Sigmoid, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, "
                "Flatten, Dropout and Identity")
    if sum(isinstance(m, (nn.Linear, nn.Conv2d)) for _, m in leaves) < 2:
        raise UnsupportedModelError("nfa() needs a hidden layer: at least two Linear or Conv2d layers "
                                    "(the last one is the readout)")
    return leaves


def _weight_matrix(m: nn.Module) -> torch.Tensor:
    """W (d_out, d_in): a Linear's weight, a Conv2d's filters as (C_out, C_in k k)."""
    w = m.weight.detach()
    return w.reshape(w.shape[0], -1)


def _batched_grads(logits: torch.Tensor, zs: list[torch.Tensor]) -> Sequence[torch.Tensor]:
    """df_j/dz for every j of the c outputs at once: per z, (c, *z.shape)."""
    c, b = logits.shape[1], logits.shape[0]
    eye = torch.eye(c, dtype=logits.dtype, device=logits.device)[:, None, :].expand(c, b, c)
    try:
        return torch.autograd.grad(logits, zs, grad_outputs=eye, is_grads_batched=True)
    except RuntimeError:  # an op without a batching rule: one backward per output instead
        per_output = [torch.autograd.grad(logits[:, j].sum(), zs, retain_graph=j < c - 1) for j in range(c)]
        return [torch.stack([g[i] for g in per_output]) for i in range(len(zs))]


def _sequential_kernels(leaves: list[tuple[str, nn.Module]], x: torch.Tensor,
                        chunk_size: int) -> tuple[KernelPass, list[LayerInfo]]:
    """K of every hidden Linear and Conv2d of a user's sequence (all but the last weight layer):
    one forward and one batched backward with the c output cotangents per chunk."""
    weighted = [i for i, (_, m) in enumerate(leaves) if isinstance(m, (nn.Linear, nn.Conv2d))]
    hidden = set(weighted[:-1])
    n = x.shape[0]
    dtype = leaves[weighted[0]][1].weight.dtype
    acc: list[torch.Tensor] = []
    infos: list[LayerInfo] = []
    for start in chunk_starts(n, chunk_size, progress=False):
        h = x[start : start + chunk_size].to(dtype).requires_grad_(True)
        zs = []
        with torch.enable_grad():
            for i, (_, m) in enumerate(leaves):
                h = m(h)
                if i in hidden:
                    zs.append(h)
            logits = h
        grads = _batched_grads(logits, zs)
        for j, g in enumerate(grads):  # g: (c, b, C_out, H, W) or (c, b, d_out)
            gram = float64_gram(g.movedim(2, -1) if g.dim() > 3 else g)
            if start == 0:
                acc.append(torch.zeros_like(gram))
            acc[j] += gram
        if start == 0:
            for i, z in zip(sorted(hidden), zs, strict=True):
                m = leaves[i][1]
                shape = tuple(_weight_matrix(m).shape)
                infos.append(LayerInfo("conv", shape, int(z.shape[2] * z.shape[3]))  # type: ignore[arg-type]
                             if isinstance(m, nn.Conv2d) else LayerInfo("linear", shape))  # type: ignore[arg-type]
    return KernelPass([a / n for a in acc], float("nan"), float("nan"), n), infos  # no labels: no loss


# -- the API ---------------------------------------------------------------------------------------


def _kernels(model: nn.Module, x: torch.Tensor, chunk_size: int
             ) -> tuple[KernelPass, list[torch.Tensor], list[LayerInfo]]:
    if isinstance(model, CNN):
        return conv_kernels(model, x, chunk_size=chunk_size), _hidden(model), model.layer_infos()
    if isinstance(model, MLP):
        kp = jacobian_kernels(_hidden(model), model.last.weight.detach(), model.act, model.act_grad,
                              x.flatten(1) if x.dim() > 2 else x, chunk_size=chunk_size)
        return kp, _hidden(model), model.layer_infos()
    kp, infos = _sequential_kernels(_sequence(model), x, chunk_size)
    return kp, _kernels_weights(model), infos


def _hidden(model: MLP | CNN) -> list[torch.Tensor]:
    return [w.detach() for w in model.hidden_weights()]


def nfa(model: nn.Module, x: torch.Tensor, *, init: nn.Module | None = None, chunk_size: int = 2048,
        metrics: bool = True, primary: str = DEFAULT_METRIC) -> list[LayerNFA]:
    """The Neural Feature Ansatz of every hidden layer of ``model`` on the inputs ``x``.

    Args:
        model: agop_sweep's MLP or CNN (e.g. from :func:`load_model`), or an ``nn.Sequential``,
            nested or not, of Linear and Conv2d layers (with or without bias; Conv2d with
            groups=1 and zero padding), elementwise activations (ReLU, LeakyReLU, Tanh, GELU,
            SiLU, Sigmoid), pooling (MaxPool2d, AvgPool2d, AdaptiveAvgPool2d), Flatten,
            Dropout and Identity. Its last Linear or Conv2d is the readout; every other one is
            a hidden layer. Anything else raises :class:`UnsupportedModelError` naming the
            module. Evaluated in eval mode (Dropout off), its training flag restored after.
        x: the inputs, every one of which enters the AGOP: (n, C, H, W) images, or (n, d).
        init: the same network at initialisation; then the ``delta`` variants (W - W0),
            ``weight_change`` and the centered NFA are defined too.
        chunk_size: samples per chunk; bounds the extra memory (a conv net holds about
            classes x chunk x the largest C x H x W numbers at once).
        metrics: False returns only the kernels and AGOPs (``metrics`` and ``entry`` empty).
        primary: the variant of ``entry["corr"]`` and of ``alpha_star``.

    Returns:
        One :class:`LayerNFA` per hidden layer, in forward order. The kernels are exact: one
        forward and one backward sweep per chunk for all outputs, summed in float64, no
        per-sample autograd. Numbers equal those the app writes to results.json.
    """
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), exact_matmuls():
            kp, weights, infos = _kernels(model, x, chunk_size)
            inits = weights if init is None else _kernels_weights(init)
            if [a.shape for a in inits] != [w.shape for w in weights]:
                raise UnsupportedModelError("init is not the same architecture as model: its hidden layers' "
                                            "shapes differ")
            out = []
            cfg = SimpleNamespace(primary=primary, spectra=True)
            for layer, (w, w0, k, info) in enumerate(zip(weights, inits, kp.kernels, infos, strict=True)):
                agop = agop_from_kernel(w.double(), k)
                if not metrics:
                    out.append(LayerNFA(layer, info.kind, w, k, agop, {}, {}))
                    continue
                cmp = compare_layer(w, w0.to(w.device), k, with_spectra=True, primary=primary)
                entry = layer_entry(layer, info, cmp, cfg)
                if init is None:
                    entry["weight_change"] = None
                out.append(LayerNFA(layer, info.kind, w, k, agop, dict(cmp.metrics), entry))
            return out
    finally:
        model.train(training)


def _kernels_weights(model: nn.Module) -> list[torch.Tensor]:
    """The hidden layers' weight matrices of ``model`` (as :func:`nfa` orders them)."""
    if isinstance(model, (MLP, CNN)):
        return _hidden(model)
    return [_weight_matrix(m) for _, m in _sequence(model) if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]


def load_runs(*dirs: str | os.PathLike[str]) -> pd.DataFrame:
    """Every run below ``dirs`` as the tidy table that ``aggregate`` writes (metrics.parquet):
    one row per run x epoch x layer x metric, with the runs' settings as columns. Raises a
    one-line error when a dir is not a directory or holds no run."""
    from agop_sweep.aggregate.discover import AggregateError, find_runs
    from agop_sweep.aggregate.tables import tidy_table

    paths = [Path(d) for d in dirs]
    if not paths:
        raise AggregateError("load_runs() needs at least one directory")
    runs, skipped = find_runs(paths)
    if not runs:
        why = f" ({len(skipped)} unreadable results.json skipped)" if skipped else ""
        raise AggregateError(f"no runs (results.json) found below {', '.join(map(str, paths))}{why}")
    return tidy_table(runs)


def load_run(run_dir: str | os.PathLike[str]) -> RunRecord:
    """One run's results.json (``run_dir`` or the file itself), validated."""
    from agop_sweep.store.record import RunRecord

    path = Path(run_dir)
    return RunRecord.load(path / "results.json" if path.is_dir() else path)
