"""(Re)analyze the checkpoints of a finished or interrupted run, or of every run of a sweep.

    python -m agop_sweep.analyze DIR [key=value ...] [--force]   # also: agop-analyze

DIR is a run directory (it holds ``.hydra/config.yaml``) or any directory above runs, such as
a sweep's: then every run below it is re-analysed in turn, with a progress bar.

For each run: reads its resolved config (``.hydra/config.yaml``), applies the overrides (e.g.
``analysis.primary=raw_cos_sqrt`` or ``device=cuda``), recomputes the analysis of every
checkpoint in ``models/`` (names of either kind, see :mod:`agop_sweep.store.checkpoint`) on all
training samples, and rewrites ``results.json`` (and features.npz and the figures) as the
training run would. Nothing earlier is lost:

- a layer entry keeps the numbers the new analysis does not produce (the spectra when
  ``analysis.spectra=false``, the previous primary's ``alpha_star``/``alpha_corr`` under its
  kind in ``alphas``);
- ``results.json`` gets one entry in ``reanalyses`` per run of this command (when, the
  options, the primary before and after, the epochs analysed, the checkpoints it could not
  read), and ``.hydra/config.yaml`` names the analysis that produced the numbers;
- a checkpoint that cannot be read (truncated, missing, or asking to unpickle code) is
  reported by name and its earlier analysis is kept: results.json is written once, at the
  end, and never holds fewer analysed epochs than before.

A sweep's re-analysis is resumable: run the same command again and it skips the runs whose
latest ``reanalyses`` entry has the same options and read every checkpoint (``--force``
re-analyses them too). Exit code 1 when any checkpoint or run could not be analysed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agop_sweep.analyze.names import METRICS, metric_kinds
from agop_sweep.config import structured, to_container, upgrade_saved_config, validate
from agop_sweep.errors import UserError
from agop_sweep.store import checkpoint as ckpt
from agop_sweep.store.atomic import DiskFullError, write_atomic
from agop_sweep.store.record import FILENAME as RESULTS_FILE
from agop_sweep.store.record import (
    RecordError,
    RunRecord,
    git_commit,
    package_version,
    run_info,
)

log = logging.getLogger("agop_sweep.analyze.command")

PROG = "agop-analyze"
CONFIG_FILE = Path(".hydra") / "config.yaml"
# Directories below a sweep that never hold a run.
SKIP_DIRS = {".hydra", "models", "plots", ".submitit", "__pycache__", "tensorboard"}
# Keys of a layer entry that describe the earlier analysis only (why it had no numbers).
TRANSIENT = ("error",)


def load_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory ({path} is missing)")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path))
        assert isinstance(saved, dict)
        cfg = OmegaConf.merge(structured(upgrade_saved_config(saved)), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise UserError(f"Bad config or override for {run_dir}: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, DictConfig)
    validate(cfg)
    return cfg


def find_checkpoints(run_dir: Path, record: RunRecord | None) -> dict[int, Path]:
    """Checkpoint paths by epoch: the files in models/ (names of either kind) and those the
    record names; where both exist for one epoch, the record's file."""
    found: dict[int, Path] = {}
    for path in sorted((run_dir / ckpt.MODELS_DIR).glob(ckpt.GLOB)):
        epoch = ckpt.checkpoint_epoch(path.name)
        if epoch is not None:
            found.setdefault(epoch, path)
    if record is not None:
        for e, rel in record.checkpoints.items():
            path = run_dir / rel
            if path.exists() or int(e) not in found:
                found[int(e)] = path
    return dict(sorted(found.items()))


