"""The training loop: epochs of minibatch steps, evaluation and the scheduled analysis.

Data lives on the device as whole tensors; a batch is an index slice of the epoch's
permutation. Nothing syncs with the host inside an epoch: the running loss is summed on
the device and read once per epoch. After every epoch (:meth:`Trainer.finish_epoch`) the
record is updated, then the epoch is persisted in this order: the scheduled checkpoint,
features.npz, results.json, state.pt; only then are the observers told (the figures and the
trackers, :mod:`agop_sweep.run.observers`). state.pt is written last, so that a run killed at
any moment, or stopped by a full disk, continues from a state that every other file agrees
with or is behind.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from agop_sweep.analyze.layers import Analysis, analyze_model
from agop_sweep.config import to_container
from agop_sweep.data.datasets import Dataset, load_dataset
from agop_sweep.data.seed_order import SeedOrder
from agop_sweep.errors import one_line
from agop_sweep.model.mlp import evaluate, loss_fn, weights_finite
from agop_sweep.model.network import Network, build_network, first_layer_shape
from agop_sweep.model.ns_precision import warn_if_slow
from agop_sweep.model.optim import OptimizerSet, build_optimizer
from agop_sweep.run.device import Placement, effective_precision
from agop_sweep.run.observers import EpochEnd, FiguresObserver, Observer
from agop_sweep.run.preemption import Preempted, PreemptionGuard
from agop_sweep.run.slurm import slurm_job_info
from agop_sweep.store import checkpoint as ckpt
from agop_sweep.store.atomic import disk_full
from agop_sweep.store.features import FeatureLog
from agop_sweep.store.record import EpochEntry, RunRecord, run_info
from agop_sweep.store.schema import format_number
from agop_sweep.store.state import EpochProgress, ResumeState, save_state

log = logging.getLogger(__name__)


class Trainer:
    """One run in ``run_dir``: :meth:`run` trains, analyses and records; returns the objective.

    ``observers`` observe the run after the figures (the trackers); they never persist its state.
    """

    def __init__(self, cfg: DictConfig, run_dir: Path, placement: Placement,
                 observers: Sequence[Observer] = ()):
        self.started_at = time.time()
        self.cfg = cfg
        self.run_dir = run_dir
        self.device = torch.device(placement.device)
        self.precision = effective_precision(cfg.trainer.precision, placement.device)
        self.config = to_container(cfg)
        self.checkpoints = set(cfg.schedule.checkpoints)
        self.features = FeatureLog()
        self.extra_observers = list(observers)
        self.record: RunRecord

    # -- the run, step by step -------------------------------------------------------------------
    def run(self, state: ResumeState | None = None) -> float:
        """Train from scratch, or from ``state``: a claimed run dir's state.pt of a run that has
        not ended (the claim answers a finished one itself)."""
        data = load_dataset(self.cfg.data, self.device)
        self.setup(data)
        first_epoch, progress = self.start(data, state)
        try:
            # The guard stays on through the final observers: a signal that comes after the last
            # epoch finds the run complete and changes nothing.
            with PreemptionGuard() as guard, logging_redirect_tqdm():
                self.train(data, first_epoch, progress, guard)
                self.end_run()
        except Preempted as p:
            log.warning("Stopped by a signal at epoch %d step %d; state saved. Continue with resume=true",
                        p.epoch, p.step)
            self.end_run()
            guard.chain()
            return math.nan
        except BaseException as e:
            if not isinstance(e, KeyboardInterrupt):  # an interruption like a signal, not a failure
                self.record_failure(e)
                self.end_run()
            raise
        return self.record.objective()

    def setup(self, data: Dataset) -> None:
        """Model, optimizer, shuffling RNG and observers for ``data``."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        # Init on the CPU so that the initial weights are the same on every device.
        model = build_network(cfg.model, data.image_shape, data.n_classes)
        self.init_weights = [w.detach().clone() for w in model.hidden_weights()]
        self.model: Network = model.to(self.device)
        self.optimizer: OptimizerSet = build_optimizer(cfg.optimizer, self.model)
        if self.optimizer.ns_dtype is not None:
            warn_if_slow(self.optimizer.ns_dtype, self.device.type, self.optimizer.orthogonalized_shapes(),
                         cfg.optimizer.ns_steps, math.ceil(data.n_train / cfg.trainer.batch_size))
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.seed_order = None
        if str(OmegaConf.select(cfg.data, "order", default="default")) == "seed":
            self.seed_order = SeedOrder(cfg.seed, data.n_train, data.n_features, cfg.model.width,
                                        cfg.model.depth, data.n_classes, cfg.schedule.checkpoints)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.forward = self._compiled_forward()
        self.image_shape = first_layer_shape(model, data.image_shape)  # features.npz's pictures
        self.observers: list[Observer] = [FiguresObserver(cfg.trainer.plots, self.features),
                                          *self.extra_observers]

    def start(self, data: Dataset, state: ResumeState | None) -> tuple[int, EpochProgress | None]:
        """A new record, or everything restored from ``state``: the first epoch to run and
        where it stands."""
        progress, first_epoch = None, 0
        if state is None:
            info = run_info(self.config, dataset=data.name, n_train=data.n_train, n_val=data.n_val)
            self.record = RunRecord.start(info, self.config, self.run_dir / "results.json", self.started_at)
        else:
            progress, first_epoch = self.restore(state), state.next_epoch
            log.info("Resuming %s at epoch %d%s", self.run_dir, first_epoch,
                     f" step {progress.step}" if progress else "")
            self.record.resumed()
        if self.optimizer.ns_dtype is not None:
            self.record.update_run(ns_dtype=self.optimizer.ns_dtype)
        self.record.update_run(**data.run_facts())  # shape, classes, normalisation
        self.record.update_run(device=str(self.device), precision=self.precision,
                               threads=torch.get_num_threads(), pid=os.getpid(), host=socket.gethostname(),
                               **slurm_job_info())  # aggregate asks SLURM about a stopped run's job
        unscheduled = self.cfg.schedule.epochs - max(self.checkpoints)
        if unscheduled > 0:
            log.warning("schedule.checkpoints ends at epoch %d: the last %d epoch(s) up to %d are trained "
                        "but neither analysed nor checkpointed", max(self.checkpoints), unscheduled,
                        self.cfg.schedule.epochs)
        return first_epoch, progress

    def train(self, data: Dataset, first_epoch: int, progress: EpochProgress | None,
              guard: PreemptionGuard) -> None:
        """Epochs ``first_epoch``..``schedule.epochs`` (epoch 0 = the initial weights, no steps)."""
        epochs = self.cfg.schedule.epochs
        bar = tqdm(range(first_epoch, epochs + 1), desc=str(self.cfg.optimizer.name), unit="epoch",
                   initial=first_epoch, total=epochs + 1, disable=None)
        for epoch in bar:
            t0 = time.perf_counter()
            running: tuple[float | None, float | None] = (None, None)
            if epoch > 0:
                if progress is None or progress.epoch != epoch:
                    progress = self.new_epoch(epoch, data)
                with self._saving_on_preemption(epoch, progress):
                    self.train_epoch(data, progress, guard)
                running = progress.running()
            train_seconds = time.perf_counter() - t0
            with self._saving_on_preemption(epoch, progress):
                entry, analysis = self.measure(epoch, data, running, guard)
            entry.update(seconds=time.perf_counter() - t0, train_seconds=train_seconds)
            event = self.finish_epoch(entry, analysis)
            progress = None
            bar.set_postfix(train=format_number(entry["train_loss"]), val=format_number(entry["val_loss"]))
            if event.diverged:
                break
        bar.close()

    # -- one epoch -----------------------------------------------------------------------------------
    def new_epoch(self, epoch: int, data: Dataset) -> EpochProgress:
        """The epoch's permutation, drawn on the CPU generator (the same on every device), or
        the original script's (``data.order=seed``)."""
        if self.seed_order is not None:
            perm = self.seed_order.permutation(epoch)
        else:
            perm = torch.randperm(data.n_train, generator=self.shuffle)
        return EpochProgress.start(epoch, perm.to(self.device))

    def train_epoch(self, data: Dataset, progress: EpochProgress, guard: PreemptionGuard) -> None:
        """The minibatch steps from ``progress.step`` to the end of the epoch."""
        bs = self.cfg.trainer.batch_size
        n_steps = math.ceil(data.n_train / bs)
        for step in range(progress.step, n_steps):
            if guard.requested:
                progress.step = step
                raise Preempted(progress.epoch, step)
            idx = progress.perm[step * bs : (step + 1) * bs]
            xb, yb = data.x_train[idx], data.y_train[idx]
            logits, loss = self._forward_loss(xb, yb)
            self.optimizer.zero_grad()
            if self.scaler is None:
                loss.backward()
                self.optimizer.step()
            else:  # fp16: the loss scaled against underflow, steps skipped on inf/NaN gradients
                self.scaler.scale(loss).backward()
                for opt in self.optimizer.optimizers.values():
                    self.scaler.step(opt)
                self.scaler.update()
            with torch.no_grad():
                progress.loss_sum += loss.detach().double() * len(idx)
                progress.correct += (logits.detach().argmax(1) == yb).sum()
            progress.count += len(idx)
        progress.step = n_steps

    def measure(self, epoch: int, data: Dataset, running: tuple[float | None, float | None],
                guard: PreemptionGuard) -> tuple[EpochEntry, Analysis | None]:
        """Train and val loss/accuracy of the current weights, and the scheduled analysis."""
        cfg = self.cfg
        self.model.eval()
        analysis = None
        # Non-finite weights have no NFM or AGOP: the epoch's losses mark the run diverged.
        if epoch in self.checkpoints and cfg.analysis.enabled and weights_finite(self.model):
            analysis = analyze_model(self.model, self.init_weights, data.x_train, data.y_train,
                                     cfg.analysis, cfg.loss, epoch, stop=guard.check(epoch))
            train = (analysis.train_loss, analysis.train_acc)  # the same pass, no extra cost
        elif cfg.eval.full_train or epoch == 0:
            train = evaluate(self.model, data.x_train, data.y_train, cfg.loss, cfg.eval.batch_size)
        else:
            train = running
        val = evaluate(self.model, data.x_val, data.y_val, cfg.loss, cfg.eval.batch_size)
        entry: EpochEntry = {"epoch": epoch, "train_loss": train[0], "val_loss": val[0],
                             "train_acc": train[1], "val_acc": val[1]}
        if epoch > 0:
            entry["running_train_loss"], entry["running_train_acc"] = running
        return entry, analysis

    def finish_epoch(self, entry: EpochEntry, analysis: Analysis | None) -> EpochEnd:
        """Record the epoch, persist it, then tell the observers."""
        epoch = entry["epoch"]
        diverged = self.record_epoch(entry, analysis)
        self.persist(epoch, analysis, diverged)
        last = self.cfg.schedule.epochs
        event = EpochEnd(epoch, last, entry, analysis, self.record, self.run_dir, diverged)
        for observer in self.observers:
            observer.on_epoch_end(event)
        return event

    def record_epoch(self, entry: EpochEntry, analysis: Analysis | None) -> bool:
        """The epoch into the record (and its analysis into the feature log); whether the run
        diverged, which ends it."""
        record, epoch, last = self.record, entry["epoch"], self.cfg.schedule.epochs
        record.finish_epoch(entry, None if analysis is None else analysis.record)
        if analysis is not None:
            self.features.add(epoch, analysis)
        log.info("Epoch %d/%d: train loss %s acc %s | val loss %s acc %s | %.1f s", epoch, last,
                 *(format_number(entry[key]) for key in ("train_loss", "train_acc", "val_loss", "val_acc")),
                 entry["seconds"])
        loss = entry["train_loss"]
        diverged = loss is None or not math.isfinite(loss) or not weights_finite(self.model)
        if diverged:
            log.warning("Run diverged at epoch %d (non-finite loss or weights); stopping it", epoch)
            record.mark_diverged(epoch)
        elif epoch == last:
            record.mark_completed()
        return diverged

    def persist(self, epoch: int, analysis: Analysis | None, diverged: bool) -> None:
        """The epoch's files: the scheduled checkpoint, features.npz, results.json, and last
        state.pt, which continues the run at the next epoch."""
        if epoch in self.checkpoints and not diverged:
            self.record.add_checkpoint(epoch, self.save_checkpoint(epoch))
        if analysis is not None and self.cfg.analysis.save_features:
            self.features.save(self.run_dir, self.image_shape)
        self.record.save()
        self.save_state(epoch + 1, None)

    # -- files ---------------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> str:
        name = ckpt.model_checkpoint_name(epoch, self.cfg.data.name, self.cfg.model)
        optimizer = self.optimizer.state_dict() if self.cfg.trainer.checkpoint_optimizer else {}
        # The run's config as results.json records it: a resumed run's checkpoints then equal an
        # uninterrupted run's, not differing in resume=true; this command still names the files.
        return ckpt.save_checkpoint(self.run_dir, epoch, name, self.model, optimizer,
                                    dict(self.record.config), names=ckpt.names_of(self.config))

    def save_state(self, next_epoch: int, progress: EpochProgress | None) -> None:
        save_state(self.run_dir, ResumeState(
            next_epoch=next_epoch,
            progress=None if progress is None else progress.to_dict(),
            model=ckpt.cpu_state_dict(self.model),
            optimizer=ckpt.to_cpu(self.optimizer.state_dict()),
            init_weights=self.init_weights,
            shuffle_rng=self.shuffle.get_state(),
            torch_rng=torch.get_rng_state(),
            results=self.record.document(),
            features=self.features.to_dict(),
            config=self.config,
            observers={o.name: s for o in self.observers if (s := o.state_dict())},
            grad_scaler=None if self.scaler is None else self.scaler.state_dict(),
        ))

    def restore(self, state: ResumeState) -> EpochProgress | None:
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.init_weights = state.init_weights
        self.shuffle.set_state(state.shuffle_rng)
        torch.set_rng_state(state.torch_rng)
        self.record = RunRecord(state.results, self.run_dir / "results.json")
        self.features.load_dict(state.features)  # in place: the figures hold this very log
        if self.scaler is not None and state.grad_scaler:
            self.scaler.load_state_dict(state.grad_scaler)
        for observer in self.observers:
            observer.load_state_dict(state.observers.get(observer.name, {}))
        return None if state.progress is None else EpochProgress.from_dict(state.progress, self.device)

    def end_run(self) -> None:
        """Tell the observers that the run ended, however it ended: the record's status says
        completed, diverged, failed or stopped (trackers close their run with it, figures draw a
        finished one). Each observer on its own: one that fails is logged, never hides the
        others and never changes the run's status."""
        for observer in self.observers:
            try:
                observer.on_run_end(self.record, self.run_dir)
            except Exception:
                log.exception("Observer %s failed at the end of the run", observer.name)

    def record_failure(self, error: BaseException) -> None:
        self.record.mark_failed(one_line(error))
        try:
            self.record.save()
        except Exception as e:
            if not disk_full(e):
                log.exception("Could not record the failure in results.json")
            # A full disk is the error being reported: one line says it, and state.pt resumes.

    @contextlib.contextmanager
    def _saving_on_preemption(self, epoch: int, progress: EpochProgress | None) -> Iterator[None]:
        """On a stop request, save where the epoch stands (trained up to progress.step)."""
        try:
            yield
        except Preempted:
            self.save_state(epoch, progress)
            self.record.save()
            raise

    # -- the forward pass ----------------------------------------------------------------------------
    def _compiled_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.cfg.trainer.compile:
            return self.model
        try:
            return torch.compile(self.model)  # type: ignore[return-value]
        except Exception as e:
            log.warning("torch.compile unavailable (%s); training eagerly", e)
            return self.model

    def autocast(self) -> torch.autocast:
        """bf16 or fp16 autocast for the forward pass when trainer.precision asks for it."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def _forward_loss(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and loss of a batch; falls back to eager once if the compiled model fails."""
        try:
            with self.autocast():
                logits = self.forward(xb)
                return logits, loss_fn(self.cfg.loss, logits.float(), yb)
        except Exception as e:
            if self.forward is self.model:
                raise
            log.warning("torch.compile failed (%s); training eagerly", e)
            self.forward = self.model
            return self._forward_loss(xb, yb)
