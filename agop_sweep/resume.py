"""The resumable state (state.pt) saved after every epoch, and the same-experiment check."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from agop_sweep.atomic import torch_save
from agop_sweep.errors import UserError

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
# Keys that steer how a run executes, not what it computes: they may change on resume.
RUN_CONTROL_KEYS = frozenset({
    "resume", "device", "threads", "data.root", "data.download", "data.verify", "data.url",
    "trainer.plots", "eval.batch_size", "analysis.chunk_size",
})


@dataclass
class ResumeState:
    next_epoch: int
    progress: dict[str, Any] | None
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    init_weights: list[torch.Tensor]
    shuffle_rng: torch.Tensor
    torch_rng: torch.Tensor
    results: dict[str, Any]
    features: dict[str, Any]
    config: dict[str, Any]


def save_state(run_dir: Path, state: ResumeState) -> None:
    torch_save(run_dir / STATE_FILE, asdict(state))


def load_state(run_dir: Path) -> ResumeState | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
        return ResumeState(**raw)
    except Exception as e:
        raise UserError(
            f"{path} cannot be read ({type(e).__name__}); delete it to restart the run from scratch"
        ) from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, ignoring :data:`RUN_CONTROL_KEYS`."""
    a, b = flatten(old), flatten(new)
    keys = sorted((set(a) | set(b)) - RUN_CONTROL_KEYS)
    return [k for k in keys if a.get(k) != b.get(k)]


def check_same_experiment(old: dict[str, Any], new: dict[str, Any]) -> None:
    diff = config_differences(old, new)
    if diff:
        a, b = flatten(old), flatten(new)
        shown = ", ".join(f"{k} ({a.get(k)!r} there, {b.get(k)!r} now)" for k in diff[:6])
        more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
        raise UserError(
            f"resume=true but the output dir holds a different experiment: {shown}{more}; "
            "use the same settings or another output dir"
        )
