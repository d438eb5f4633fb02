"""Whole runs: what a run writes (README), checked against independent recomputations from its
checkpoints; learning on digits; determinism; the real three-optimizer sweep as a subprocess.
Separate CLI runs and an SVHN run from generated files are slow and run with -m slow."""

from __future__ import annotations

import itertools
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, composing, error_lines, make_svhn_files, run_cli, run_cli_many, strip_timing
from omegaconf import OmegaConf
from torch.func import jacrev, vmap

from agop_sweep.analyze.names import METRICS, VARIANTS
from agop_sweep.data.datasets import load_dataset
from agop_sweep.figures import run as figures_run
from agop_sweep.run.device import Placement
from agop_sweep.run.trainer import Trainer

RUN_KEYS = {"optimizer", "lr", "seed", "dataset", "width", "depth", "act", "n_train", "n_val", "device",
            "torch"}
EPOCH_KEYS = {"epoch", "train_loss", "val_loss", "train_acc", "val_acc", "seconds"}


def ckpt_name(epoch: int, dataset: str, width: int, depth: int, act: str) -> str:
    return f"model_epoch_{epoch}:{dataset}:width:{width}:depth:{depth}:act:{act}:nn.pth"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- independent recomputation from a checkpoint ----------------------------------------------


def _forward(weights: list[torch.Tensor], x: torch.Tensor, act=torch.relu) -> torch.Tensor:
    h = x
    for w in weights[:-1]:
        h = act(h @ w.T)
    return h @ weights[-1].T


def _mse(logits: torch.Tensor, y: torch.Tensor) -> float:
    onehot = torch.eye(logits.shape[1], dtype=logits.dtype)[y]
    return float(((logits - onehot) ** 2).mean())


def _per_sample_agops(weights: list[torch.Tensor], x: torch.Tensor) -> list[np.ndarray]:
    """AGOP of every hidden layer by per-sample autograd (no closed form)."""
    out, h = [], x
    for l in range(len(weights) - 1):
        def above(v: torch.Tensor, l: int = l) -> torch.Tensor:
            return _forward(weights[l:], v)

        jac = vmap(jacrev(above))(h)
        out.append((torch.einsum("nci,ncj->ij", jac, jac) / x.shape[0]).numpy())
        h = torch.relu(h @ weights[l].T)
    return out


