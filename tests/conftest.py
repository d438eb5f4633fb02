"""Shared helpers: run the app as a subprocess or in this process (a command that stops before
training), the runs that many tests share (a finished tiny run, a joblib sweep), compose configs
in-process, write SVHN-format .mat files, serve files from a local HTTP server, and report the
CPU time of each test file (AGOP_CPU_REPORT=<path>)."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from agop_sweep.config import is_run_control_key, register_configs

# A run that takes seconds: synthetic 8x8 "images", a narrow net, three epochs, no figures
# (drawing them is half of such a run's CPU time): tests of figures ask for trainer.plots=end.
TINY = [
    "data=synthetic", "data.n_train=256", "data.n_val=64", "data.n_features=64",
    "data.image_shape=[1,8,8]", "model.width=16", "model.depth=2", "schedule=smoke",
    "trainer.plots=off", "device=cpu",
]


def overridden(base: list[str], *overrides: str) -> list[str]:
    """``base`` with ``overrides`` ("key=value"): one replaces base's entry for the same key, the
    others are added after it."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in base if o.split("=", 1)[0] not in keys] + list(overrides)


def tiny(*overrides: str) -> list[str]:
    """TINY with ``overrides``, each replacing TINY's entry for its key (see overridden)."""
    return overridden(TINY, *overrides)


def app_env() -> dict[str, str]:
    """The environment for app subprocesses: Hydra's short error report, unbuffered output."""
    return {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, module: str = "agop_sweep"
) -> subprocess.CompletedProcess[str]:
    """``python -m agop_sweep <args>`` in ``cwd``; pass hydra.run.dir / hydra.sweep.dir under tmp_path."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=app_env(), capture_output=True,
        text=True, timeout=timeout,
    )


_LAUNCH = ("import sys\nfrom agop_sweep.run.app import main\n"
           "sys.argv = ['agop_sweep'] + sys.argv[1:]\nmain()\n")


def run_app(*args: str, cwd: Path, patch: str = "", timeout: float = 300
            ) -> subprocess.CompletedProcess[str]:
    """The app with ``args`` in a fresh interpreter, after running ``patch`` (code that injects
    a fault); without a patch, ``python -m agop_sweep <args>``."""
    if not patch:
        return run_cli(*args, cwd=cwd, timeout=timeout)
    return subprocess.run([sys.executable, "-c", patch + _LAUNCH, *args], cwd=cwd, env=app_env(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def app_here(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
             ) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``app_here(*args, cwd=...)``: ``python -m agop_sweep <args>`` run by this process, with its
    exit code, stdout and stderr as run_cli returns them, without an interpreter's start: for a
    command that stops before it trains (a refusal, a config error, a finished run resumed) or a
    run whose test needs no process of its own (no signal, no exit status of a dying process).
    What the app changes in the process (logging, Hydra's singletons, the environment, signal
    handlers, torch's threads and matmul precision, the working directory) is put back after
    each command."""
    import importlib.util
    import logging
    import signal

    import torch
    from hydra.core.hydra_config import HydraConfig

    from agop_sweep.run.app import main

    entry = importlib.util.find_spec("agop_sweep.__main__").origin  # argv[0] of python -m agop_sweep
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        environ, threads = dict(os.environ), torch.get_num_threads()
        precision = torch.get_float32_matmul_precision()
        handlers_of = {s: signal.getsignal(s) for s in signals}
        capfd.readouterr()
        try:
            with monkeypatch.context() as mp:
                mp.chdir(cwd)
                mp.setattr(sys, "argv", [entry, *args])
                os.environ.update(HYDRA_FULL_ERROR="0")
                try:
                    main()
                    code = 0
                except SystemExit as stop:
                    code = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1
        finally:
            for handler in root.handlers:
                if handler not in handlers:
                    handler.close()
            root.handlers[:] = handlers
            root.setLevel(level)
            GlobalHydra.instance().clear()
            HydraConfig.instance().cfg = None  # type: ignore[assignment]
            os.environ.clear()
            os.environ.update(environ)
            torch.set_num_threads(threads)
            torch.set_float32_matmul_precision(precision)
            for sig, handler in handlers_of.items():
                signal.signal(sig, handler)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([entry, *args], code, out, err)

    return run


