"""(Re)analyse the checkpoints of a finished or interrupted run.

    python -m agop_sweep.analyze RUN_DIR [key=value ...]     # also: agop-analyze

Reads the run's resolved config (``.hydra/config.yaml``), applies the overrides (e.g.
``analysis.primary=raw_cos_sqrt`` or ``device=cuda``), recomputes the analysis of every
checkpoint in ``models/`` on all training samples, and rewrites the ``analysis`` section of
``results.json`` (and features.npz and the figures) exactly as the training run would.
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
from agop_sweep import features, plots
from agop_sweep.config import Config, to_container, upgrade_saved_config, validate
from agop_sweep.device import place_job
from agop_sweep.errors import UserError
from agop_sweep.results import Results, read_results

log = logging.getLogger("agop_sweep.analyze")

EPOCH_RE = re.compile(r"^model_epoch_(\d+):")


def load_run_config(run_dir: Path, overrides: list[str]) -> DictConfig:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise UserError(f"{run_dir} is not a run directory ({path} is missing)")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path))
        assert isinstance(saved, dict)
        cfg = OmegaConf.merge(
            OmegaConf.structured(Config), upgrade_saved_config(saved), OmegaConf.from_dotlist(overrides)
        )
    except OmegaConfBaseException as e:
        raise UserError(f"Bad config or override for {run_dir}: {str(e).splitlines()[0]}") from None
    assert isinstance(cfg, DictConfig)
    validate(cfg)
    return cfg


def find_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in (run_dir / ckpt.MODELS_DIR).glob("model_epoch_*.pth"):
        m = EPOCH_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def check_architecture(path: Path, state: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        k = diff[0]
        raise UserError(
            f"{path.name} is from another architecture ({k}: {got.get(k)} in the file, "
            f"{expected.get(k)} for this run's config); analyse it with its own run dir"
        )


def reanalyse(run_dir: Path, overrides: list[str]) -> Results:
    from agop_sweep.analysis import analyse  # heavy imports after argument checks
    from agop_sweep.data import load_dataset
    from agop_sweep.model import build_model
    from agop_sweep.train import run_info

    cfg = load_run_config(run_dir, overrides)
    found = find_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir / ckpt.MODELS_DIR} holds no model_epoch_*.pth checkpoints")
    placement = place_job(cfg.device, cfg.threads, 0, 1)
    device = torch.device(placement.device)
    data = load_dataset(cfg.data, device)
    torch.manual_seed(cfg.seed)  # the run's initial weights, drawn on the CPU as in training
    model = build_model(data.n_features, data.n_classes, cfg.model.width, cfg.model.depth, cfg.model.act)
    init_weights = [w.detach().clone() for w in model.hidden_weights()]
    model = model.to(device).eval()

    results_path = run_dir / "results.json"
    if results_path.exists():
        try:
            results = Results(run_dir, read_results(results_path))
        except ValueError as e:
            raise UserError(f"{e}; move it away to start a fresh results.json") from None
    else:
        results = Results.new(run_dir, run_info(cfg, data, str(device)), to_container(cfg))
        results.set_status("completed")
    results.data["config"]["analysis"] = to_container(cfg)["analysis"]
    results.data["analysis"] = []
    results.data["timing"]["analysis_seconds"] = 0.0
    feature_log = features.FeatureLog()
    for epoch, path in found:
        try:
            state = ckpt.load(path)["state_dict"]
        except Exception as e:
            raise UserError(f"{path} cannot be read as a checkpoint ({type(e).__name__})") from None
        check_architecture(path, state, model)
        if epoch == 0:  # the saved initial weights are the ground truth for "delta"
            init_weights = [state[k].clone() for k in list(state)[:-1]]
        model.load_state_dict(state)
        result = analyse(model, init_weights, data.x_train, data.y_train, cfg.analysis, cfg.loss, epoch)
        results.add_analysis(result.record)
        results.add_checkpoint(epoch, f"{ckpt.MODELS_DIR}/{path.name}")
        results.add_time("analysis_seconds", result.record["seconds"])
        feature_log.add(epoch, result)
        results.write()
    if cfg.analysis.save_features:
        feature_log.save(run_dir, data.image_shape)
    plots.save_run_figures(results.data, run_dir, feature_log)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="agop-analyze", description="Recompute the AGOP/NFM analysis of every checkpoint in a run dir."
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. analysis.primary=raw_cos_sqrt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        results = reanalyse(args.run_dir, args.overrides)
    except UserError as e:
        print(f"agop-analyze: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("Analysed %d checkpoints; wrote %s", len(results.data["analysis"]), results.path)


if __name__ == "__main__":
    main()