def check_architecture(path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        k = diff[0]
        raise UserError(
            f"{path.name} is from another architecture ({k}: {got.get(k)} in the file, "
            f"{expected.get(k)} for this run's config); analyze it with its own run dir"
        )


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint; UserError naming the file when it cannot be read."""
    if not path.exists():
        raise UserError(f"{path} is missing")
    try:
        return ckpt.load(path)["state_dict"]
    except ckpt.UnsafeFileError:
        raise
    except Exception as e:
        raise UserError(f"{path} cannot be read as a checkpoint ({type(e).__name__})") from None


def _load_record(run_dir: Path) -> RunRecord | None:
    if not (run_dir / RESULTS_FILE).exists():
        return None
    try:
        return RunRecord.in_dir(run_dir)
    except RecordError as e:
        raise UserError(f"{e}; move it away to start a fresh results.json") from None


# -- keeping the earlier numbers --------------------------------------------------------------------
def _kind(primary: str) -> str | None:
    """The NFM and correlation kind (``delta_cos``) that a primary's alpha_star is for."""
    return "_".join(metric_kinds(primary)) if primary in METRICS else None


def merge_layer(old: dict[str, Any] | None, new: dict[str, Any], old_kind: str | None,
                new_kind: str | None = None) -> dict[str, Any]:
    """A re-analysed layer entry that keeps what only the earlier one had: keys the new
    analysis did not produce, metrics it did not compute, and the exponents of every kind
    (``alphas``), the earlier primary's ``alpha_star``/``alpha_corr`` filed under its kind
    (``old_kind``) when the new primary's (``new_kind``) is another."""
    if old is None:
        return new
    kept = {k: v for k, v in old.items() if k not in TRANSIENT}
    merged = {**kept, **new, "metrics": {**(old.get("metrics") or {}), **(new.get("metrics") or {})}}
    alphas = {**(old.get("alphas") or {}), **(new.get("alphas") or {})}
    if old_kind not in (None, new_kind) and old_kind not in (new.get("alphas") or {}) \
            and old.get("alpha_star") is not None:
        alphas[old_kind] = {"alpha_star": old.get("alpha_star"), "alpha_corr": old.get("alpha_corr")}
    if alphas:
        merged["alphas"] = alphas
    return merged


def merge_analysis(old: dict[str, Any] | None, new: dict[str, Any], old_kind: str | None,
                   new_kind: str | None = None) -> dict[str, Any]:
    """A re-analysed epoch's entry: the new one, each layer merged with its earlier entry."""
    if old is None:
        return new
    before = {entry["layer"]: entry for entry in old.get("layers", [])}
    return {**old, **new, "layers": [merge_layer(before.get(entry["layer"]), entry, old_kind, new_kind)
                                     for entry in new["layers"]]}


@dataclass
class Outcome:
    """What one run's re-analysis did: the record written, the checkpoints it could not read,
    whether it was skipped (already re-analysed with these options)."""

    run_dir: Path
    record: RunRecord | None = None
    problems: list[str] = field(default_factory=list)
    skipped: bool = False


def reanalysis_entry(overrides: Sequence[str], before: str, after: str, epochs: list[int],
                     problems: list[str], seconds: float) -> dict[str, Any]:
    """The record of one re-analysis, as results.json's ``reanalyses`` keeps it."""
    now = time.time()
    return {"at": now, "at_text": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(now)),
            "options": sorted(overrides), "previous_primary": before, "primary": after, "epochs": epochs,
            "unreadable": problems, "complete": not problems, "seconds": round(seconds, 3),
            "version": package_version(), "git": git_commit()}


def already_done(record: RunRecord | None, overrides: Sequence[str]) -> bool:
    """Whether the run's latest re-analysis had these options and read every checkpoint."""
    entries = record.reanalyses if record is not None else []
    last = entries[-1] if entries else None
    return last is not None and last.get("options") == sorted(overrides) and bool(last.get("complete"))


def _write_config(run_dir: Path, cfg: DictConfig) -> None:
    """.hydra/config.yaml with the analysis section that produced the numbers (atomically)."""
    path = run_dir / CONFIG_FILE
    saved = OmegaConf.load(path)
    saved["analysis"] = {**to_container(cfg)["analysis"], "enabled": True}
    text = OmegaConf.to_yaml(saved)
    write_atomic(path, lambda f: f.write(text.encode()))


