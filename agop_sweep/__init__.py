"""agop_sweep: train networks and measure the Neural Feature Ansatz (NFM vs AGOP) per layer.

The public API is imported lazily, so that a reader of results.json (``agop_sweep.store``)
does not pay for torch:

- :func:`load_model`: the trained network of any checkpoint, MLP or CNN;
- :func:`nfa`: the exact AGOP and NFA metrics of every hidden layer of a model of yours;
- :func:`load_runs`: runs' numbers as a pandas DataFrame, :func:`load_run` one run's record.

See :mod:`agop_sweep.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agop_sweep.api import LayerNFA, load_model, load_run, load_runs, nfa

__all__ = ["LayerNFA", "load_model", "load_run", "load_runs", "nfa"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from agop_sweep import api

        return getattr(api, name)
    raise AttributeError(f"module 'agop_sweep' has no attribute {name!r}")
