"""``auto`` judged on held-out samples, and bias correction, on the embedded real model and its real data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quantlab import defaults
from quantlab.calibrate import Method, calibrate, calibrate_statistics, collect_statistics, method_label
from quantlab.corrections import BiasCorrection, correct_biases
from quantlab.evaluation.engine import OrtRunner
from quantlab.graph import add_outputs
from quantlab.histogram import rebinned
from quantlab.qdq import QdqOptions, export_qdq, quantized_layers
from quantlab.statistics import Statistics
from quantlab.tune.auto import AUTO_CANDIDATES, MIN_FITTED, MIN_JUDGED, AutoOptions, choose_ranges, judging_split
from quantlab.workload import DataSpec, resolve_model, sample_inputs

from conftest import run_cli

pytestmark = pytest.mark.slow
JUDGED_QDQ = QdqOptions(placement="compute", high_precision="fp32")


@pytest.fixture(scope="module")
def entropy(graph, stats):
    return calibrate_statistics(graph, stats, "entropy")


@pytest.fixture(scope="module")
def corrections(graph, entropy):
    return correct_biases(graph, entropy.activations, DataSpec(), BiasCorrection(samples=32))


def test_the_statistics_of_the_other_samples_are_the_collection_minus_the_judged_ones(graph):
    whole = collect_statistics(graph, DataSpec(num_samples=96), progress=False)
    judged = judging_split(graph, whole, DataSpec(num_samples=96), 32, AutoOptions()).judged
    rest = whole.without(judged)
    assert rest.num_samples == 64
    for name, hist in rest.tensors.items():
        assert hist.exponent == whole.tensors[name].exponent
        part = judged.tensors[name]
        np.testing.assert_array_equal(hist.counts + rebinned(part.counts, part.exponent, hist.exponent),
                                      whole.tensors[name].counts)


def test_statistics_that_do_not_contain_the_judged_samples_cannot_be_subtracted(graph):
    some = collect_statistics(graph, DataSpec(num_samples=32), progress=False)
    other = collect_statistics(graph, DataSpec(num_samples=32, seed=7), progress=False)
    assert some.without(other) is None


def test_auto_judges_on_samples_that_did_not_set_its_candidate_ranges(graph, stats):
    _, choice = choose_ranges(graph, stats, DataSpec(), AutoOptions(samples=32), progress=False)
    assert choice.held_out
    assert choice.note == f"candidates set on {stats.num_samples - 32} calibration samples, judged on 32 others"


def test_the_held_out_judgement_picks_ranges_the_in_sample_one_would_not(graph, stats):
    held, _ = choose_ranges(graph, stats, DataSpec(), AutoOptions(samples=32), progress=False)
    in_sample, _ = choose_ranges(graph, stats, DataSpec(), AutoOptions(samples=32, held_out=False), progress=False)
    changed = [name for name in held.methods if held.methods[name] != in_sample.methods[name]]
    assert changed, "the held-out judgement chose every tensor's method as the in-sample one did"


def test_auto_takes_its_final_ranges_from_all_the_calibration_samples(graph, stats):
    table, _ = choose_ranges(graph, stats, DataSpec(), AutoOptions(samples=32), progress=False)
    methods = {method_label(method, params): Method(method, params) for method, params in AUTO_CANDIDATES}
    for name, label in table.methods.items():
        one = Statistics(stats.model_sha256, {name: stats.tensors[name]}, stats.num_samples, bins=stats.bins)
        assert table.activations[name] == calibrate_statistics(graph, one, methods[label]).activations[name]


def test_too_few_calibration_samples_for_a_held_out_judgement_fall_back_in_sample_with_a_note(graph):
    few = collect_statistics(graph, DataSpec(num_samples=12), progress=False)
    _, choice = choose_ranges(graph, few, DataSpec(num_samples=12), AutoOptions(samples=32), progress=False)
    assert not choice.held_out
    assert f"needs at least {MIN_JUDGED + MIN_FITTED} calibration samples" in choice.note
    assert "there are 12" in choice.note


def _layer_mean_errors(graph, model, tensor, inputs):
    """Per output channel, the mean over samples and positions of INT8 minus FP32 at ``tensor``."""
    reference = OrtRunner(add_outputs(graph.model, [tensor])).run(inputs)[tensor]
    got = OrtRunner(add_outputs(model, [tensor])).run(inputs)[tensor]
    return (got.astype(np.float64) - reference).mean(axis=(0, 2, 3))


def test_bias_correction_reduces_the_mean_output_error_on_the_samples_it_saw(graph, entropy, corrections):
    inputs = sample_inputs(graph, DataSpec(), 32)
    plain = export_qdq(graph, entropy.activations, entropy.weights, JUDGED_QDQ)[0]
    corrected = export_qdq(graph, entropy.activations, entropy.weights, JUDGED_QDQ, biases=corrections.biases)[0]
    convs = [node for node in graph.model.graph.node if node.op_type == "Conv"
             and (node.name or node.output[0]) in corrections.biases]
    assert len(convs) >= 3
    for node in convs[:3]:
        before = np.linalg.norm(_layer_mean_errors(graph, plain, node.output[0], inputs))
        after = np.linalg.norm(_layer_mean_errors(graph, corrected, node.output[0], inputs))
        assert after < 0.5 * before, (node.name, before, after)


def test_bias_correction_is_exported_as_a_bias_only(graph, entropy, corrections):
    plain = export_qdq(graph, entropy.activations, entropy.weights)[0]
    corrected = export_qdq(graph, entropy.activations, entropy.weights, biases=corrections.biases)[0]
    assert [n.op_type for n in plain.graph.node] == [n.op_type for n in corrected.graph.node]
    plain_inits = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
    corrected_inits = {i.name: numpy_helper.to_array(i) for i in corrected.graph.initializer}
    changed = set(corrected_inits) - set(plain_inits)
    assert changed and all("_corrected_bias" in name for name in changed)  # typed: the fp16 copy of it
    kept = [name for name in plain_inits if name in corrected_inits]
    assert all(np.array_equal(plain_inits[name], corrected_inits[name]) for name in kept)
    biases = {node.input[2] for node in corrected.graph.node
              if node.op_type in ("Conv", "Gemm") and len(node.input) > 2}
    assert changed <= biases


def test_bias_correction_leaves_layers_the_placement_keeps_in_float_alone(graph, entropy):
    layers = quantized_layers(graph, entropy.activations, QdqOptions())
    result = correct_biases(graph, entropy.activations, DataSpec(), BiasCorrection(samples=8), layers)
    assert "/classifier/Gemm" not in result.biases
    assert result.skipped["/classifier/Gemm"] == "the Q/DQ placement leaves it in float"


def test_a_correction_is_not_written_to_a_layer_the_export_leaves_in_float(graph, entropy, corrections):
    assert "/classifier/Gemm" in corrections.biases  # measured with every layer in INT8
    model, report = export_qdq(graph, entropy.activations, entropy.weights, QdqOptions(high_precision="fp32"),
                               biases=corrections.biases)
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    assert gemm.input[2] == next(n for n in graph.model.graph.node if n.op_type == "Gemm").input[2]
    assert "/classifier/Gemm" not in report.corrected_biases
    assert any("leaves the layer in float" in note for note in report.notes)


def test_bias_correction_records_each_layer_and_the_size_of_its_correction(corrections):
    assert corrections.samples == 32
    for layer, shift in corrections.shifts.items():
        assert layer in corrections.biases
        assert shift["norm"] > 0 and shift["added"] is False


def test_bias_correction_gives_the_same_table_whatever_the_executor(tmp_path):
    tables = {}
    for executor in ("local", "processes"):
        result = calibrate(None, DataSpec(num_samples=128), "entropy", output=tmp_path / f"{executor}.cache",
                           progress=False, executor=executor, bias_correction=BiasCorrection(samples=16))
        tables[executor] = result.table
    assert tables["local"].biases.keys() == tables["processes"].biases.keys()
    for layer, bias in tables["local"].biases.items():
        np.testing.assert_array_equal(bias, tables["processes"].biases[layer])


def test_a_table_carries_its_corrected_biases_into_export_qdq(tmp_path):
    run_cli("calibrate", "--bias-correction", "16", "--num-samples", "64", "-o", str(tmp_path / "m.cache"), "-q")
    out = run_cli("export-qdq", "--cache", str(tmp_path / "m.quantlab.json"), "-o", str(tmp_path / "m.qdq.onnx"))
    assert out.returncode == 0, out.stderr
    model = onnx.load(tmp_path / "m.qdq.onnx")
    assert any("_corrected_bias" in i.name for i in model.graph.initializer)


def test_calibrate_says_a_trt_cache_cannot_carry_the_correction(tmp_path):
    out = run_cli("calibrate", "--bias-correction", "8", "--num-samples", "32", "-o", str(tmp_path / "m.cache"))
    assert out.returncode == 0, out.stderr
    assert "a TensorRT cache holds ranges only" in out.stdout
    assert "layer(s) corrected on 8 samples" in out.stdout


def test_a_fixed_batch_model_is_corrected_on_as_many_samples_as_its_batch_and_says_so(tmp_path, calib_images):
    """The whole graph runs on all the samples at once; a batch fixed at 2 (Reshapes that name it, as
    in YOLOv8n's export) takes 2, and the table says so instead of failing."""
    model = onnx.load(str(defaults.MODEL))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    path = tmp_path / "fixed.onnx"
    onnx.save(model, str(path))
    fixed = resolve_model(str(path))
    np.save(tmp_path / "calib.npy", calib_images[:64, None])
    data = DataSpec(str(tmp_path / "calib.npy"), batch_size=2)
    table = calibrate_statistics(fixed, collect_statistics(fixed, data, progress=False), "entropy")
    result = correct_biases(fixed, table.activations, data, BiasCorrection(32))
    assert result.samples == 2
    assert "fixed at 2" in result.to_dict()["samples_note"]
    assert result.biases