# -- one run ---------------------------------------------------------------------------------------
class _DataCache:
    """The dataset of the last run analysed: runs of a sweep usually share it (SVHN: 1.75 GiB)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.data: Any = None

    def get(self, cfg: DictConfig, device: torch.device) -> Any:
        from agop_sweep.data.datasets import load_dataset

        key = f"{device}|{OmegaConf.to_yaml(cfg.data)}"
        if key != self.key:
            self.key, self.data = None, None  # free the previous one first
            self.data, self.key = load_dataset(cfg.data, device), key
        return self.data


def reanalyze(run_dir: Path, overrides: list[str],
              cache: _DataCache | None = None) -> tuple[RunRecord, list[str]]:
    """Analyze every readable checkpoint; returns the record written and one line per
    checkpoint that could not be read."""
    from agop_sweep.analyze.layers import analyze_model  # heavy imports after argument checks
    from agop_sweep.figures.run import save_run_figures
    from agop_sweep.model.network import build_network, first_layer_shape
    from agop_sweep.run.device import place_job
    from agop_sweep.store.features import FeatureLog
    from agop_sweep.store.rundir import locked

    start = time.perf_counter()
    cfg = load_run_config(run_dir, overrides)
    record = _load_record(run_dir)
    found = find_checkpoints(run_dir, record)
    if not any(path.exists() for path in found.values()):
        raise UserError(f"{run_dir / ckpt.MODELS_DIR} holds no {ckpt.GLOB} checkpoints")
    with locked(run_dir):
        device = torch.device(place_job(cfg.device, cfg.threads, 0, 1).device)
        data = (cache or _DataCache()).get(cfg, device)
        torch.manual_seed(cfg.seed)  # the run's initial weights, drawn on the CPU as in training
        model = build_network(cfg.model, data.image_shape, data.n_classes)
        init_weights = [w.detach().clone() for w in model.hidden_weights()]
        model = model.to(device).eval()
        if record is None:
            config = to_container(cfg)
            record = RunRecord.start(run_info(config, dataset=data.name, n_train=data.n_train,
                                              n_val=data.n_val, device=str(device)),
                                     config, run_dir / RESULTS_FILE)
            record.mark_completed()
        problems, analyses, feature_log = [], [], FeatureLog()
        for epoch, path in found.items():
            try:
                state = _read_checkpoint(path)
                check_architecture(path, state, model)
            except UserError as e:
                problems.append(str(e))
                continue
            if epoch == 0:  # the saved initial weights are the ground truth for "delta"
                init_weights = [state[k].clone() for k in list(state)[:-1]]
            model.load_state_dict(state)
            result = analyze_model(model, init_weights, data.x_train, data.y_train, cfg.analysis, cfg.loss,
                                   epoch)
            analyses.append((epoch, path, result))
            feature_log.add(epoch, result)
        if not analyses:  # nothing new to record: the earlier results.json and figures stay as they are
            raise UserError(f"none of the {len(problems)} checkpoints of {run_dir} could be analysed, so its "
                            f"files are left as they were; the first: {problems[0]}")
        before = record.primary_metric()
        _merge(record, run_dir, cfg, analyses, found, reanalysis_entry(
            overrides, before, str(cfg.analysis.primary), [e for e, _, _ in analyses], problems,
            time.perf_counter() - start))
        try:
            record.save()
            _write_config(run_dir, cfg)
            if cfg.analysis.save_features:
                feature_log.save(run_dir, first_layer_shape(model, data.image_shape))
            save_run_figures(record, run_dir, feature_log)
        except DiskFullError as e:  # atomic's advice (resume=true) is a training run's, not ours
            raise e.advising(f"analyse the run again: {analyze_command(run_dir, overrides)}") from None
    return record, problems


def analyze_command(run_dir: Path, overrides: Sequence[str]) -> str:
    """The command that re-analyses ``run_dir`` alone (a sweep's re-run would skip a run whose
    results.json was written before the disk filled up), quoted for a shell."""
    return shlex.join(["python", "-m", "agop_sweep.analyze", str(run_dir), *overrides])


def _merge(record: RunRecord, run_dir: Path, cfg: DictConfig, analyses: list, found: dict[int, Path],
           entry: dict[str, Any]) -> None:
    """The new analyses into ``record``, each merged with the earlier one of its epoch (see
    :func:`merge_analysis`); earlier ones stay for epochs not re-analyzed, and the checkpoint
    map names only files that exist."""
    old_kind, new_kind = _kind(record.primary_metric()), _kind(str(cfg.analysis.primary))
    earlier = {a["epoch"]: a for a in record.analysis}
    # What analyzed the checkpoints now: enabled even when training ran with analysis=off.
    config = {**record.config, "analysis": {**to_container(cfg)["analysis"], "enabled": True}}
    checkpoints = {int(e): rel for e, rel in record.checkpoints.items()
                   if not (int(e) in found and not found[int(e)].exists())}
    checkpoints.update({epoch: path.relative_to(run_dir).as_posix() for epoch, path, _ in analyses})
    merged = [merge_analysis(earlier.get(epoch), result.record, old_kind, new_kind)
              for epoch, _, result in analyses]
    record.reanalysed(config, merged, checkpoints, entry)


# -- a sweep ---------------------------------------------------------------------------------------
def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def run_dirs(top: Path) -> Iterator[Path]:
    """Every run directory below ``top`` (``.hydra/config.yaml`` and a ``models/`` directory),
    in name order."""
    for root, subdirs, _ in os.walk(top):
        here = Path(root)
        if is_run_dir(here) and (here / ckpt.MODELS_DIR).is_dir():
            yield here
        subdirs[:] = sorted(s for s in subdirs if s not in SKIP_DIRS)


def analyze_one(run_dir: Path, overrides: list[str], cache: _DataCache, skip_done: bool) -> Outcome:
    """One run of a sweep: skipped when already re-analysed with these options (``skip_done``);
    a run that cannot be analysed at all becomes one problem line, and the sweep goes on."""
    try:
        if skip_done and already_done(_load_record(run_dir), overrides):
            return Outcome(run_dir, skipped=True)
        record, problems = reanalyze(run_dir, overrides, cache)
    except (UserError, OSError) as e:
        return Outcome(run_dir, problems=[f"{run_dir}: {e}"])
    return Outcome(run_dir, record, problems)


def analyze_sweep(top: Path, overrides: list[str], force: bool = False) -> list[Outcome]:
    """Re-analyse every run below ``top``, with a progress bar (on a terminal) and one log line
    per run; runs already re-analysed with these options are skipped unless ``force``."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    dirs = list(run_dirs(top))
    if not dirs:
        raise UserError(f"{top} is not a run directory ({top / CONFIG_FILE} is missing) and holds no runs "
                        f"(directories with {CONFIG_FILE} and {ckpt.MODELS_DIR}/)")
    cache = _DataCache()
    outcomes = []
    # The bar on a terminal (tqdm's disable=None); elsewhere the log lines say the same.
    with logging_redirect_tqdm(), tqdm(dirs, desc="re-analysing", unit="run", file=sys.stderr,
                                       disable=None) as bar:
        for i, run_dir in enumerate(bar, 1):
            name = run_dir.relative_to(top).as_posix()
            bar.set_postfix_str(name[-40:])
            outcome = analyze_one(run_dir, overrides, cache, skip_done=not force)
            what = ("skipped: already re-analysed with these options" if outcome.skipped else "failed"
                    if outcome.record is None else f"{len(outcome.record.analysis)} analysed epochs")
            log.info("[%d/%d] %s: %s", i, len(dirs), name, what)
            outcomes.append(outcome)
    return outcomes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Recompute the AGOP/NFM analysis of every checkpoint in a run dir, or of "
                               "every run below a directory (a sweep).")
    parser.add_argument("run_dir", type=Path, metavar="DIR",
                        help="a run directory, or a directory above runs")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. analysis.primary=raw_cos_sqrt")
    parser.add_argument("--force", action="store_true",
                        help="below a sweep: also re-analyse runs already re-analysed with these options")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # one INFO line per font subset
    try:
        if is_run_dir(args.run_dir) or not args.run_dir.is_dir():
            record, problems = reanalyze(args.run_dir, args.overrides)
            outcomes = [Outcome(args.run_dir, record, problems)]
            log.info("Analyzed %d checkpoints; wrote %s", len(record.analysis), record.path)
        else:
            outcomes = analyze_sweep(args.run_dir, args.overrides, args.force)
    except (UserError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    _report(outcomes)


def _report(outcomes: list[Outcome]) -> None:
    """A summary line for a sweep, every problem on stderr, exit 1 when there is one."""
    problems = [line for o in outcomes for line in o.problems]
    if len(outcomes) > 1:
        done = sum(o.record is not None for o in outcomes)
        skipped = sum(o.skipped for o in outcomes)
        log.info("Re-analysed %d of %d runs (%d skipped: already re-analysed with these options; --force "
                 "redoes them)", done, len(outcomes), skipped)
    if problems:
        for line in problems:
            print(f"{PROG}: error: {line}", file=sys.stderr)
        what = "checkpoint(s) or run(s) could not be analysed" if len(outcomes) > 1 else \
            "checkpoint(s) could not be read"
        print(f"{PROG}: error: {len(problems)} {what}; their earlier analyses are kept", file=sys.stderr)
        raise SystemExit(1)

