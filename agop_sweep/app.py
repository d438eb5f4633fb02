"""The Hydra application: ``python -m agop_sweep`` and the ``agop-sweep`` console script."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agop_sweep.config import register_configs, validate
from agop_sweep.device import available_cores

log = logging.getLogger(__name__)

register_configs()


def _parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (joblib's n_jobs)."""
    hc = HydraConfig.get()
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=None)
    if n_jobs is None:
        return 1
    if n_jobs < 0:  # joblib: -1 = all cores, -2 = all but one, ...
        return max(1, available_cores() + 1 + n_jobs)
    return int(n_jobs)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def run(cfg: DictConfig) -> float:
    """One training run; returns the final val loss (the objective of a learning-rate search)."""
    started_at = time.time()
    validate(cfg)  # before any heavy work: a bad value costs nothing
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    job_num = hc.job.num if hc.mode.name == "MULTIRUN" else 0
    from agop_sweep.device import place_job, set_precision

    placement = place_job(cfg.device, cfg.threads, job_num, _parallel_jobs())
    set_precision(cfg.trainer.precision, placement.device)

    from agop_sweep.train import Trainer

    log.info("Run dir %s", run_dir)
    objective = Trainer(cfg, run_dir, placement, started_at).run()
    return objective if not math.isnan(objective) else math.inf


def main() -> None:
    run()


if __name__ == "__main__":
    main()
