"""One evaluation engine: compare and sweep give the same numbers for the same ranges, and how
the engine bounds its memory (slices, tensors a group at a time) changes no number."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantlab import defaults
from quantlab.calibrate import Method, calibrate
from quantlab.data import read_idx
from quantlab.evaluation.compare import compare
from quantlab.evaluation.engine import OrtRunner, evaluate, tensor_errors
from quantlab.evaluation.heldout import HeldOut
from quantlab.evaluation.options import CompareOptions
from quantlab.evaluation.sweep import sweep
from quantlab.graph import load_model
from quantlab.qdq import export_qdq
from quantlab.workload import DataSpec

FIDELITY = ("samples", "cosine_similarity", "sqnr_db", "max_abs_error", "top1_agreement", "fp32_top1", "int8_top1",
            "fp32_top5", "int8_top5")


@pytest.fixture(scope="module")
def quantized():
    graph = load_model(defaults.MODEL)
    table = calibrate(graph, DataSpec(num_samples=128), method="mse", progress=False).table
    model, _ = export_qdq(graph, table.activations, table.weights, emulate=True)  # the model compare scores
    return graph, model


def test_compare_and_sweep_give_the_same_numbers_for_the_same_ranges(tmp_path):
    calib, heldout = DataSpec(num_samples=128), DataSpec(num_samples=200)
    swept = sweep(calib=calib, heldout=heldout, methods=[("percentile", {"p": 99.99})], progress=False)
    calibrate(data=calib, method=Method("percentile", {"p": 99.99}), output=tmp_path / "m.cache", progress=False)
    compared = compare(cache=tmp_path / "m.quantlab.json", data=heldout, options=CompareOptions(tensor_samples=0),
                       progress=False).data
    row, output = swept["results"][0], compared["outputs"][0]
    assert {k: row[k] for k in FIDELITY} == {k: output[k] for k in FIDELITY}


def test_running_batches_in_slices_changes_no_number(quantized):
    graph, model = quantized
    held = HeldOut(graph, DataSpec(num_samples=96, batch_size=32))
    whole = evaluate(OrtRunner(graph.model), {"q": OrtRunner(model)}, held.batches(), ["logits"])["q"]
    sliced = evaluate(OrtRunner(graph.model), {"q": OrtRunner(model)}, held.batches(), ["logits"], per_run=5)["q"]
    assert whole.outputs == sliced.outputs


def test_per_tensor_errors_do_not_depend_on_how_many_tensors_a_pass_measures(quantized):
    # Up to float rounding: a tensor asked for as an output stops ONNX Runtime fusing Conv+Clip
    # around it, and the fused kernel may round a value differently in its last bit.
    graph, model = quantized
    held = HeldOut(graph, DataSpec(num_samples=32))
    names = [n for n in graph.activations if n != "image"]
    all_at_once = tensor_errors(graph.model, model, names, held.batches, group=len(names))
    four_at_a_time = tensor_errors(graph.model, model, names, held.batches, group=4)
    assert [t["tensor"] for t in all_at_once.tensors] == [t["tensor"] for t in four_at_a_time.tensors] == names
    np.testing.assert_allclose([t["sqnr_db"] for t in all_at_once.tensors],
                               [t["sqnr_db"] for t in four_at_a_time.tensors], rtol=1e-6)


def test_headline_numbers_do_not_change_when_per_tensor_errors_are_measured(tmp_path):
    calibrate(data=DataSpec(num_samples=64), output=tmp_path / "m.cache", method="max", progress=False)
    with_tensors = compare(cache=tmp_path / "m.cache", data=DataSpec(num_samples=64), progress=False).data
    without = compare(cache=tmp_path / "m.cache", data=DataSpec(num_samples=64),
                      options=CompareOptions(tensor_samples=0), progress=False).data
    assert with_tensors["outputs"] == without["outputs"] and with_tensors["tensors"] and not without["tensors"]


def test_latency_is_a_median_with_its_spread_and_the_thread_count(quantized):
    graph, _ = quantized
    images = read_idx(defaults.HELDOUT_DATA)[:1].astype(np.float32)[:, None] / 255
    latency = OrtRunner(graph.model).latency({"image": images}, repeats=10)
    assert latency["p10_ms"] <= latency["median_ms"] <= latency["p90_ms"]
    assert latency["runs"] == 10 and latency["intra_op_threads"] >= 1


def test_compare_picks_the_classification_metric_for_logits_and_says_so(tmp_path):
    from conftest import run_cli

    run_cli("calibrate", "--num-samples", "32", "-q", cwd=tmp_path, check=True)
    data = json.loads(run_cli("compare", "--num-samples", "32", "--tensor-samples", "0", "--json", "-q",
                              cwd=tmp_path, check=True).stdout)
    assert data["metric"]["metric"] == "classification" and data["metric"]["chosen"] == "auto"
    assert data["metric"]["score"] == data["outputs"][0]["int8_top1"]
    assert any("metric: classification (chosen from the outputs' shapes" in note for note in data["notes"])


def test_sweep_ranks_by_the_metric_it_is_given(tmp_path):
    from conftest import run_cli

    data = json.loads(run_cli("sweep", "--num-samples", "64", "--eval-num-samples", "64", "--rank-by", "fidelity",
                              "--json", "-q", cwd=tmp_path, check=True).stdout)
    scores = [row["score"] for row in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(row["score_name"] == "sqnr_db" and row["score"] == row["sqnr_db"] for row in data["results"])


def test_an_unknown_metric_is_one_line_naming_the_installed_ones(tmp_path):
    from conftest import run_cli

    run_cli("calibrate", "--num-samples", "16", "-q", cwd=tmp_path, check=True)
    proc = run_cli("compare", "--num-samples", "16", "--metric", "bleu", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "classification" in proc.stderr and "--metric" in proc.stderr
