"""Crafted and foreign files in a run dir (issue 22, point 4): every reader of a results.json or
features.npz that someone else may have written (aggregate, analyze, the app's run-dir check,
``python -m agop_sweep.figures``) skips or refuses it with one line naming the file, and
aggregate writes its whole set of outputs or none of it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from aggregate_fakes import write_fake_run
from conftest import TINY, copy_of, tree_digest

from agop_sweep.aggregate import command as agg_command
from agop_sweep.aggregate import main as aggregate_main
from agop_sweep.analyze.command import main as analyze_main
from agop_sweep.figures.__main__ import main as figures_main
from agop_sweep.figures.run import save_run_figures
from agop_sweep.store import rundir
from agop_sweep.store.features import FeaturesError, load_features
from agop_sweep.store.record import RecordError, RunRecord

# results.json texts that crashed the readers: RecursionError, OverflowError (float() of the
# integer), and a nesting below Python's recursion limit that the parser takes but no results.json has.
CRAFTED_RESULTS = {
    "deep": ("[" * 200_000 + "]" * 200_000, "nests more than 64 levels deep"),
    "deep500": ('{"schema_version": 1, "x": ' + "[" * 500 + "]" * 500 + "}",
                "nests more than 64 levels deep"),
    "bigint": ('{"schema_version": 1, "status": "completed", "run": {"seed": ' + "9" * 401 + "}}",
               "holds an integer of 401 digits"),
    "hugeint": ('{"n": ' + "1" * 5000 + "}", "holds an integer of 5000 digits"),
}


def _foreign_npz(path: Path) -> None:
    np.savez(path, x=np.arange(3))


def _zip_garbage(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04 not really a zip archive" * 8)


def _text_garbage(path: Path) -> None:
    path.write_bytes(b"garbage\n" * 20)


def _single_array(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, np.arange(64.0))


def _wrong_shapes(path: Path) -> None:
    d = {k: np.zeros((2, 10)) for k in ("nfm_diag", "nfm_delta_diag", "agop_diag")}
    np.savez(path, epochs=np.arange(2), image_shape=np.array([1, 8, 8]), **d)


def _objects(path: Path) -> None:
    np.savez(path, epochs=np.array([{"a": 1}], dtype=object))


CRAFTED_FEATURES = {
    "foreign": (_foreign_npz, "lacks 'epochs'"),
    "zip_garbage": (_zip_garbage, "BadZipFile"),
    "text_garbage": (_text_garbage, "cannot be read as a features.npz"),
    "single_array": (_single_array, "not an archive"),
    "wrong_shapes": (_wrong_shapes, "'nfm_diag' has shape [2, 10], not [2, 64]"),
    "objects": (_objects, "cannot be read as a features.npz"),
}


@pytest.fixture
def run_dir(finished_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's finished run (conftest), for analyze and the run-dir check."""
    return copy_of(finished_run, tmp_path)


def _sweep(tmp_path: Path) -> tuple[Path, Path]:
    """Two fake runs; the second is the one the tests spoil."""
    sweep = tmp_path / "sweep"
    write_fake_run(sweep / "optimizer=sgd", "sgd", 1, ["optimizer=sgd"])
    write_fake_run(sweep / "optimizer=adam", "adam", 1, ["optimizer=adam"])
    return sweep, sweep / "optimizer=adam"


