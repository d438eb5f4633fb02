"""Shared helpers: run the app as a subprocess, compose configs in-process, write SVHN-format
.mat files, and serve files from a local HTTP server."""

from __future__ import annotations

import contextlib
import http.server
import os
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
from omegaconf import DictConfig

from agop_sweep.config import register_configs

# A run that takes seconds: synthetic 8x8 "images", a narrow net, three epochs.
TINY = [
    "data=synthetic", "data.n_train=256", "data.n_val=64", "data.n_features=64",
    "data.image_shape=[1,8,8]", "model.width=16", "model.depth=2", "schedule=smoke",
    "trainer.plots=end", "device=cpu",
]


def tiny(*overrides: str) -> list[str]:
    """TINY with ``overrides`` ("key=value"): one replaces TINY's entry for the same key, the
    others are added after it."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(overrides)


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


def finished_tiny_run(root: Path, *extra: str) -> Path:
    """A finished TINY run in ``root/run`` (with ``extra`` overrides); tests copy it first."""
    proc = run_cli(*TINY, *extra, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "run"


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` in ``tmp_path/run``, to change without touching the original."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


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
