"""The original script's batch order (``data.order=seed``), reproduced without a DataLoader.

The original shuffles with a ``DataLoader(shuffle=True)``. Each pass over it draws two int64
values from torch's global generator: the iterator's base seed, then its RandomSampler's
seed, which seeds a fresh generator for one ``randperm`` of the training set. A pass over the
validation loader (no shuffling) draws the base seed alone. The analysis at a checkpointed
epoch calls ``torch.manual_seed(seed)`` and then builds networks (its initial network, and per
hidden layer the network and the sub-network above the layer), whose default init draws
from the same generator. So after every analysed epoch the generator is in one and the same
state, and the epoch after each analysed epoch repeats one permutation: epochs 1-21 of the
paper schedule all see the same batch order.

:class:`SeedOrder` replays these draws on a private generator (the global one is left alone)
and gives each epoch's permutation; it is a pure function of the epoch, so a resumed run
sees the same order. The draws are the same on every device (the original shuffles on the
CPU).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

ORDERS = ("default", "seed")


def draw_int64(generator: torch.Generator | None = None) -> int:
    """One int64 as a DataLoader draws its base seed and RandomSampler its seed."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator))


def original_net_shapes(d_in: int, width: int, depth: int, n_classes: int) -> list[tuple[int, int]]:
    """The weight shapes of the original's ``Net`` in the order its constructor draws them:
    one middle layer (the others are deep copies of it), the first layer, the readout."""
    if depth == 1:
        return [(width, d_in), (n_classes, width)]
    return [(width, width), (width, d_in), (n_classes, width)]


def draw_linear(shape: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """A bias-free ``nn.Linear`` weight (out, in) as its default init draws it:
    Kaiming-uniform with a = sqrt(5), U(-1/sqrt(in), 1/sqrt(in))."""
    w = torch.empty(shape)
    torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
    return w


class SeedOrder:
    """Per-epoch permutations of ``n`` training samples as the original's DataLoader drew
    them, for a network of ``d_in``, ``width``, ``depth``, ``n_classes`` analysed at the
    epochs ``analysed`` (the schedule's checkpoints)."""

    def __init__(self, seed: int, n: int, d_in: int, width: int, depth: int, n_classes: int,
                 analysed: Iterable[int]):
        self.n = n
        self.analysed = set(analysed)
        g = torch.Generator().manual_seed(seed)
        draw_int64(g), draw_int64(g)  # the pass that reads the input size, before the model
        for shape in original_net_shapes(d_in, width, depth, n_classes):
            draw_linear(shape, g)
        draw_int64(g), draw_int64(g)  # epoch 0: the pass for the initial train loss
        self._after_start = g.get_state()
        g.manual_seed(seed)  # the analysis
        shapes = original_net_shapes(d_in, width, depth, n_classes)  # its initial network
        for layer in range(depth):
            shapes += original_net_shapes(d_in, width, depth, n_classes)  # the network ...
            sub_in = d_in if layer == 0 else width  # ... and the one above layer ``layer``
            shapes += original_net_shapes(sub_in, width, depth - layer, n_classes)
        for shape in shapes:
            draw_linear(shape, g)
        self._after_analysis = g.get_state()

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order (n,) of the training samples in epoch ``epoch`` >= 1, on the CPU."""
        if epoch < 1:
            raise ValueError(f"epoch 0 takes no steps; got epoch {epoch}")
        earlier = [e for e in self.analysed if e < epoch]
        g = torch.Generator()
        if earlier:  # manual_seed at the last analysis, then the epochs since, two draws each
            g.set_state(self._after_analysis)
            skipped = epoch - 1 - max(earlier)
        else:
            g.set_state(self._after_start)
            skipped = epoch - 1
        for _ in range(2 * skipped):
            draw_int64(g)
        draw_int64(g)  # this pass's base seed
        sampler = torch.Generator().manual_seed(draw_int64(g))
        return torch.randperm(self.n, generator=sampler)
