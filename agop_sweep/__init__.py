"""agop_sweep: train networks and measure the Neural Feature Ansatz (NFM vs AGOP) per layer.

The public API is imported lazily, so that a reader of results.json (``agop_sweep.store``)
does not pay for torch:

- :func:`load_model`: the trained network of any checkpoint, MLP or CNN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agop_sweep.model.network import load_model

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from agop_sweep.model.network import load_model

        return load_model
    raise AttributeError(f"module 'agop_sweep' has no attribute {name!r}")