def _sqrt(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(a)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def _corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    a, b = a.ravel(), b.ravel()
    if kind == "pearson":
        a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _reference_metrics(w: np.ndarray, w0: np.ndarray, agop: np.ndarray) -> dict[str, float]:
    nfms = {"raw": w.T @ w}
    if (w != w0).any():  # delta is undefined at epoch 0
        nfms["delta"] = (w - w0).T @ (w - w0)
    targets = {"agop": agop, "sqrt": _sqrt(agop)}
    return {f"{n}_{c}_{t}": _corr(nfms[n], targets[t], c)
            for n in nfms for c in ("cos", "pearson") for t in targets}


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


# -- checks shared by the in-process and the CLI runs -------------------------------------------


def check_run(run_dir: Path, optimizer: str, n_features: int, check_metrics_at: tuple[int, ...] = ()) -> dict:
    """Everything README says about results.json and models/, recomputed from the checkpoints."""
    res = json.loads((run_dir / "results.json").read_text())
    cfg = res["config"]
    model, dataset = cfg["model"], cfg["data"]["name"]
    width, depth, act = model["width"], model["depth"], model["act"]
    epochs, scheduled = cfg["schedule"]["epochs"], cfg["schedule"]["checkpoints"]

    assert res["schema_version"] == 1 and res["status"] == "completed"
    assert set(res["run"]) >= RUN_KEYS
    run = res["run"]
    assert (run["optimizer"], run["lr"], run["seed"]) == (optimizer, cfg["optimizer"]["lr"], cfg["seed"])
    assert (run["dataset"], run["width"], run["depth"], run["act"]) == (dataset, width, depth, act)
    assert run["device"] == "cpu" and run["torch"] == torch.__version__

    data = load_dataset(OmegaConf.create(cfg["data"]), torch.device("cpu"))
    assert (run["n_train"], run["n_val"], data.n_features) == (data.n_train, data.n_val, n_features)
    x_tr, x_va = data.x_train.flatten(1).double(), data.x_val.flatten(1).double()

    assert [e["epoch"] for e in res["epochs"]] == list(range(epochs + 1))
    for e in res["epochs"]:
        assert set(e) >= EPOCH_KEYS and all(_finite(e[k]) for k in EPOCH_KEYS), e
        assert 0 <= e["train_acc"] <= 1 and 0 <= e["val_acc"] <= 1

    names = {e: ckpt_name(e, dataset, width, depth, act) for e in scheduled}
    assert res["checkpoints"] == {str(e): f"models/{name}" for e, name in names.items()}
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == sorted(names.values())

    shapes = [(width, n_features)] + [(width, width)] * (depth - 1) + [(data.n_classes, width)]
    w0 = None
    for e in scheduled:
        ck = _load(run_dir / res["checkpoints"][str(e)])
        assert ck["epoch"] == e and ck["config"] == cfg and type(ck["config"]) is dict
        state = ck["state_dict"]
        weights = [v.double() for v in state.values()]
        assert [tuple(w.shape) for w in weights] == shapes  # depth + 1 matrices, no biases
        assert isinstance(ck["optimizer"], dict) and ck["optimizer"]
        groups = [g for s in ck["optimizer"].values() for g in s["param_groups"]]
        assert sum(len(g["params"]) for g in groups) == depth + 1
        if e > 0 and optimizer != "sgd":  # momentum buffers / moments exist after a step
            assert any(s["state"] for s in ck["optimizer"].values())
        # The numbers in results.json are those of these weights, in this (forward) order.
        epoch = res["epochs"][e]
        with torch.no_grad():
            logits_tr, logits_va = _forward(weights, x_tr), _forward(weights, x_va)
        assert epoch["train_loss"] == pytest.approx(_mse(logits_tr, data.y_train), rel=1e-5)
        assert epoch["val_loss"] == pytest.approx(_mse(logits_va, data.y_val), rel=1e-5)
        acc = float((logits_tr.argmax(1) == data.y_train).double().mean())
        assert epoch["train_acc"] == pytest.approx(acc)
        if e == 0:
            w0 = weights
        entry = next(a for a in res["analysis"] if a["epoch"] == e)
        for layer, (w, w_init) in enumerate(zip(weights[:-1], w0 or [], strict=False)):
            change = float(torch.linalg.norm(w - w_init) / torch.linalg.norm(w_init))
            assert entry["layers"][layer]["weight_change"] == pytest.approx(change, rel=1e-9, abs=1e-15)
        if e in check_metrics_at:
            for l, agop in enumerate(_per_sample_agops(weights, x_tr)):
                expected = _reference_metrics(weights[l].numpy(), w0[l].numpy(), agop)
                got = entry["layers"][l]["metrics"]
                assert len(expected) == (4 if e == 0 else 8)
                for name in expected:
                    # The run's pass is float32. Its AGOP is rank-deficient here; without
                    # nfa.denoise_psd_eigenvalues the sqrt variants would miss this by 3e-5.
                    tol = 2e-5
                    assert got[name] == pytest.approx(expected[name], abs=tol), (e, l, name)

    assert [a["epoch"] for a in res["analysis"]] == sorted(scheduled)
    for a in res["analysis"]:
        assert a["n_samples"] == data.n_train and _finite(a["seconds"])
        assert a["train_loss"] == res["epochs"][a["epoch"]]["train_loss"]
        assert [entry["layer"] for entry in a["layers"]] == list(range(depth))
        for l, entry in enumerate(a["layers"]):
            assert entry["shape"] == list(shapes[l])
            assert set(entry["metrics"]) == set(METRICS) and set(VARIANTS) < set(METRICS)
            assert entry["corr"] == entry["metrics"][cfg["analysis"]["primary"]]
            if a["epoch"] == 0:
                assert entry["weight_change"] == 0.0
                assert entry["alpha_star"] is None and entry["alpha_corr"] is None  # delta primary
            else:
                assert _finite(entry["weight_change"]) and entry["weight_change"] > 0
                assert 0 <= entry["alpha_star"] <= 2 and round(entry["alpha_star"] * 100) % 1 == 0
                assert entry["alpha_corr"] >= entry["corr"] - 1e-12  # a = 1 is on the grid
            for name, value in entry["metrics"].items():
                if a["epoch"] == 0 and name.startswith("delta"):
                    assert value is None, name  # undefined, written as null
                else:
                    assert _finite(value) and -1 - 1e-9 <= value <= 1 + 1e-9, (a["epoch"], name, value)

    timing = res["timing"]
    for key in ("train_seconds", "analysis_seconds", "total_seconds"):
        assert _finite(timing[key]) and timing[key] >= 0, key
    assert timing["total_seconds"] >= timing["train_seconds"]
    return res


# -- in-process runs (fast) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory):
    """``trainer_run(name, *overrides)``: a Trainer run in-process (figures skipped); its dir."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp, composing() as compose:
        mp.setattr(figures_run, "save_run_figures", lambda *args, **kwargs: [])

        def run(name: str, *overrides: str) -> Path:
            run_dir = root / name
            # Another dataset option replaces TINY's synthetic one, and its keys with it.
            base = [o for o in TINY if not o.startswith("data")] if any(
                o.startswith("data=") for o in overrides) else TINY
            Trainer(compose(*base, *overrides), run_dir,
                    Placement("cpu", torch.get_num_threads())).run()
            return run_dir

        yield run


def test_tiny_run_matches_its_checkpoints(trainer_run) -> None:
    run_dir = trainer_run("adam", "optimizer=adam", "data.n_features=48", "data.image_shape=[3,4,4]",
                          "model.depth=3")
    check_run(run_dir, "adam", n_features=48, check_metrics_at=(0, 3))


def test_epoch_zero_checkpoint_is_the_seeded_init(trainer_run) -> None:
    from agop_sweep.model.mlp import build_model

    run_dir = trainer_run("init", "seed=11")
    ck = _load(run_dir / "models" / ckpt_name(0, "synthetic", 16, 2, "relu"))
    torch.manual_seed(11)
    fresh = build_model(64, 16, 2, 10, "relu").state_dict()
    assert list(ck["state_dict"]) == list(fresh)
    for key in fresh:
        assert torch.equal(ck["state_dict"][key], fresh[key]), key


def test_loss_goes_down_on_digits(trainer_run) -> None:
    run_dir = trainer_run("digits", "data=digits", "model.width=32", "optimizer=adam", "optimizer.lr=0.003",
                          "schedule.checkpoints=[0,3]")
    res = json.loads((run_dir / "results.json").read_text())
    train = [e["train_loss"] for e in res["epochs"]]
    val = [e["val_loss"] for e in res["epochs"]]
    assert all(a > b for a, b in itertools.pairwise(train)), train
    assert train[-1] < 0.7 * train[0] and val[-1] < 0.7 * val[0], (train, val)
    assert res["epochs"][-1]["val_acc"] > 0.5 > res["epochs"][0]["val_acc"]


def test_same_seed_same_numbers_other_seed_other_numbers(trainer_run) -> None:
    a = json.loads((trainer_run("seed5a", "seed=5", "optimizer=muon") / "results.json").read_text())
    b = json.loads((trainer_run("seed5b", "seed=5", "optimizer=muon") / "results.json").read_text())
    c = json.loads((trainer_run("seed6", "seed=6", "optimizer=muon") / "results.json").read_text())
    assert strip_timing(a) == strip_timing(b)
    assert a["epochs"][0]["seconds"] > 0  # the stripped keys were there
    for ea, ec in zip(a["epochs"], c["epochs"], strict=True):
        assert ea["train_loss"] != ec["train_loss"]
    assert a["analysis"][-1]["layers"][0]["corr"] != c["analysis"][-1]["layers"][0]["corr"]


# -- the command line ---------------------------------------------------------------------

SWEEP_ARGS = [
    "data=synthetic", "schedule=smoke", "model.width=64", "data.n_train=512", "data.n_val=128",
    "data.n_features=48", "data.image_shape=[3,4,4]", "trainer.plots=off",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli("-m", "optimizer=sgd,adam,muon", *SWEEP_ARGS, f"hydra.sweep.dir={root / 'sweep'}",
                   cwd=root, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = {}
    for job in (root / "sweep").iterdir():
        if job.is_dir():
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            jobs[next(o.split("=")[1] for o in overrides if o.startswith("optimizer="))] = job
    assert sorted(jobs) == ["adam", "muon", "sgd"]
    assert not list(root.glob("outputs")), "the sweep wrote outside hydra.sweep.dir"
    return jobs


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "muon"])
def test_sweep_job_writes_the_documented_output_layout(sweep: dict[str, Path], optimizer: str) -> None:
    """Each job writes what docs/results.md ("Output layout") names."""
    job = sweep[optimizer]
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    def parsed(items: list[str]) -> dict[str, Any]:  # the sweeper writes false as False
        return {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in items)}

    assert parsed(overrides) == parsed([f"optimizer={optimizer}", *SWEEP_ARGS])
    hydra_cfg = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_cfg["job"]["name"] == "agop_sweep" and hydra_cfg["mode"] == "MULTIRUN"
    res = check_run(job, optimizer, n_features=48, check_metrics_at=(0, 3) if optimizer == "muon" else (3,))
    assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) == res["config"]
    assert res["config"]["optimizer"]["name"] == optimizer
    log = (job / "agop_sweep.log").read_text()
    assert "Epoch 3/3" in log
    assert not (job / "plots").exists()  # trainer.plots=off


def test_a_run_draws_its_figures_at_the_end(finished_run: Path) -> None:
    """trainer.plots=end (conftest's TINY run): both figures in both formats."""
    for stem in ("training_analysis", "features"):
        for ext, head in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
            assert (finished_run / "plots" / f"{stem}.{ext}").read_bytes().startswith(head), (stem, ext)


def test_sweep_optimizers_differ(sweep: dict[str, Path]) -> None:
    res = {o: json.loads((d / "results.json").read_text()) for o, d in sweep.items()}
    epoch0 = {o: strip_timing(r["epochs"][0]) for o, r in res.items()}
    assert epoch0["sgd"] == epoch0["adam"] == epoch0["muon"]  # same seed, same init
    finals = {o: r["epochs"][-1]["train_loss"] for o, r in res.items()}
    assert len(set(finals.values())) == 3
    assert {o: r["run"]["lr"] for o, r in res.items()} == {"sgd": 0.1, "adam": 0.001, "muon": 0.01}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_separate_cli_runs_are_deterministic(tmp_path: Path) -> None:
    args = [*TINY, "optimizer=adam"]
    procs = run_cli_many({
        "a": [*args, "seed=5", f"hydra.run.dir={tmp_path / 'a'}"],
        "b": [*args, "seed=5", f"hydra.run.dir={tmp_path / 'b'}"],
        "c": [*args, "seed=6", f"hydra.run.dir={tmp_path / 'c'}"],
    }, cwd=tmp_path, parallel=3)
    for proc in procs.values():
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b, c = (json.loads((tmp_path / n / "results.json").read_text()) for n in "abc")
    assert strip_timing(a) == strip_timing(b)
    assert a["epochs"][-1]["train_loss"] != c["epochs"][-1]["train_loss"]
    for name in a["checkpoints"].values():
        sa, sb = _load(tmp_path / "a" / name)["state_dict"], _load(tmp_path / "b" / name)["state_dict"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_svhn_from_files_of_ones_own_and_without_network(tmp_path: Path) -> None:
    files = make_svhn_files(tmp_path / "svhn", n_train=64, n_test=16)
    empty = tmp_path / "nothing_here"
    small = ["model.width=16", "model.depth=2", "schedule=smoke", "trainer.plots=end", "device=cpu"]
    procs = run_cli_many({
        "own": ["data=svhn", f"data.root={files.root}", "data.verify=false", "data.download=false", *small,
                f"hydra.run.dir={tmp_path / 'own'}"],
        "offline": ["data=svhn", f"data.root={empty}", f"data.url=http://127.0.0.1:{_closed_port()}/", *small,
                    f"hydra.run.dir={tmp_path / 'offline'}"],
    }, cwd=tmp_path, parallel=2)
    assert procs["own"].returncode == 0, procs["own"].stderr[-3000:]
    res = check_run(tmp_path / "own", "sgd", n_features=3072)
    assert (res["run"]["n_train"], res["run"]["n_val"], res["run"]["dataset"]) == (64, 16, "svhn")

    proc = procs["offline"]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = error_lines(proc.stderr)
    assert "train_32x32.mat" in line and "test_32x32.mat" in line and str(empty) in line
    # A job that fails before training leaves its one-line error (README, Fault tolerance).
    failed = json.loads((tmp_path / "offline" / "results.json").read_text())
    assert failed["status"] == "failed" and failed["epochs"] == [] and "train_32x32.mat" in failed["error"]


def test_experiment_seed_runs_as_the_original_script_did(tmp_path: Path) -> None:
    """experiment=seed on this CPU: the original's Muon, identical initial middle layers, its
    80/20 split of digits' 1,797 images, and fp32 (fp16 applies on CUDA only)."""
    run_dir = tmp_path / "run"
    proc = run_cli("experiment=seed", "data=digits", "schedule=smoke", "model.width=32", "device=cpu",
                   "trainer.plots=off", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "completed"
    assert res["config"]["optimizer"]["name"] == "muon_seed"
    assert res["config"]["data"]["split"] == "seed"
    assert (res["run"]["n_train"], res["run"]["n_val"]) == (1437, 360)
    assert res["config"]["trainer"]["precision"] == "fp16_on_cuda" and res["run"]["precision"] == "fp32"
    state = _load(run_dir / res["checkpoints"]["0"])["state_dict"]
    middle = [v for k, v in state.items() if k.startswith("middle.")]
    assert len(middle) == 4 and all(torch.equal(middle[0], m) for m in middle[1:])
    first = _load(run_dir / res["checkpoints"]["3"])["state_dict"]
    assert not torch.equal(first["middle.0.weight"], first["middle.1.weight"])  # they train apart
    # One line at start says what the preset set, read from its file, with the values used.
    from agop_sweep.config.presets import preset_settings

    settings = preset_settings("experiment", "seed")
    assert {"optimizer", "model.init", "data.split", "trainer.precision"} <= set(settings)
    (line,) = [ln for ln in (run_dir / "agop_sweep.log").read_text().splitlines() if "Preset " in ln]
    assert "Preset experiment=seed: optimizer=muon_seed, " in line
    for key, value in settings.items():
        shown = res["config"]
        for part in key.split("."):
            shown = shown[part]
        assert f"{key}={shown.get('name') if isinstance(shown, dict) else shown}" in line, key
        assert isinstance(value, (str, int, float, bool))


def test_no_preset_no_preset_line(trainer_run) -> None:
    from agop_sweep.config.presets import run_preset_line

    run_dir = trainer_run("plain", "optimizer=sgd")
    assert run_preset_line(run_dir, {}) is None  # no .hydra/hydra.yaml choice: nothing to say


# -- shell completion (issue 23, point 11) -------------------------------------------------------------
def test_bare_shell_completion_flag_is_one_line(tmp_path: Path) -> None:
    for flag in ("--shell-completion", "-sc"):
        proc = run_cli(flag, cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert "install=SHELL" in line and 'eval "$(agop-sweep --shell-completion install=bash)"' in line
    proc = run_cli("-sc", "install=bash", cwd=tmp_path)  # python -m: Hydra's script cannot complete it
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "console script agop-sweep" in line


def test_console_script_completion_completes(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("agop-sweep")
    if not exe.is_file():
        pytest.skip("the agop-sweep console script is not installed")
    script = ('eval "$(agop-sweep --shell-completion install=bash)"; '
              'COMP_LINE="agop-sweep optimizer=" COMP_POINT=21 COMP_CWORD=1; hydra_bash_completion; '
              'echo "${COMPREPLY[@]}"')
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) >= {f"optimizer={o}" for o in ("sgd", "adam", "muon", "muon_seed")}


# -- checkpoint names (issue 23, point 12) -------------------------------------------------------------
def test_portable_checkpoint_names(trainer_run) -> None:
    """trainer.checkpoint_names=portable: no ':' in any file name, the same checkpoints."""
    run_dir = trainer_run("portable", "trainer.checkpoint_names=portable")
    res = json.loads((run_dir / "results.json").read_text())
    names = {e: f"model_epoch_{e}-synthetic-width16-depth2-relu.pth" for e in range(4)}
    assert res["checkpoints"] == {str(e): f"models/{n}" for e, n in names.items()}
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == sorted(names.values())
    assert not any(":" in p.name for p in run_dir.rglob("*"))
    default = trainer_run("default_names", "seed=1717")
    same = _load(default / "models" / ckpt_name(3, "synthetic", 16, 2, "relu"))["state_dict"]
    mine = _load(run_dir / "models" / names[3])["state_dict"]
    assert all(torch.equal(same[k], mine[k]) for k in same)


def test_checkpoint_names_is_a_closed_choice(compose_config) -> None:
    assert compose_config().trainer.checkpoint_names == "default"
    with pytest.raises(Exception, match="checkpoint_names"):
        compose_config("trainer.checkpoint_names=windows")
