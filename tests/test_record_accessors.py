"""The RunRecord accessors the figures and the aggregate read with: epoch_metric,
layer_field and metric_names (NaN, never an exception, for what a run did not record), error,
diverged_epoch and loss_name; and validation of the layer entries they index by."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agop_sweep.store.record import RecordError, RunRecord, validate


def _record() -> RunRecord:
    record = RunRecord.start({"optimizer": "sgd", "depth": 2}, {})
    record.finish_epoch({"epoch": 1, "train_loss": 0.5, "val_loss": None, "train_acc": True, "val_acc": 0.2})
    record.finish_epoch({"epoch": 0, "train_loss": 1.0, "val_loss": 2.0, "train_acc": 0.1})
    spectra = {"agop": {"effective_rank": 3.5, "top5_share": [0.4, 0.3]}, "nfm_delta": None}
    record.add_analysis({"epoch": 0, "n_samples": 8, "seconds": 0.0, "layers": [
        {"layer": 0, "shape": [4, 8], "corr": None, "metrics": {"raw_cos_agop": 0.3, "delta_cos_agop": None}},
        {"layer": 1, "shape": [4, 4], "corr": None, "metrics": {"raw_cos_agop": 0.4}, "spectra": spectra},
    ]})
    record.add_analysis({"epoch": 2, "n_samples": 8, "seconds": 0.0, "layers": [
        {"layer": 1, "shape": [4, 4], "corr": 0.9, "metrics": {"raw_cos_agop": 0.6, "extra_variant": 0.1}},
    ]})
    return record


def test_epoch_metric_in_epoch_order_with_nan_for_null_missing_and_non_numbers() -> None:
    record = _record()
    epochs, train = record.epoch_metric("train_loss")
    np.testing.assert_array_equal(epochs, [0, 1])
    np.testing.assert_array_equal(train, [1.0, 0.5])
    for key, expected in (("val_loss", [2.0, np.nan]), ("val_acc", [np.nan, 0.2]),
                          ("train_acc", [0.1, np.nan]), ("nope", [np.nan, np.nan])):
        np.testing.assert_array_equal(record.epoch_metric(key)[1], expected)
    assert [a.size for a in RunRecord.start({}, {}).epoch_metric("train_loss")] == [0, 0]


def test_layer_field_follows_dotted_paths_and_list_indices() -> None:
    record = _record()
    epochs, rank = record.layer_field("spectra.agop.effective_rank")
    np.testing.assert_array_equal(epochs, [0, 2])
    np.testing.assert_array_equal(rank, [[np.nan, 3.5], [np.nan, np.nan]])
    np.testing.assert_array_equal(record.layer_field("spectra.agop.top5_share.1")[1], [[np.nan, 0.3],
                                                                                       [np.nan, np.nan]])
    for missing in ("spectra.agop.top5_share.7", "spectra.nfm_delta.effective_rank", "spectra.agop.x.y",
                    "spectra.agop.top5_share.first", "shape.0.1"):
        assert np.isnan(record.layer_field(missing)[1]).all(), missing
    np.testing.assert_array_equal(record.layer_field("shape.1")[1], [[8, 4], [np.nan, 4]])
    # A plain key reads as layer_metric does.
    np.testing.assert_array_equal(record.layer_field("corr")[1], record.layer_metric()[1])


def test_metric_names_first_seen_order() -> None:
    assert _record().metric_names() == ["raw_cos_agop", "delta_cos_agop", "extra_variant"]
    assert RunRecord.start({}, {}).metric_names() == []


def test_error_diverged_epoch_and_loss_name() -> None:
    record = _record()
    assert record.error is None and record.diverged_epoch is None and record.loss_name() == "mse"
    record.mark_failed("RuntimeError: boom")
    assert record.error == "RuntimeError: boom"
    record.mark_diverged(3)
    assert record.diverged_epoch == 3
    record = RunRecord({**record.document(), "diverged_epoch": True, "error": 7})
    assert record.diverged_epoch is None and record.error is None  # not what README says is written there
    assert RunRecord.start({"loss": "ce"}, {}).loss_name() == "ce"
    assert RunRecord.start({}, {"loss": "ce"}).loss_name() == "ce"


def _with_layers(*layers: dict) -> dict:
    record = RunRecord.start({"depth": 2}, {})
    ok = [{"layer": l, "shape": [4, 4], "corr": 0.5, "metrics": {"raw_cos_agop": 0.5}} for l in (0, 1)]
    record.add_analysis({"epoch": 0, "n_samples": 8, "seconds": 0.0, "layers": ok})
    record.add_analysis({"epoch": 1, "n_samples": 8, "seconds": 0.0, "layers": list(layers)})
    return record.document()


@pytest.mark.parametrize(("layer", "reason"), [
    ({"layer": 2, "metrics": {}}, "the analysis of epoch 1 has layer 2, outside 0..1"),
    ({"layer": -1, "metrics": {}}, "the analysis of epoch 1 has layer -1, outside 0..1"),
    ({"layer": "0", "metrics": {}}, "the analysis of epoch 1 has layer '0', outside 0..1"),
    ({"layer": True, "metrics": {}}, "the analysis of epoch 1 has layer True, outside 0..1"),
    ({"layer": 1, "corr": 0.5}, "layer 1 of the analysis of epoch 1 has no 'metrics' object"),
    ({"layer": 1, "metrics": [0.5]}, "layer 1 of the analysis of epoch 1 has no 'metrics' object"),
])
def test_validate_rejects_bad_layer_entries(layer: dict, reason: str) -> None:
    validate(_with_layers({"layer": 0, "metrics": {}}))  # a partial analysis is fine
    with pytest.raises(RecordError) as e:
        RunRecord.from_dict(_with_layers(layer), "run/results.json")
    assert str(e.value) == f"run/results.json is not an agop_sweep results.json: {reason}"
    assert "\n" not in str(e.value)


def test_load_rejects_a_layer_index_past_the_layers(tmp_path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_with_layers({"layer": 5, "metrics": {}})))
    with pytest.raises(RecordError, match=r"has layer 5, outside 0\.\.1"):
        RunRecord.load(path)
