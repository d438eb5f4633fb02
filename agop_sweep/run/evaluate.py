"""Loss and accuracy of a model over a whole data set, on the device, with one host sync."""

from __future__ import annotations

from collections.abc import Callable

import torch

from agop_sweep.model.mlp import loss_fn


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
    loss: str, batch_size: int,
) -> tuple[float | None, float | None]:
    """Mean loss and accuracy of ``model`` over all of ``x`` (n, d) / ``y`` (n,); None for n = 0."""
    n = x.shape[0]
    if n == 0:
        return None, None
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for start in range(0, n, batch_size):
            logits = model(x[start : start + batch_size]).float()
            yb = y[start : start + batch_size]
            loss_sum += loss_fn(loss, logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    return float(loss_sum) / n, float(correct) / n


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
