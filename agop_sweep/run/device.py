"""Which device and how many CPU threads a job gets, so parallel jobs do not collide."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from agop_sweep.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    device: str
    threads: int


def choose_device(requested: str, n_gpus: int, job_num: int = 0, parallel: bool = False) -> str:
    """Pure: map ``device`` (auto | cpu | cuda | cuda:N) to a concrete device string.

    With several jobs in parallel on one machine, ``auto``/``cuda`` spread them over the
    visible GPUs by job number; under SLURM each job usually sees one GPU
    (CUDA_VISIBLE_DEVICES), which is then cuda:0.
    """
    if requested == "cpu" or (requested == "auto" and n_gpus == 0):
        return "cpu"
    if requested.startswith("cuda:"):
        index = int(requested.split(":", 1)[1])
        if index >= n_gpus:
            raise ConfigError(f"Invalid config: device={requested!r}: only {n_gpus} GPU(s) are visible")
        return requested
    if n_gpus == 0:
        raise ConfigError("Invalid config: device='cuda': no GPU is visible; use device=auto or device=cpu")
    return f"cuda:{job_num % n_gpus if parallel else 0}"


def choose_threads(requested: int, n_cores: int, n_parallel: int) -> int:
    """Pure: ``requested`` if > 0, else this job's share of the cores (at least one)."""
    if requested > 0:
        return requested
    return max(1, n_cores // max(1, n_parallel))


def available_cores(environ: Mapping[str, str] = os.environ) -> int:
    """The cores this process may use: its CPU affinity (cgroups, cpusets), and no more than
    ``SLURM_CPUS_PER_TASK`` when set. SLURM without its affinity or cgroup plugins leaves a
    job the whole node's affinity, so the job's ``cpus_per_task`` is what it was given."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    given = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if given.isdigit() and int(given) > 0:
        if int(given) < cores:
            log.debug("SLURM_CPUS_PER_TASK=%s of %d cores", given, cores)
        return min(cores, int(given))
    return cores


def place_job(requested_device: str, requested_threads: int, job_num: int, n_parallel: int) -> Placement:
    """Pick and apply this job's device and thread count (per job: joblib reuses workers)."""
    import torch  # here, so that config errors are reported before torch loads

    n_gpus = torch.cuda.device_count()
    device = choose_device(requested_device, n_gpus, job_num, parallel=n_parallel > 1)
    threads = choose_threads(requested_threads, available_cores(), n_parallel)
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        name = torch.cuda.get_device_name(torch.device(device))
        log.info("Job %d on %s (%s), %d CPU threads", job_num, device, name, threads)
    else:
        log.info("Job %d on cpu, %d threads", job_num, threads)
    return Placement(device, threads)


def effective_precision(precision: str, device: str) -> str:
    """``trainer.precision`` on this device: ``fp16_on_cuda`` is fp16 on CUDA, fp32 elsewhere."""
    if str(precision) == "fp16_on_cuda":
        return "fp16" if str(device).startswith("cuda") else "fp32"
    return str(precision)


def set_precision(precision: str) -> None:
    """fp32: exact float32 matmuls; tf32/bf16/fp16: TF32 matmuls on CUDA (bf16 and fp16 add
    autocast in the training step). ``precision`` is the effective one."""
    import torch

    torch.set_float32_matmul_precision("highest" if precision == "fp32" else "high")
