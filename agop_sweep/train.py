"""The training loop: epochs of minibatch steps, evaluation, scheduled analysis and checkpoints.

Data lives on the device as whole tensors; a batch is an index slice of the epoch's
permutation. Nothing syncs with the host inside an epoch: the running loss is summed on
the device and read once per epoch. After every epoch the resumable state (model,
optimizer, RNG, results so far) is saved atomically, so a killed run continues exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from agop_sweep import checkpoint as ckpt
from agop_sweep import features, plots
from agop_sweep.analysis import analyse
from agop_sweep.atomic import remove_stale_temporaries
from agop_sweep.config import to_container, upgrade_saved_config
from agop_sweep.data import Dataset, load_dataset
from agop_sweep.device import Placement
from agop_sweep.errors import UserError
from agop_sweep.model import MLP, build_model, loss_fn
from agop_sweep.optim import OptimizerSet, build_optimizer
from agop_sweep.preemption import Preempted, PreemptionGuard
from agop_sweep.results import Results
from agop_sweep.resume import ResumeState, check_same_experiment, load_state, save_state

log = logging.getLogger(__name__)


@dataclass
class EpochProgress:
    """Where an interrupted epoch stands: its permutation, the next step, running sums."""

    epoch: int
    perm: torch.Tensor
    step: int
    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
    loss: str, batch_size: int,
) -> tuple[float | None, float | None]:
    """Mean loss and accuracy of ``model`` over all of ``x`` (n, d) / ``y`` (n,); one sync."""
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


def run_info(cfg: DictConfig, data: Dataset, device: str) -> dict[str, Any]:
    return {
        "optimizer": cfg.optimizer.name,
        "lr": cfg.optimizer.lr,
        "seed": cfg.seed,
        "dataset": data.name,
        "width": cfg.model.width,
        "depth": cfg.model.depth,
        "act": cfg.model.act,
        "loss": cfg.loss,
        "n_train": data.n_train,
        "n_val": data.n_val,
        "device": device,
        "torch": torch.__version__,
    }


class Trainer:
    """One run in ``run_dir``: :meth:`run` trains, analyses and records; returns the objective."""

    def __init__(self, cfg: DictConfig, run_dir: Path, placement: Placement, started_at: float | None = None):
        self.started_at = time.time() if started_at is None else started_at
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = torch.device(placement.device)
        self.config = to_container(cfg)
        self.checkpoints = set(cfg.schedule.checkpoints)
        self.results: Results | None = None
        self.features = features.FeatureLog()

    # -- setup ---------------------------------------------------------------------------
    def _build(self, data: Dataset) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        # Init on the CPU so that the initial weights are the same on every device.
        model = build_model(data.n_features, data.n_classes, cfg.model.width, cfg.model.depth, cfg.model.act)
        self.init_weights = [w.detach().clone() for w in model.hidden_weights()]
        self.model: MLP = model.to(self.device)
        self.optimizer: OptimizerSet = build_optimizer(cfg.optimizer, self.model)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.forward = self._compiled_forward()

    def _compiled_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.cfg.trainer.compile:
            return self.model
        try:
            return torch.compile(self.model)  # type: ignore[return-value]
        except Exception as e:
            log.warning("torch.compile unavailable (%s); training eagerly", e)
            return self.model

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.cfg.trainer.precision == "bf16"
        )

    # -- one epoch -----------------------------------------------------------------------
    def _train_epoch(self, data: Dataset, progress: EpochProgress, guard: PreemptionGuard) -> None:
        cfg = self.cfg
        bs = cfg.trainer.batch_size
        n = data.n_train
        n_steps = math.ceil(n / bs)
        model_fn = self.forward
        for step in range(progress.step, n_steps):
            if guard.requested:
                progress.step = step
                raise Preempted(progress.epoch, step)
            idx = progress.perm[step * bs : (step + 1) * bs]
            xb, yb = data.x_train[idx], data.y_train[idx]
            try:
                with self._autocast():
                    logits = model_fn(xb)
                    loss = loss_fn(cfg.loss, logits.float(), yb)
            except Exception as e:
                if model_fn is self.model:
                    raise
                log.warning("torch.compile failed (%s); training eagerly", e)
                self.forward = model_fn = self.model
                with self._autocast():
                    logits = model_fn(xb)
                    loss = loss_fn(cfg.loss, logits.float(), yb)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                progress.loss_sum += loss.detach().double() * len(idx)
                progress.correct += (logits.detach().argmax(1) == yb).sum()
            progress.count += len(idx)
        progress.step = n_steps

    def _new_progress(self, epoch: int, data: Dataset) -> EpochProgress:
        perm = torch.randperm(data.n_train, generator=self.shuffle).to(self.device)
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        return EpochProgress(epoch, perm, 0, zero, torch.zeros((), dtype=torch.int64, device=self.device), 0)

    # -- bookkeeping ---------------------------------------------------------------------
    def _checkpoint_name(self, epoch: int) -> str:
        m = self.cfg.model
        return ckpt.checkpoint_name(epoch, self.cfg.data.name, m.width, m.depth, m.act)

    def _save_state(self, next_epoch: int, progress: EpochProgress | None) -> None:
        assert self.results is not None
        save_state(self.run_dir, ResumeState(
            next_epoch=next_epoch,
            progress=None if progress is None else {
                "epoch": progress.epoch, "perm": progress.perm.cpu(), "step": progress.step,
                "loss_sum": progress.loss_sum.cpu(), "correct": progress.correct.cpu(),
                "count": progress.count,
            },
            model=ckpt.cpu_state_dict(self.model),
            optimizer=ckpt.to_cpu(self.optimizer.state_dict()),
            init_weights=self.init_weights,
            shuffle_rng=self.shuffle.get_state(),
            torch_rng=torch.get_rng_state(),
            results=self.results.data,
            features=self.features.to_dict(),
            config=self.config,
        ))

    def _restore(self, state: ResumeState) -> EpochProgress | None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.init_weights = state.init_weights
        self.shuffle.set_state(state.shuffle_rng)
        torch.set_rng_state(state.torch_rng)
        self.results = Results(self.run_dir, state.results)
        self.features = features.FeatureLog.from_dict(state.features)
        p = state.progress
        if p is None:
            return None
        return EpochProgress(
            p["epoch"], p["perm"].to(self.device), p["step"], p["loss_sum"].to(self.device),
            p["correct"].to(self.device), p["count"],
        )

    def _refresh_plots(self, final: bool) -> None:
        """Redraw the run's figures: PNG while training (60 % of the cost of both), PDF too at the end."""
        assert self.results is not None
        try:
            plots.save_run_figures(self.results.data, self.run_dir, self.features,
                                   formats=("png", "pdf") if final else ("png",))
        except Exception:
            log.exception("Could not draw the run's figures")

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> float:
        cfg = self.cfg
        state = None
        if cfg.resume:
            state = load_state(self.run_dir)
            if state is not None:
                check_same_experiment(upgrade_saved_config(state.config), self.config)
                status = state.results["status"]
                if status in ("completed", "diverged"):
                    log.info("Run in %s is already %s; nothing to do", self.run_dir, status)
                    return _objective(state.results)
            else:
                log.info("resume=true but %s holds no saved state; starting afresh", self.run_dir)
        elif (self.run_dir / "results.json").exists():
            raise UserError(
                f"{self.run_dir} already holds a run; pass resume=true to continue it, "
                "or choose another hydra.run.dir"
            )

        for d in (self.run_dir, self.run_dir / ckpt.MODELS_DIR, self.run_dir / "plots"):
            if (n := remove_stale_temporaries(d)) > 0:
                log.info("Removed %d temporary file(s) a killed run left in %s", n, d)
        data = load_dataset(cfg.data, self.device)
        self._build(data)
        progress = None
        first_epoch = 0
        if state is not None:
            progress = self._restore(state)
            first_epoch = state.next_epoch
            log.info("Resuming %s at epoch %d%s", self.run_dir, first_epoch,
                     f" step {progress.step}" if progress else "")
            assert self.results is not None
            self.results.set_status("running")
        else:
            self.results = Results.new(self.run_dir, run_info(cfg, data, str(self.device)), self.config)
        self.results.data["run"].update(device=str(self.device), threads=torch.get_num_threads(),
                                        pid=os.getpid(), host=socket.gethostname())
        self.results.data["timing"].setdefault("started_at", self.started_at)
        try:
            # The guard stays on through the final figures: a signal that comes after the
            # last epoch finds the run complete and changes nothing.
            with PreemptionGuard() as guard, logging_redirect_tqdm():
                self._loop(data, first_epoch, progress, guard)
                if cfg.trainer.plots != "off":
                    self._refresh_plots(final=True)
        except Preempted as p:
            log.warning(
                "Stopped by a signal at epoch %d step %d; state saved. Continue with resume=true",
                p.epoch, p.step,
            )
            guard.chain()
            return math.nan
        except BaseException as e:
            # KeyboardInterrupt is an interruption like a signal, not a failure.
            if not isinstance(e, KeyboardInterrupt):
                self.results.set_status("failed", error=f"{type(e).__name__}: {e}")
                try:
                    self.results.write()
                except Exception:
                    log.exception("Could not record the failure in results.json")
            raise
        return _objective(self.results.data)

    def _loop(
        self, data: Dataset, first_epoch: int, progress: EpochProgress | None, guard: PreemptionGuard
    ) -> None:
        epochs = self.cfg.schedule.epochs
        bar = tqdm(range(first_epoch, epochs + 1), desc=self.cfg.optimizer.name, unit="epoch",
                   initial=first_epoch, total=epochs + 1, disable=None)
        for epoch in bar:
            t0 = time.perf_counter()
            running: tuple[float | None, float | None] = (None, None)
            if epoch > 0:
                if progress is None or progress.epoch != epoch:
                    progress = self._new_progress(epoch, data)
                with self._saving_on_preemption(epoch, progress):
                    self._train_epoch(data, progress, guard)
                running = (float(progress.loss_sum) / progress.count,
                           float(progress.correct) / progress.count)
            train_seconds = time.perf_counter() - t0
            with self._saving_on_preemption(epoch, progress):
                record, analysed = self._measure(epoch, data, running, guard)
            record.update(seconds=time.perf_counter() - t0, train_seconds=train_seconds)
            diverged = self._finish_epoch(record, analysed, data)
            progress = None
            bar.set_postfix(train=_fmt(record["train_loss"]), val=_fmt(record["val_loss"]))
            if diverged:
                break
        bar.close()

    @contextlib.contextmanager
    def _saving_on_preemption(self, epoch: int, progress: EpochProgress | None) -> Iterator[None]:
        """On a stop request, save where the epoch stands (trained up to progress.step)."""
        try:
            yield
        except Preempted:
            assert self.results is not None
            self._save_state(epoch, progress)
            self.results.write()
            raise

    def _measure(
        self, epoch: int, data: Dataset, running: tuple[float | None, float | None],
        guard: PreemptionGuard,
    ) -> tuple[dict[str, Any], bool]:
        """Train and val loss/accuracy of the current weights, and the scheduled analysis."""
        cfg, results = self.cfg, self.results
        assert results is not None
        self.model.eval()
        analysed = epoch in self.checkpoints and cfg.analysis.enabled
        if analysed:
            analysis = analyse(self.model, self.init_weights, data.x_train, data.y_train,
                               cfg.analysis, cfg.loss, epoch, stop=guard.check(epoch))
            train = (analysis.train_loss, analysis.train_acc)  # the same pass, no extra cost
            results.add_analysis(analysis.record)
            results.add_time("analysis_seconds", analysis.record["seconds"])
            self.features.add(epoch, analysis)
        elif cfg.eval.full_train or epoch == 0:
            train = evaluate(self.model, data.x_train, data.y_train, cfg.loss, cfg.eval.batch_size)
        else:
            train = running
        val = evaluate(self.model, data.x_val, data.y_val, cfg.loss, cfg.eval.batch_size)
        record = {"epoch": epoch, "train_loss": train[0], "val_loss": val[0],
                  "train_acc": train[1], "val_acc": val[1]}
        if epoch > 0:
            record["running_train_loss"], record["running_train_acc"] = running
        return record, analysed

    def _finish_epoch(self, record: dict[str, Any], analysed: bool, data: Dataset) -> bool:
        """Record the epoch, checkpoint it, save the state; True when the run diverged."""
        cfg, results = self.cfg, self.results
        assert results is not None
        epoch = record["epoch"]
        results.add_epoch(record)
        results.add_time("train_seconds", record["train_seconds"])
        results.add_time("total_seconds", record["seconds"])
        log.info(
            "Epoch %d/%d: train loss %s acc %s | val loss %s acc %s | %.1f s",
            epoch, cfg.schedule.epochs, _fmt(record["train_loss"]), _fmt(record["train_acc"]),
            _fmt(record["val_loss"]), _fmt(record["val_acc"]), record["seconds"],
        )
        loss = record["train_loss"]
        diverged = loss is None or not math.isfinite(loss) or not weights_finite(self.model)
        if diverged:
            log.warning("Run diverged at epoch %d (non-finite loss or weights); stopping it", epoch)
            results.set_status("diverged", diverged_epoch=epoch)
        elif epoch in self.checkpoints:
            rel = ckpt.save_checkpoint(self.run_dir, epoch, self._checkpoint_name(epoch), self.model,
                                       self.optimizer.state_dict(), self.config)
            results.add_checkpoint(epoch, rel)
        if epoch == cfg.schedule.epochs and not diverged:
            results.set_status("completed")
        if results.status != "running":
            results.data["timing"]["finished_at"] = time.time()
        if analysed and cfg.analysis.save_features:
            self.features.save(self.run_dir, data.image_shape)
        results.write()
        self._save_state(epoch + 1, None)
        # The last epoch's figures are drawn once, by run(), after the loop.
        if analysed and cfg.trainer.plots == "live" and not diverged and epoch < cfg.schedule.epochs:
            self._refresh_plots(final=False)
        return diverged


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4g}"


def _objective(results: dict[str, Any]) -> float:
    """Final val loss (train loss without a val set); +inf for a diverged run (for optuna)."""
    if results["status"] == "diverged":
        return math.inf
    last = results["epochs"][-1] if results["epochs"] else {}
    value = last.get("val_loss")
    if value is None:
        value = last.get("train_loss")
    return math.inf if value is None or not np.isfinite(value) else float(value)