def _one_line(capsys: pytest.CaptureFixture[str], prog: str, *words: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- results.json ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CRAFTED_RESULTS)
def test_a_crafted_results_json_is_refused_by_its_reader(case: str, tmp_path: Path) -> None:
    text, reason = CRAFTED_RESULTS[case]
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(RecordError) as err:
        RunRecord.load(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and reason in msg


@pytest.mark.parametrize("case", ["deep", "bigint"])
def test_aggregate_skips_a_crafted_results_json(case: str, tmp_path: Path, capsys,
                                                caplog: pytest.LogCaptureFixture) -> None:
    sweep, bad = _sweep(tmp_path)
    (bad / "results.json").write_text(CRAFTED_RESULTS[case][0])
    with caplog.at_level(logging.WARNING):
        aggregate_main([str(sweep), "--no-figures"])
    warned = [r.getMessage() for r in caplog.records if str(bad / "results.json") in r.getMessage()]
    assert len(warned) == 1 and CRAFTED_RESULTS[case][1] in warned[0]
    assert list(pd.read_csv(sweep / "runs.csv")["run"]) == ["optimizer=sgd"]
    assert str(bad / "results.json") in (sweep / "report.md").read_text()


@pytest.mark.parametrize("case", ["deep", "bigint"])
def test_figures_cli_refuses_a_crafted_results_json(case: str, tmp_path: Path, capsys) -> None:
    _, bad = _sweep(tmp_path)
    (bad / "results.json").write_text(CRAFTED_RESULTS[case][0])
    with pytest.raises(SystemExit) as e:
        figures_main([str(bad)])
    assert e.value.code == 1
    _one_line(capsys, "python -m agop_sweep.figures", str(bad / "results.json"), CRAFTED_RESULTS[case][1])
    assert not (bad / "plots").exists()


@pytest.mark.parametrize("case", ["deep", "bigint"])
def test_analyze_and_the_run_dir_check_refuse_a_crafted_results_json(case: str, run_dir: Path,
                                                                     capsys) -> None:
    (run_dir / "results.json").write_text(CRAFTED_RESULTS[case][0])
    before = tree_digest(run_dir)
    with pytest.raises(SystemExit) as e:
        analyze_main([str(run_dir)])
    assert e.value.code == 1
    _one_line(capsys, "agop-analyze", str(run_dir / "results.json"), CRAFTED_RESULTS[case][1])
    # The app's check: a file it cannot read is not its to overwrite, with or without resume
    # (no state.pt: nothing to continue from).
    (run_dir / "state.pt").unlink()
    assert rundir.holds_run(run_dir)
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        rundir.check_claimable(run_dir, {}, resume=False)
    with pytest.raises(rundir.RunDirError, match=r"holds no state\.pt, and its results\.json cannot be read"):
        rundir.check_claimable(run_dir, {}, resume=True)
    before.pop("state.pt")
    assert tree_digest(run_dir) == before


def test_a_new_run_into_a_dir_with_a_crafted_results_json_is_one_line(run_dir: Path, app_here) -> None:
    (run_dir / "results.json").write_text(CRAFTED_RESULTS["deep"][0])
    (run_dir / "state.pt").unlink()
    before = tree_digest(run_dir)
    proc = app_here(*TINY, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "already holds a run" in proc.stderr
    assert tree_digest(run_dir) == before


# -- features.npz ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CRAFTED_FEATURES)
def test_load_features_refuses_what_is_not_one(case: str, tmp_path: Path) -> None:
    make, reason = CRAFTED_FEATURES[case]
    path = tmp_path / "features.npz"
    make(path)
    with pytest.raises(FeaturesError) as err:
        load_features(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and reason in msg, msg


@pytest.mark.parametrize("case", ["foreign", "zip_garbage"])
def test_aggregate_draws_without_a_foreign_features_npz(case: str, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture,
                                                       saved_figures: list[str]) -> None:
    """A foreign file is refused before any output is written, not half-way (a KeyError)."""
    sweep, bad = _sweep(tmp_path)
    CRAFTED_FEATURES[case][0](bad / "features.npz")
    with caplog.at_level(logging.WARNING):
        aggregate_main([str(sweep)])
    warned = [r.getMessage() for r in caplog.records if str(bad / "features.npz") in r.getMessage()]
    assert len(warned) == 1 and CRAFTED_FEATURES[case][1] in warned[0]
    assert (sweep / "runs.csv").is_file() and (sweep / "report.md").is_file()
    assert {"features", "comparison"} <= set(saved_figures)


@pytest.mark.parametrize("case", ["foreign", "zip_garbage"])
def test_figures_cli_refuses_a_foreign_features_npz_and_draws_nothing(case: str, tmp_path: Path,
                                                                      capsys) -> None:
    _, bad = _sweep(tmp_path)
    CRAFTED_FEATURES[case][0](bad / "features.npz")
    with pytest.raises(SystemExit) as e:
        figures_main([str(bad)])
    assert e.value.code == 1
    _one_line(capsys, "python -m agop_sweep.figures", str(bad / "features.npz"), CRAFTED_FEATURES[case][1])
    assert not (bad / "plots").exists()


def test_the_run_figures_leave_a_foreign_features_npz_out(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """What a run and analyze draw (not strict): the training figure, and a warning for the file."""
    _, bad = _sweep(tmp_path)
    _foreign_npz(bad / "features.npz")
    with caplog.at_level(logging.WARNING):
        written = save_run_figures(RunRecord.in_dir(bad), bad, formats=("png",))
    assert [p.name for p in written] == ["training_analysis.png"]
    assert any(str(bad / "features.npz") in r.getMessage() for r in caplog.records)


# -- aggregate: all of its outputs or none ---------------------------------------------------------
def test_a_failing_aggregate_leaves_the_earlier_outputs_as_they_were(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    sweep, _ = _sweep(tmp_path)
    aggregate_main([str(sweep)])
    before = tree_digest(sweep)
    write_fake_run(sweep / "optimizer=muon", "muon", 1, ["optimizer=muon"])
    after_new_run = tree_digest(sweep)
    assert set(before) < set(after_new_run)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a figure that cannot be drawn")

    monkeypatch.setattr(agg_command, "effective_rank_figure", broken)  # drawn after three others
    with pytest.raises(RuntimeError):
        agg_command.aggregate([sweep])
    assert tree_digest(sweep) == after_new_run  # no half set, no staging dir left behind
    assert not any(p.name.startswith(agg_command.STAGING_PREFIX) for p in sweep.iterdir())


# -- NaN and Infinity literals -----------------------------------------------------------------------
def test_aggregate_names_a_results_json_with_nan_or_infinity(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Python's parser takes NaN and Infinity, which results.json never holds (it writes null):
    they are still read as missing, and the file is named in a warning (issue 22, point 8)."""
    sweep, bad = _sweep(tmp_path)
    text = (bad / "results.json").read_text()
    first = text.index('"val_loss": ') + len('"val_loss": ')
    end = text.index(",", first)
    text = text[:first] + "NaN" + text[end:]
    text = text.replace('"train_acc": ', '"train_acc": Infinity, "x": ', 1)
    (bad / "results.json").write_text(text)
    assert RunRecord.load(bad / "results.json").nonfinite == ["NaN", "Infinity"]
    with caplog.at_level(logging.WARNING):
        aggregate_main([str(sweep), "--no-figures"])
    warned = [r.getMessage() for r in caplog.records if str(bad / "results.json") in r.getMessage()]
    assert len(warned) == 1 and "2 non-finite number(s) (NaN, Infinity)" in warned[0], warned
    table = pd.read_csv(sweep / "runs.csv")
    assert list(table["run"]) == ["optimizer=adam", "optimizer=sgd"]  # read, not skipped
    assert not [r for r in caplog.records if str(sweep / "optimizer=sgd") in r.getMessage()]
