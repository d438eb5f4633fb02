"""Per-run figures, inspected as matplotlib objects (panels, lines, the schedule switch) and
as files (valid PNG and PDF of the expected size, written atomically)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aggregate_fakes import end_as
from matplotlib.image import AxesImage
from PIL import Image

from agop_sweep.analyze.names import VARIANTS
from agop_sweep.figures import style
from agop_sweep.figures.__main__ import main as figures_main
from agop_sweep.figures.run import features_figure, save_run_figures, training_analysis_figure
from agop_sweep.figures.style import SWITCH_GID, grid_shape, schedule_switch
from agop_sweep.store.features import FeatureLog
from agop_sweep.store.record import RunRecord

PAPER = [*range(21), 40, 60, 80, 100]


def fake_results(
    depth: int = 5, checkpoints: list[int] = PAPER, epochs: int = 100, status: str = "completed",
    last_epoch: int | None = None, val: bool = True, analysed: bool = True,
) -> RunRecord:
    """A run's record shaped as README says, with made-up but plausible numbers, up to
    ``last_epoch`` (-1: none yet); ``analysed=False``: no analysis (analysis=off)."""
    last = epochs if last_epoch is None else last_epoch
    rng = np.random.default_rng(0)
    record = RunRecord.start(
        {"optimizer": "muon", "lr": 0.01, "seed": 3, "dataset": "digits", "width": 16, "depth": depth},
        {"schedule": {"epochs": epochs, "checkpoints": checkpoints},
         "analysis": {"primary": "delta_cos_agop"}, "data": {"image_shape": [1, 8, 8]}})
    for e in range(last + 1):
        loss = 0.1 * math.exp(-e / 30)
        record.finish_epoch({"epoch": e, "train_loss": loss, "val_loss": 1.1 * loss if val else None,
                          "train_acc": 1 - loss, "val_acc": (1 - 1.1 * loss) if val else None,
                          "seconds": 1.0})
    for e in (c for c in checkpoints if c <= last and analysed):
        layers = []
        for l in range(depth):
            value = None if e == 0 else min(1.0, 0.3 + 0.1 * l + e / 200)
            metrics = {v: (value if v.startswith("delta") else float(rng.random())) for v in VARIANTS}
            shape = [16, 64 if l == 0 else 16]
            layers.append({"layer": l, "shape": shape, "corr": value, "metrics": metrics})
        record.add_analysis({"epoch": e, "n_samples": 100, "seconds": 0.1, "layers": layers})
    end_as(record, status)
    return record


def fake_features(epochs: list[int], shape: tuple[int, int, int], n_layers: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    d = int(np.prod(shape))
    out: dict[str, np.ndarray] = {
        "epochs": np.asarray(epochs), "image_shape": np.asarray(shape),
        "eigvec_epoch": np.asarray(epochs[-1]),
        "nfm_eigvecs": rng.standard_normal((8, d)), "agop_eigvecs": rng.standard_normal((8, d)),
    }
    for k in ("nfm_diag", "nfm_delta_diag", "agop_diag"):
        out[k] = rng.random((len(epochs), d))
    out["nfm_delta_diag"][0] = 0.0  # W = W0 at epoch 0
    for l in range(n_layers):
        out[f"eigvals_agop_{l}"] = np.sort(rng.random(16))[::-1]
        out[f"eigvals_nfm_{l}"] = np.sort(rng.random(16))[::-1]
    return out


def visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def switch_lines(ax) -> list:
    return [ln for ln in ax.get_lines() if ln.get_gid() == SWITCH_GID]


# -- the schedule switch ----------------------------------------------------------------------------
@pytest.mark.parametrize(("checkpoints", "expected"), [
    (PAPER, 20),
    ([0, 1, 2, 3, 4, 5, 10, 15, 20], 5),
    ([0, 1, 2, 3], None),          # every epoch: no switch
    ([0, 20, 40], None),           # never every epoch
    ([40, 0, 2, 1], 2),            # order does not matter
    ([3], None),
    ([], None),
])
def test_schedule_switch(checkpoints: list[int], expected: int | None) -> None:
    assert schedule_switch(checkpoints) == expected


@pytest.mark.parametrize(("n", "shape"), [(2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (6, (2, 3)), (9, (3, 3)),
                                          (12, (3, 4))])
def test_grid_shape(n: int, shape: tuple[int, int]) -> None:
    assert grid_shape(n) == shape


# -- training_analysis ---------------------------------------------------------------------------------
def test_training_analysis_panels_and_switch_line() -> None:
    res = fake_results()
    fig = training_analysis_figure(res)
    axes = visible_axes(fig)
    layer_axes = [ax for ax in axes if ax.get_title().startswith("layer ")]
    assert [ax.get_title().split()[1] for ax in layer_axes] == ["0", "1", "2", "3", "4"]
    # 2 x 3 grid: 5 layer panels, their 5 right-hand correlation axes, and the sixth panel.
    sixth = [ax for ax in axes if ax.get_title().startswith("all layers")]
    assert len(sixth) == 1
    assert len(axes) == 5 + 5 + 1
    rows, cols = sixth[0].get_subplotspec().get_geometry()[:2]
    assert (rows, cols) == (2, 3)
    # The sixth panel holds every layer's primary correlation, with a legend.
    curves = [ln for ln in sixth[0].get_lines() if ln.get_label().startswith("layer ")]
    assert [ln.get_label() for ln in curves] == [f"layer {l}" for l in range(5)]
    assert sixth[0].get_legend() is not None
    for l, ln in enumerate(curves):
        expected = [a["layers"][l]["corr"] for a in res.analysis]
        np.testing.assert_allclose(ln.get_ydata(), [np.nan if v is None else v for v in expected])
    # The dashed line at the end of the every-epoch stretch (epoch 20), in every panel.
    for ax in [*layer_axes, *sixth]:
        (line,) = switch_lines(ax)
        assert list(line.get_xdata()) == [20, 20]
        assert line.get_linestyle() == "--"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("up to 20" in t for t in labels)


def test_training_analysis_axes_content() -> None:
    res = fake_results()
    fig = training_analysis_figure(res)
    layer0 = next(ax for ax in fig.axes if ax.get_title().startswith("layer 0"))
    train = next(ln for ln in layer0.get_lines() if ln.get_label() == "train loss")
    np.testing.assert_allclose(train.get_ydata(), [e["train_loss"] for e in res.epochs])
    assert len(train.get_xdata()) == 101  # every epoch
    assert layer0.get_yscale() == "log"  # the loss spans a factor > 4
    right = next(ax for ax in fig.axes if ax is not layer0 and ax.bbox.bounds == layer0.bbox.bounds)
    assert right.get_ylim() == (0.0, 1.0)
    (corr,) = right.get_lines()
    assert corr.get_marker() == "o"
    np.testing.assert_array_equal(corr.get_xdata(), PAPER)  # a marker at every analysed epoch
    title = fig.get_suptitle()
    for word in ("muon", "lr=0.01", "digits", "width 16", "depth 5"):
        assert word in title


def test_uniform_schedule_has_no_switch_line_and_grid_adapts() -> None:
    fig = training_analysis_figure(fake_results(depth=2, checkpoints=[0, 1, 2, 3], epochs=3))
    axes = visible_axes(fig)
    assert not any(switch_lines(ax) for ax in axes)
    titled = [ax.get_title() for ax in axes if ax.get_title()]
    assert titled[0].startswith("layer 0") and titled[1].startswith("layer 1")
    assert titled[2].startswith("all layers")
    assert axes[0].get_subplotspec().get_geometry()[:2] == (1, 3)
    assert not [ln for ln in fig.legends[0].get_lines() if ln.get_linestyle() == "--"]


@pytest.mark.parametrize("status", ["running", "diverged", "failed"])
def test_partial_runs_are_drawn_as_far_as_they_go(status: str, tmp_path: Path) -> None:
    res = fake_results(status=status, last_epoch=7, val=False)
    if status == "diverged":
        res.finish_epoch({**res.epochs[-1], "train_loss": None, "train_acc": None})
        res.mark_diverged(7)
    fig = training_analysis_figure(res)
    layer0 = next(ax for ax in fig.axes if ax.get_title().startswith("layer 0"))
    labels = [ln.get_label() for ln in layer0.get_lines()]
    assert "val loss" not in labels  # no val set: no val line
    train = next(ln for ln in layer0.get_lines() if ln.get_label() == "train loss")
    assert len(train.get_xdata()) == 8
    assert status in fig.get_suptitle()
    if status == "diverged":  # the line marking it, and a figure that renders to files
        assert any(ln.get_xdata()[0] == 7 and ln.get_linestyle() == ":" for ln in layer0.get_lines())
        assert save_run_figures(res, tmp_path)


def test_run_without_analysis_draws_the_losses() -> None:
    """analysis=off (or a run that has not analysed yet): layer panels with losses only."""
    fig = training_analysis_figure(fake_results(analysed=False))
    layer_axes = [ax for ax in fig.axes if ax.get_title().startswith("layer ")]
    assert len(layer_axes) == 5
    labels = [ln.get_label() for ln in layer_axes[0].get_lines() if not ln.get_gid()]
    assert labels == ["train loss", "val loss"]
    left = layer_axes[0]
    right = next(ax for ax in fig.axes if ax is not left and ax.bbox.bounds == left.bbox.bounds)
    assert all(len(ln.get_xdata()) == 0 for ln in right.get_lines())  # no correlation points
    assert training_analysis_figure(fake_results(last_epoch=-1)).get_suptitle()  # a run that has just started


# -- features ------------------------------------------------------------------------------------------
def _images(fig) -> list[tuple[Any, np.ndarray]]:
    return [(ax, im.get_array()) for ax in fig.axes for im in ax.get_images() if isinstance(im, AxesImage)]


def test_features_figure_epochs_and_marked_pixel() -> None:
    """The AGOP-diagonal images show epochs 0, 20 and the last, and a pixel marked in the
    flattened vector appears at its (row, column) in the image."""
    shape = (3, 32, 32)
    feats = fake_features(PAPER, shape)
    feats["agop_diag"][:] = 0.0
    feats["agop_diag"][PAPER.index(20), 1 * 1024 + 5 * 32 + 9] = 1.0  # channel 1, row 5, column 9
    fig = features_figure(fake_results(), feats)
    epoch_titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("epoch ")]
    assert epoch_titles == ["epoch 0", "epoch 20", "epoch 100"]
    agop_row = [ax for ax in fig.axes if ax.get_ylabel() == "AGOP diag"]
    assert len(agop_row) == 1
    gs = agop_row[0].get_subplotspec().get_gridspec()
    row_axes = [ax for ax in agop_row[0].figure.axes
                if ax.get_subplotspec() is not None and ax.get_subplotspec().get_gridspec() is gs
                and ax.get_subplotspec().rowspan.start == agop_row[0].get_subplotspec().rowspan.start]
    arrays = [ax.get_images()[0].get_array() for ax in row_axes]
    assert all(a.shape == (32, 32) for a in arrays)
    hot = np.argwhere(np.asarray(arrays[1]) == 1.0)
    assert hot.tolist() == [[5, 9]]
    assert not np.asarray(arrays[0]).any() and not np.asarray(arrays[2]).any()
    # Eigenvector images (2 rows x 4) and the two spectra panels with one line per layer.
    spectra = [ax for ax in fig.axes if "spectrum" in ax.get_title()]
    assert len(spectra) == 2
    assert all(ax.get_yscale() == "log" and len(ax.get_lines()) == 5 for ax in spectra)
    eig_titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("#")]
    assert eig_titles == ["#1", "#2", "#3", "#4"]


def test_features_figure_per_channel() -> None:
    shape = (3, 32, 32)
    feats = fake_features(PAPER, shape)
    feats["nfm_diag"][:] = 0.0
    feats["nfm_diag"][-1, 2 * 1024 + 31 * 32 + 0] = 1.0  # channel 2, row 31, column 0
    fig = features_figure(fake_results(), feats, per_channel=True)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title().startswith("epoch 100")]
    assert titles == ["epoch 100, ch 0", "epoch 100, ch 1", "epoch 100, ch 2"]
    hits = [(ax.get_title(), np.argwhere(np.asarray(a) == 1.0).tolist()) for ax, a in _images(fig)
            if np.asarray(a).max() == 1.0 and np.count_nonzero(np.asarray(a)) == 1]
    assert hits == [("epoch 100, ch 2", [[31, 0]])]


def test_features_figure_with_few_epochs_digits_shape() -> None:
    res = fake_results(depth=2, checkpoints=[0, 1, 2, 3], epochs=3)
    fig = features_figure(res, fake_features([0, 1, 2, 3], (1, 8, 8), n_layers=2))
    assert [ax.get_title() for ax in fig.axes if ax.get_title().startswith("epoch ")] == [
        "epoch 0", "epoch 3"]
    assert all(a.shape == (8, 8) for _, a in _images(fig))


# -- files ----------------------------------------------------------------------------------------------
def test_save_run_figures_writes_valid_files(tmp_path: Path) -> None:
    res = fake_results()
    log = FeatureLog()
    log.epochs = list(PAPER)
    feats = fake_features(PAPER, (1, 8, 8))
    log.diagonals = {k: list(feats[k]) for k in ("nfm_diag", "nfm_delta_diag", "agop_diag")}
    log.latest = {"eigvec_epoch": 100, "nfm_eigvecs": feats["nfm_eigvecs"],
                  "agop_eigvecs": feats["agop_eigvecs"],
                  "eigvals": {"agop": [feats[f"eigvals_agop_{l}"] for l in range(5)],
                              "nfm_raw": [feats[f"eigvals_nfm_{l}"] for l in range(5)]}}
    written = save_run_figures(res, tmp_path, log)
    names = sorted(p.name for p in written)
    assert names == ["features.pdf", "features.png", "training_analysis.pdf", "training_analysis.png"]
    for stem, builder in (("training_analysis", lambda: training_analysis_figure(res)),):
        fig = builder()
        w, h = fig.get_size_inches() * style.DPI
        with Image.open(tmp_path / "plots" / f"{stem}.png") as img:
            img.verify()
        with Image.open(tmp_path / "plots" / f"{stem}.png") as img:
            assert img.format == "PNG"
            assert img.size == (round(w), round(h))
            # Readable on a laptop screen at 100 %: wider than tall, at most ~1600 x 1000 px.
            assert 1000 <= img.size[0] <= 1600 and img.size[1] <= 1000
    with Image.open(tmp_path / "plots" / "features.png") as img:
        assert img.format == "PNG" and img.size[0] <= 1800 and img.size[1] <= 1000
    for pdf in ("training_analysis.pdf", "features.pdf"):
        data = (tmp_path / "plots" / pdf).read_bytes()
        assert data.startswith(b"%PDF") and b"%%EOF" in data[-64:]
    assert not list((tmp_path / "plots").glob(".*.tmp"))  # no temporary files left behind


def test_save_run_figures_reads_features_npz_and_skips_without(tmp_path: Path) -> None:
    res = fake_results(depth=2, checkpoints=[0, 1, 2, 3], epochs=3)
    assert [p.name for p in save_run_figures(res, tmp_path, formats=("png",))] == ["training_analysis.png"]
    np.savez(tmp_path / "features.npz", **fake_features([0, 1, 2, 3], (1, 8, 8), n_layers=2))
    assert "features.png" in [p.name for p in save_run_figures(res, tmp_path, formats=("png",))]


def test_figures_cli_redraws_a_run(tmp_path: Path, capsys) -> None:
    fake_results(depth=2, checkpoints=[0, 1], epochs=1).save(tmp_path / "results.json")
    figures_main([str(tmp_path)])
    assert (tmp_path / "plots" / "training_analysis.png").exists()
    with pytest.raises(SystemExit) as e:
        figures_main([str(tmp_path / "missing")])
    assert e.value.code == 1
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(("content", "reason"), [
    ('{"schema_version": 1, "status": "runn', "not valid JSON"),
    ('{"schema_version": 7, "status": "completed"}', "schema_version 7"),
    ('{"accuracy": 0.9}', "schema_version None"),
])
def test_figures_cli_bad_results_one_line_by_subprocess(tmp_path: Path, content: str, reason: str) -> None:
    """``python -m agop_sweep.figures`` on a results.json it cannot read: one line naming the
    file and the reason, exit 1, nothing drawn."""
    (tmp_path / "results.json").write_text(content)
    proc = subprocess.run([sys.executable, "-m", "agop_sweep.figures", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("python -m agop_sweep.figures: error: ")
    assert str(tmp_path / "results.json") in proc.stderr and reason in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "plots").exists()


def test_layer_grid_hides_the_panels_it_does_not_need() -> None:
    fig, layers, extra = style.layer_grid(5, row_height=3.4, extra_height=0.6)
    assert len(layers) == 5 and extra not in layers
    assert extra.get_subplotspec().get_geometry()[:2] == (2, 3)
    assert [ax for ax in fig.axes if ax.get_visible()] == [*layers, extra]
    fig, layers, extra = style.layer_grid(4, row_height=3.4, extra_height=0.6)
    assert extra.get_subplotspec().get_geometry()[:2] == (2, 3)
    assert len([ax for ax in fig.axes if not ax.get_visible()]) == 1
    assert tuple(fig.get_size_inches()) == pytest.approx((3 * style.PANEL_WIDTH, 2 * 3.4 + 0.6))


# -- issue 23: whole epochs, colour bars, censored exponents, the preset in the title ----------------
def test_short_runs_have_whole_epoch_ticks() -> None:
    """A 3-epoch run: ticks at 0, 1, 2, 3, never 0.5 or 2.5."""
    fig = training_analysis_figure(fake_results(depth=2, checkpoints=[0, 1, 2, 3], epochs=3))
    epoch_axes = [ax for ax in visible_axes(fig) if ax.get_xlabel() == "epoch"]
    assert len(epoch_axes) == 3
    for ax in epoch_axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [0, 1, 2, 3], ticks


def test_every_feature_image_has_its_colour_bar() -> None:
    fig = features_figure(fake_results(), fake_features(PAPER, (1, 8, 8)))
    images = [ax for ax, _ in _images(fig) if ax.get_label() != "<colorbar>" and not ax.texts]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    # 3 diagonals x 3 epochs but the blank "W = W0" panel, 2 x 4 eigenvectors: one bar each
    assert len(images) == len(bars) == 3 * 3 - 1 + 2 * 4
    for bar in bars:
        assert [t.get_text() for t in bar.get_yticklabels() if t.get_text()]  # a scale to read


def _alpha_record(values: list[float], primary: str = "delta_cos_agop") -> RunRecord:
    res = fake_results(depth=2, checkpoints=[0, 1, 2, 3], epochs=3)
    res.config["analysis"]["primary"] = primary
    for a, v in zip(res.analysis, [None, *values], strict=True):
        for entry in a["layers"]:
            entry.update(alpha_star=v, alpha_corr=None if v is None else 0.4)
            entry["alphas"] = {"raw_cos": {"alpha_star": v, "alpha_corr": 0.5}}
    return res


@pytest.mark.parametrize(("primary", "metric", "ansatz"), [
    ("delta_cos_agop", "alpha_star", False), ("raw_pearson_agop", "alpha_star", True),
    ("delta_cos_agop", "alpha_star_raw_cos", True)])
def test_run_exponent_figure_says_its_kind_and_marks_the_grid_ends(primary: str, metric: str,
                                                                   ansatz: bool) -> None:
    fig = training_analysis_figure(_alpha_record([2.0, 1.0, 0.0], primary), metric)
    overview = next(ax for ax in fig.axes if ax.get_title().startswith("all layers"))
    ends = {(ln.get_marker(), float(y)) for ln in overview.get_lines() if ln.get_marker() in ("^", "v")
            for y in ln.get_ydata()}
    assert ends == {("^", 2.0), ("v", 0.0)}
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == style.ANSATZ_GID]
    assert bool(lines) == ansatz
    kind = "raw NFM" if ansatz else "delta NFM"
    assert kind in fig.get_suptitle() and any(kind in ax.get_ylabel() for ax in fig.axes)
    legend = " ".join(t.get_text() for t in fig.legends[0].get_texts())
    assert "censored" in legend and ("ansatz" in legend) == ansatz


def test_the_preset_is_in_the_figure_titles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of experiment=seed (Hydra's choice in .hydra/hydra.yaml): both figures name each
    setting of the preset with the value the run used."""
    import yaml

    from agop_sweep.config.presets import preset_settings
    from agop_sweep.figures import run as run_module

    settings = preset_settings("experiment", "seed")
    assert {"optimizer", "model.init", "trainer.precision"} <= set(settings)
    res = fake_results(depth=2, checkpoints=[0, 1, 2, 3], epochs=3)
    res.config.update(optimizer={"name": "muon_seed"}, model={"init": settings["model.init"]},
                      trainer={"precision": "fp32"})  # the command line changed the precision
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"experiment": "seed", "optimizer": "muon_seed"}}}}))
    titles = []
    monkeypatch.setattr(run_module, "save_figure",
                        lambda fig, stem, formats: titles.append(fig.get_suptitle()) or [])
    save_run_figures(res, tmp_path, features=None)
    np.savez(tmp_path / "features.npz", **fake_features([0, 1, 2, 3], (1, 8, 8), n_layers=2))
    save_run_figures(res, tmp_path, features=None)
    assert len(titles) == 3
    for title in titles:
        flat = title.replace("\n", " ")
        assert f"experiment=seed: optimizer=muon_seed, model.init={settings['model.init']}," in flat
        assert f"trainer.precision=fp32 (preset: {settings['trainer.precision']})" in flat
        for key in settings:
            assert f"{key}=" in flat
