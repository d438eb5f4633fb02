"""A full disk at any moment of a run: one line, nothing half-written, and ``resume=true``
finishes the run with the numbers of an uninterrupted one once space is back (issue 22).

The real test fills a real file system: a small tmpfs mounted in a private mount namespace
(``unshare -rm``, no privileges needed where user namespaces are allowed), grown after the
failure with ``mount -o remount,size=``. Where namespaces are not allowed it is skipped,
and the simulated test below still covers the case that matters most: the disk filling up
before the first state.pt was ever written.
"""

from __future__ import annotations

import errno
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, app_env, copy_of, error_lines, numbers, run_app, tiny

# Run-dir sizes in the TINY run's range (about 160 kB, 450 kB with figures): the first file
# written fails at 8k, a checkpoint at about 20k (simulated in tests/test_fault_tolerance.py),
# state.pt before any was written at about 60k (simulated below), a state.pt or checkpoint in the
# middle of torch's zip writer at about 120k. The slow test takes every size, with figures.
SIZES_DEFAULT = ("120k",)
SIZES_ALL = ("8k", "20k", "40k", "60k", "80k", "100k", "120k", "150k", "200k", "300k")

SCRIPT = """
set -u
mount -t tmpfs -o size={size} tmpfs {disk}
{app} hydra.run.dir={disk}/run > {out}/first.out 2> {out}/first.err
echo $? > {out}/first.rc
ls -a {disk}/run > {out}/files 2>/dev/null
mount -o remount,size=64m {disk}
{app} hydra.run.dir={disk}/run resume=true > {out}/second.out 2> {out}/second.err
echo $? > {out}/second.rc
cp {disk}/run/results.json {out}/results.json 2>/dev/null
ls -a {disk}/run/models > {out}/models 2>/dev/null
"""


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=8k tmpfs /mnt 2>/dev/null "
                           "|| mount -t tmpfs -o size=8k tmpfs /tmp"], capture_output=True, timeout=30)
    return proc.returncode == 0


NAMESPACES = _namespaces_work()


@pytest.fixture(scope="module")
def reference(finished_run: Path) -> dict:
    """The results of conftest's finished_run, which these runs must end with."""
    return json.loads((finished_run / "results.json").read_text())


def _fill_and_resume(size: str, tmp_path: Path, *extra: str) -> dict[str, str]:
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(parents=True)
    out.mkdir(parents=True)
    app = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "agop_sweep", *tiny(*extra)])
    script = SCRIPT.format(size=size, disk=disk, out=out, app=app)
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=tmp_path, env=app_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return {p.name: p.read_text() for p in out.iterdir()}


def _check(size: str, got: dict[str, str], reference: dict) -> str:
    """The invariant at every size; returns the file the one-line error named ('' if none)."""
    first_err = got["first.err"]
    assert "Traceback" not in first_err and "Traceback" not in got["first.out"], first_err
    named = ""
    if got["first.rc"].strip() != "0":
        assert got["first.rc"].strip() == "1"
        lines = error_lines(first_err)
        assert len(lines) == 1, first_err
        assert lines[0].startswith("No space left on the device while writing "), first_err
        assert "resume=true" in lines[0]
        named = lines[0].split(" while writing ")[1].split(" (")[0]
    # Nothing half-written is left under its real name, and temporaries are gone after the resume.
    assert got["second.rc"].strip() == "0", got["second.err"]
    assert not [f for f in got.get("models", "").split() if f.endswith(".tmp")]
    assert numbers(json.loads(got["results.json"])) == numbers(reference), size
    return named


@pytest.mark.skipif(not NAMESPACES, reason="needs unshare -rm (user and mount namespaces) for a real tmpfs")
@pytest.mark.parametrize("size", SIZES_DEFAULT)
def test_a_full_disk_then_resume_gives_the_uninterrupted_numbers(size: str, tmp_path: Path,
                                                                 reference: dict) -> None:
    """Without figures (a run-control key): a failure in them is among the slow test's sizes."""
    named = _check(size, _fill_and_resume(size, tmp_path), reference)
    assert named, f"a {size} file system should be too small for the run"


@pytest.mark.slow
@pytest.mark.skipif(not NAMESPACES, reason="needs unshare -rm (user and mount namespaces) for a real tmpfs")
def test_every_size_from_the_first_file_to_the_last(tmp_path: Path, reference: dict) -> None:
    named = {}
    for size in SIZES_ALL:
        got = _fill_and_resume(size, tmp_path / size, "trainer.plots=end")
        named[size] = _check(size, got, reference)
        named[size] += f" (state.pt written: {'state.pt' in got.get('files', '').split()})"
    print(json.dumps(named, indent=1))  # the failure points, for the note
    # The case that matters most is among them: the disk full before any state.pt.
    assert any("state.pt written: False" in v and v.split(" (")[0] for v in named.values()), named


def test_a_disk_full_before_the_first_state_pt_restarts_in_place(tmp_path: Path, reference: dict,
                                                                  app_here) -> None:
    """Simulated everywhere: every write of state.pt fails with ENOSPC, so the run has a
    results.json with epoch 0 and no state.pt; resume=true restarts it in place, warns once,
    and ends with the uninterrupted run's numbers."""
    patch = (
        "import errno, agop_sweep.store.checkpoint as c\n"
        "orig = c.torch_save\n"
        "def full(path, obj):\n"
        "    if str(path).endswith('state.pt'):\n"
        "        def fail(f):\n"
        "            f.write(b'x' * 100)\n"
        f"            raise OSError({errno.ENOSPC}, 'No space left on device')\n"
        "        return c.write_atomic(path, fail)\n"
        "    return orig(path, obj)\n"
        "c.torch_save = full\n"
    )
    run_dir = tmp_path / "run"
    first = run_app(*TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path, patch=patch)
    assert first.returncode == 1
    lines = error_lines(first.stderr)
    assert len(lines) == 1 and "state.pt" in lines[0] and "resume=true" in lines[0], first.stderr
    assert not (run_dir / "state.pt").exists()
    assert json.loads((run_dir / "results.json").read_text())["epochs"]  # epoch 0 is recorded
    second = app_here(*TINY, f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "restarting the run from epoch 0 in place" in second.stdout + second.stderr
    assert numbers(json.loads((run_dir / "results.json").read_text())) == numbers(reference)


def test_another_experiment_without_state_pt_is_refused(finished_run: Path, tmp_path: Path, app_here) -> None:
    """(A finished run without state.pt resumes to nothing: tests/test_small_faults.py.)"""
    run_dir = copy_of(finished_run, tmp_path)
    (run_dir / "state.pt").unlink()
    data = json.loads((run_dir / "results.json").read_text())
    data["status"] = "failed"
    (run_dir / "results.json").write_text(json.dumps(data))
    proc = app_here(*TINY, "seed=5", f"hydra.run.dir={run_dir}", "resume=true", cwd=tmp_path)
    assert proc.returncode == 1
    line = error_lines(proc.stderr)[-1]
    assert line.startswith("resume=true but the output dir holds a different experiment: seed"), line