def finished_tiny_run(root: Path, *extra: str) -> Path:
    """A finished TINY run with its figures in ``root/run`` (with ``extra`` overrides); tests
    copy it first."""
    proc = run_cli(*tiny("trainer.plots=end", *extra), f"hydra.run.dir={root / 'run'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` in ``tmp_path/run``, to change without touching the original."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished TINY run for the whole session: tests that change it work on ``copy_of`` it."""
    return finished_tiny_run(tmp_path_factory.mktemp("finished"))


class Rendezvous(Callback):
    """A Hydra callback for tests (``+hydra.callbacks.rendezvous``): each job, at its start,
    leaves its pid in ``dir`` and waits until ``parties`` jobs have, then writes down the pids it
    saw. Jobs that run at once meet whatever the machine's speed; a job that waited alone for
    ``timeout`` seconds (its partner never came: they ran one after the other) goes on, and its
    record shows it."""

    def __init__(self, dir: str, parties: int, timeout: float = 300) -> None:
        self.dir, self.parties, self.timeout = Path(dir), parties, timeout

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        import time

        arrived = self.dir / "arrived"
        arrived.mkdir(parents=True, exist_ok=True)
        (arrived / str(os.getpid())).touch()
        deadline = time.monotonic() + self.timeout
        while len(list(arrived.iterdir())) < self.parties and time.monotonic() < deadline:
            time.sleep(0.05)
        seen = sorted(p.name for p in arrived.iterdir())
        (self.dir / f"saw.{os.getpid()}.{config.hydra.job.num}").write_text(" ".join(seen))


@dataclass
class Sweep:
    """A finished sweep: its dir, each job's results.json by job dir name, and, per job, the
    pids of the jobs it met at its start (see Rendezvous)."""

    dir: Path
    results: dict[str, dict[str, Any]]
    met: list[list[int]]


# Every run-control key set on the command line, each to a value that works here (threads=0:
# the default, the jobs' share of the cores).
SWEEP_RUN_CONTROL = [
    "resume=false", "device=cpu", "threads=0", "data.download=false", "data.verify=false",
    "data.url=http://127.0.0.1:9/", "trainer.plots=off", "eval.batch_size=16", "analysis.chunk_size=16",
    "trainer.checkpoint_optimizer=false", "trainer.checkpoint_names=default", "cluster=joblib", "logger=none",
]


@pytest.fixture(scope="session")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The one real joblib sweep of the suite: two jobs (seed=3,4) on two workers that wait for
    each other at their start, on SVHN-format files, with every run-control key overridden."""
    root = tmp_path_factory.mktemp("joblib_sweep")
    svhn = make_svhn_files(root / "svhn")
    sweep, met = root / "sweep", root / "met"
    proc = subprocess.run(
        [sys.executable, "-m", "agop_sweep", "-m", "model.width=8", "model.depth=2", "schedule=smoke",
         "seed=3,4", *SWEEP_RUN_CONTROL, f"data.root={svhn.root}", "hydra.launcher.n_jobs=2",
         f"hydra.sweep.dir={sweep}", "+hydra.callbacks.rendezvous._target_=conftest.Rendezvous",
         f"+hydra.callbacks.rendezvous.dir={met}", "+hydra.callbacks.rendezvous.parties=2"],
        cwd=root, env={**app_env(), "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/results.json")}
    seen = [sorted(int(pid) for pid in p.read_text().split()) for p in sorted(met.glob("saw.*"))]
    return Sweep(sweep, results, seen)


@dataclass
class TrackerSweep:
    """A finished sweep that logged to every tracker: its dir, the sweep command's output and
    W&B's ``$WANDB_DIR`` (the runs' files are under ``<it>/wandb/``)."""

    dir: Path
    proc: subprocess.CompletedProcess[str]
    wandb_dir: Path


@pytest.fixture(scope="session")
def tracker_sweep(tmp_path_factory: pytest.TempPathFactory) -> TrackerSweep:
    """The suite's one sweep that logs (tests/test_loggers.py, tests/test_wandb.py): two jobs at
    once (cluster=joblib, optimizer=sgd,adam, seed=5, figures drawn) into TensorBoard, the
    default MLflow store (``outputs/mlflow.db``) and W&B (offline)."""
    from tracker_readers import wandb_offline

    root = tmp_path_factory.mktemp("tracker_sweep")
    sweep = root / "outputs" / "multirun" / "sweep"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        wandb_dir = wandb_offline(root, env)
        proc = run_cli("-m", "cluster=joblib", *tiny("optimizer=sgd,adam", "trainer.plots=end"),
                       "seed=5", "logger=[tensorboard,mlflow,wandb]", f"hydra.sweep.dir={sweep}", cwd=root,
                       timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return TrackerSweep(sweep, proc, wandb_dir)


def run_cli_many(
    commands: dict[str, list[str]], cwd: Path, parallel: int = 4, timeout: float = 300
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run ``python -m agop_sweep <args>`` for every entry, ``parallel`` at a time: most of a
    short run is the interpreter and torch starting, which overlaps well."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=cwd, timeout=timeout)
                   for name, args in commands.items()}
        return {name: f.result() for name, f in futures.items()}


# results.json keys whose values are wall-clock measurements, not results.
TIMING_KEYS = frozenset({"seconds", "train_seconds", "timing", "pid"})


def strip_timing(obj: Any) -> Any:
    """``obj`` (parsed JSON) without its TIMING_KEYS, at any depth: what two runs must share."""
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def numbers(results: dict[str, Any]) -> dict[str, Any]:
    """results.json without its timings and without the run-control keys of its config, at any
    depth (``trainer.plots``): what a resumed or restarted run shares with an uninterrupted one."""
    def experiment(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        return {k: experiment(v, f"{prefix}{k}.") if isinstance(v, dict) else v
                for k, v in section.items() if not is_run_control_key(prefix + k)}

    return strip_timing({**results, "config": experiment(results["config"])})


def error_lines(stderr: str) -> list[str]:
    """The lines of Hydra's short error report that are not its fixed frame."""
    frame = ("Error executing job with overrides", "Set the environment variable HYDRA_FULL_ERROR")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(frame)]


@contextlib.contextmanager
def composing() -> Iterator[Callable[..., DictConfig]]:
    """``with composing() as make: make(*overrides, return_hydra_config=False)``: the app's
    config, composed in-process (any fixture scope)."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("agop_sweep.conf", version_base="1.3"):
            def make(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
                return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)

            yield make
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture
def compose_config() -> Iterator[Callable[..., DictConfig]]:
    """``compose_config(*overrides, return_hydra_config=False)``: the app's config, composed."""
    with composing() as make:
        yield make


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the figures that agop_sweep.aggregate saves, which it builds and this leaves
    unwritten (tests/test_aggregate.py checks the files)."""
    from agop_sweep.aggregate import command

    names: list[str] = []

    def save(fig: Any, stem: Path, *args: Any, **kwargs: Any) -> list[Path]:
        names.append(stem.name)
        return []

    monkeypatch.setattr(command, "save_figure", save)
    return names


# -- SVHN-format files ----------------------------------------------------------------------


def write_svhn_mat(path: Path, images: np.ndarray, digits: np.ndarray) -> None:
    """Write ``images`` (N, 3, 32, 32) uint8 and ``digits`` (N,) 0..9 as SVHN does: X of
    shape (32, 32, 3, N) (row, column, channel, sample) and y (N, 1) with 10 for digit 0."""
    x = np.ascontiguousarray(np.transpose(images, (2, 3, 1, 0)))
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": x, "y": y})


@dataclass
class SvhnFiles:
    """Generated train/test files under ``root``: the images (N, 3, 32, 32) and digits (N,)."""

    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)
    digits: dict[str, np.ndarray] = field(default_factory=dict)

    def path(self, split: str) -> Path:
        return self.root / f"{split}_32x32.mat"


def make_svhn_files(root: Path, n_train: int = 40, n_test: int = 24, seed: int = 0) -> SvhnFiles:
    rng = np.random.default_rng(seed)
    files = SvhnFiles(root)
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        digits = np.arange(n) % 10  # every digit, 0 included
        write_svhn_mat(files.path(split), images, digits)
        files.images[split], files.digits[split] = images, digits
    return files


@pytest.fixture
def svhn_files(tmp_path: Path) -> SvhnFiles:
    """Small SVHN-format train (40) and test (24) files in ``tmp_path/svhn``."""
    return make_svhn_files(tmp_path / "svhn")


# -- a local HTTP server ----------------------------------------------------------------------


@dataclass
class Served:
    """What the server answers for one path: ``body``, and a ``length`` header that may lie."""

    body: bytes
    length: int | None = None


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, Served] = {}
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                served = files.get(self.path)
                if served is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                length = len(served.body) if served.length is None else served.length
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(served.body)
                self.wfile.flush()
                self.close_connection = True  # a lying Content-Length ends early here

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    """An HTTP server on 127.0.0.1 (a free port); set ``server.files['/name'] = Served(...)``."""
    server = FileServer()
    yield server
    server.close()


# -- integrity checks ---------------------------------------------------------------------------


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` by relative path: what "unchanged" means."""
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a refused command prints (exit 1, no traceback); fails otherwise."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """``read_only(path)``: make a directory unwritable, for root too (``chattr +i``, since
    permission bits do not stop root); undone at teardown so that tmp_path can be removed."""
    done: list[Path] = []

    def make(path: Path) -> None:
        path.chmod(0o555)
        done.append(path)
        if os.geteuid() == 0:
            proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.skip(f"cannot make a directory read-only for root here: {proc.stderr.strip()}")

    yield make
    for path in reversed(done):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755)


def one_line_message(err: pytest.ExceptionInfo[BaseException]) -> str:
    """The message of a raised error, checked to be one non-empty line."""
    msg = str(err.value)
    assert "\n" not in msg and msg.strip()
    return msg


def leftovers(directory: Path) -> list[str]:
    """The names in ``directory`` (none when it does not exist)."""
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- CPU cost per test file (opt-in: AGOP_CPU_REPORT=<path>) ------------------------------------


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its waited-for children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_CPU_BY_TEST: dict[str, float] = {}
_CPU_AT_START: list[float] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    _CPU_AT_START.append(_cpu_seconds())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Charge each test's setup, call and teardown (its fixtures' too) to the test."""
    if not os.environ.get("AGOP_CPU_REPORT"):
        yield
        return
    before = _cpu_seconds()
    yield
    _CPU_BY_TEST[item.nodeid] = _CPU_BY_TEST.get(item.nodeid, 0.0) + _cpu_seconds() - before


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the CPU seconds per test file, then the 40 dearest tests, to $AGOP_CPU_REPORT."""
    path = os.environ.get("AGOP_CPU_REPORT")
    if not path or not _CPU_AT_START:
        return
    total = _cpu_seconds() - _CPU_AT_START[0]
    by_file: dict[str, list[float]] = {}
    for nodeid, cpu in _CPU_BY_TEST.items():
        entry = by_file.setdefault(nodeid.split("::", 1)[0], [0.0, 0])
        entry[0] += cpu
        entry[1] += 1
    lines = [f"{'file':<44} {'tests':>5} {'cpu_s':>8} {'share':>6}"]
    for name, (cpu, n) in sorted(by_file.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"{name:<44} {n:>5} {cpu:>8.1f} {100 * cpu / total:>5.1f}%")
    outside = total - sum(_CPU_BY_TEST.values())
    name = "(outside tests: collection)"
    lines.append(f"{name:<44} {'':>5} {outside:>8.1f} {100 * outside / total:>5.1f}%")
    lines.append(f"{'total':<44} {len(_CPU_BY_TEST):>5} {total:>8.1f}")
    lines += ["", f"{'test (setup, call and teardown)':<100} {'cpu_s':>8}"]
    for nodeid, cpu in sorted(_CPU_BY_TEST.items(), key=lambda kv: -kv[1])[:40]:
        lines.append(f"{nodeid:<100} {cpu:>8.1f}")
    Path(path).write_text("\n".join(lines) + "\n")
