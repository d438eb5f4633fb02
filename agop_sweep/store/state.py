"""The resumable state (state.pt), saved after every epoch and on a stop request.

It holds what a killed run needs to continue bit-identically: model and optimizer state,
the initial weights, both RNGs, where an interrupted epoch stands (:class:`EpochProgress`),
the record so far, and the state of the run's observers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agop_sweep.config import flatten, is_run_control_key
from agop_sweep.errors import UserError
from agop_sweep.store import checkpoint

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass
class EpochProgress:
    """Where an epoch stands: its permutation (n,), the next step, and the running loss and
    correct-count sums of the steps so far, kept on the device (no host sync per step)."""

    epoch: int
    perm: torch.Tensor
    step: int
    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int

    @classmethod
    def start(cls, epoch: int, perm: torch.Tensor) -> EpochProgress:
        zero = torch.zeros((), dtype=torch.float64, device=perm.device)
        return cls(epoch, perm, 0, zero, torch.zeros((), dtype=torch.int64, device=perm.device), 0)

    def running(self) -> tuple[float, float]:
        """Mean minibatch loss and accuracy of the steps so far (one host sync)."""
        return float(self.loss_sum) / self.count, float(self.correct) / self.count

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "perm": self.perm.cpu(), "step": self.step,
                "loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(), "count": self.count}

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: torch.device) -> EpochProgress:
        return cls(d["epoch"], d["perm"].to(device), d["step"], d["loss_sum"].to(device),
                   d["correct"].to(device), d["count"])


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
    # The observers' own state by observer name (e.g. a tracker's run id); absent in older
    # files, and named ``hooks`` in some (:func:`load_state` reads both).
    observers: dict[str, Any] = field(default_factory=dict)
    # The fp16 loss scaler's state (trainer.precision=fp16 only).
    grad_scaler: dict[str, Any] | None = None


def save_state(run_dir: Path, state: ResumeState) -> None:
    checkpoint.torch_save(run_dir / STATE_FILE, asdict(state))


def load_state(run_dir: Path) -> ResumeState | None:
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        saved = checkpoint.load(path)
        if "hooks" in saved:  # the observers' state under its earlier name
            saved["observers"] = saved.pop("hooks")
        return ResumeState(**saved)
    except checkpoint.UnsafeFileError:
        raise
    except Exception as e:
        # Without state.pt, resume=true restarts an unfinished run from epoch 0 in place and
        # leaves a finished one as it is (rundir.check_claimable).
        raise UserError(
            f"{path} cannot be read ({type(e).__name__}); delete it and run the same command with "
            "resume=true again: an unfinished run restarts from epoch 0 in place, a finished one stays "
            "as it is"
        ) from None


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, run-control keys (config.RUN_CONTROL_KEYS) left out."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in set(a) | set(b) if not is_run_control_key(k))
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
