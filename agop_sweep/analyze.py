"""(Re)analyze the checkpoints of a finished or interrupted run.

    python -m agop_sweep.analyze RUN_DIR [key=value ...]     # also: agop-analyze

Reads the run's resolved config (``.hydra/config.yaml``), applies the overrides (e.g.
``analysis.primary=raw_cos_sqrt`` or ``device=cuda``), recomputes the analysis of every
checkpoint in ``models/`` on all training samples, and rewrites the ``analysis`` section of
``results.json`` (and features.npz and the figures) as the training run would.

A checkpoint that cannot be read (truncated, missing, or asking to unpickle code) is
reported by name and its earlier analysis is kept: results.json is written once, at the
end, and never holds fewer analysed epochs than before. Exit code 1 when any checkpoint
could not be read.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agop_sweep import checkpoint as ckpt
from agop_sweep.config import structured, to_container, upgrade_saved_config, validate
from agop_sweep.errors import UserError
from agop_sweep.record import FILENAME as RESULTS_FILE
from agop_sweep.record import RecordError, RunRecord, Status

log = logging.getLogger("agop_sweep.analyze")

EPOCH_RE = re.compile(r"^model_epoch_(\d+):")


def load_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
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
    """Checkpoint paths by epoch: the files in models/ and those the record names."""
    found: dict[int, Path] = {}
    if record is not None:
        found |= {int(e): run_dir / rel for e, rel in record.checkpoints.items()}
    for path in (run_dir / ckpt.MODELS_DIR).glob("model_epoch_*.pth"):
        if m := EPOCH_RE.match(path.name):
            found[int(m.group(1))] = path
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


def reanalyze(run_dir: Path, overrides: list[str]) -> tuple[RunRecord, list[str]]:
    """Analyze every readable checkpoint; returns the record written and one line per
    checkpoint that could not be read."""
    from agop_sweep.analysis import analyze_model  # heavy imports after argument checks
    from agop_sweep.data import load_dataset
    from agop_sweep.device import place_job
    from agop_sweep.features import FeatureLog
    from agop_sweep.figures.run import save_run_figures
    from agop_sweep.model import build_model
    from agop_sweep.provenance import run_info
    from agop_sweep.rundir import locked

    cfg = load_run_config(run_dir, overrides)
    record = _load_record(run_dir)
    found = find_checkpoints(run_dir, record)
    if not any(path.exists() for path in found.values()):
        raise UserError(f"{run_dir / ckpt.MODELS_DIR} holds no model_epoch_*.pth checkpoints")
    with locked(run_dir):
        device = torch.device(place_job(cfg.device, cfg.threads, 0, 1).device)
        data = load_dataset(cfg.data, device)
        torch.manual_seed(cfg.seed)  # the run's initial weights, drawn on the CPU as in training
        model = build_model(data.n_features, cfg.model.width, cfg.model.depth, data.n_classes,
                            cfg.model.act, init=cfg.model.init)
        init_weights = [w.detach().clone() for w in model.hidden_weights()]
        model = model.to(device).eval()
        if record is None:
            info = run_info(cfg, data, str(device))
            record = RunRecord.new(info, to_container(cfg), run_dir / RESULTS_FILE)
            record.set_status(Status.COMPLETED)
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
        _merge(record, run_dir, cfg, analyses, found)
        record.save()
        if cfg.analysis.save_features:
            feature_log.save(run_dir, data.image_shape)
        save_run_figures(record, run_dir, feature_log)
    return record, problems


def _merge(record: RunRecord, run_dir: Path, cfg: DictConfig, analyses: list, found: dict[int, Path]) -> None:
    """The new analyses into ``record``; earlier ones stay for epochs not re-analyzed, and the
    checkpoint map names only files that exist."""
    # What analyzed the checkpoints now: enabled even when training ran with analysis=off.
    record.config["analysis"] = {**to_container(cfg)["analysis"], "enabled": True}
    record.timing["analysis_seconds"] = 0.0
    for epoch, path, result in analyses:
        record.add_analysis(result.record)
        record.add_time("analysis_seconds", result.record["seconds"])
        record.add_checkpoint(epoch, path.relative_to(run_dir).as_posix())
    for epoch, path in found.items():
        if not path.exists():
            record.checkpoints.pop(str(epoch), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="agop-analyze", description="Recompute the AGOP/NFM analysis of every checkpoint in a run dir."
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. analysis.primary=raw_cos_sqrt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # one INFO line per font subset
    try:
        record, problems = reanalyze(args.run_dir, args.overrides)
    except (UserError, OSError) as e:
        print(f"agop-analyze: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("Analyzed %d checkpoints; wrote %s", len(record.analysis), record.path)
    if problems:
        for line in problems:
            print(f"agop-analyze: error: {line}", file=sys.stderr)
        print(f"agop-analyze: error: {len(problems)} checkpoint(s) could not be read; their earlier "
              "analyses are kept", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
