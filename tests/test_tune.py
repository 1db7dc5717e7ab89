"""``--method auto``, sensitivity, and ``tune`` under an accuracy budget, on the embedded real model."""

from __future__ import annotations

import gzip
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantlab import defaults
from quantlab.calibrate import Method, calibrate, collect_statistics
from quantlab.errors import QuantlabError
from quantlab.evaluation.engine import OrtRunner
from quantlab.evaluation.heldout import HeldOut
from quantlab.evaluation.options import EvalOptions
from quantlab.formats.ranges import read_ranges
from quantlab.interpreter import NodeSessions, TwoPathRun
from quantlab.interpreter.arithmetic import relative_error
from quantlab.qdq import export_qdq
from quantlab.tune.auto import (
    AUTO_CANDIDATES,
    JUDGED,
    AutoOptions,
    candidate_tables,
    choose_ranges,
    consumers_of,
    fake_quantize,
)
from quantlab.tune.options import Budget, SearchOptions, TuneOutput
from quantlab.tune.pipeline import tune, tuned_paths
from quantlab.tune.search import search
from quantlab.tune.sensitivity import Scorer, quantized_layers, variant
from quantlab.workload import DataSpec, resolve_model, sample_inputs

from conftest import run_cli

pytestmark = pytest.mark.slow


def _heldout_images(count: int) -> np.ndarray:
    raw = gzip.open(defaults.HELDOUT_DATA).read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count]


@pytest.fixture(scope="module")
def auto(graph, stats):
    return choose_ranges(graph, stats, DataSpec(), AutoOptions(samples=32), progress=False)


@pytest.fixture(scope="module")
def auto_in_sample(graph, stats):
    return choose_ranges(graph, stats, DataSpec(), AutoOptions(samples=32, held_out=False), progress=False)


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """300 real held-out images without labels: the metric is top-1 agreement with FP32."""
    path = tmp_path_factory.mktemp("eval") / "heldout.npz"
    np.savez(path, x=_heldout_images(300))
    return path


@pytest.fixture(scope="module")
def tuned(graph, unlabelled, tmp_path_factory):
    """A tune whose budget (0.4 points of agreement) auto's all-INT8 model misses on these samples, started
    from auto's ranges alone (``compare_methods=False``: max's would meet it with no float layer)."""
    folder = tmp_path_factory.mktemp("tuned")
    out = folder / "model.qdq.onnx"
    data = tune(graph, DataSpec(), DataSpec(str(unlabelled)), budget=Budget(max_drop=0.4),
                search=SearchOptions(sensitivity="float", auto_samples=16, compare_methods=False),
                output=TuneOutput(out, report=folder / "report"), progress=False)
    return data, {**tuned_paths(out), "report": folder / "report"}


def test_fake_quantize_matches_onnxruntime_quantize_dequantize():
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    scale = np.float32(2.0 / 127)
    nodes = [onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    model = onnx.helper.make_model(onnx.helper.make_graph(
        nodes, "qdq", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1001])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1001])],
        [onnx.numpy_helper.from_array(scale, "s"), onnx.numpy_helper.from_array(np.int8(0), "z")]),
        opset_imports=[onnx.helper.make_opsetid("", 13)])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_array_equal(fake_quantize(x, 2.0), expected)


def _output_error(graph, model, inputs) -> float:
    """Relative squared error of a Q/DQ model's outputs against FP32 (TensorRT-faithful arithmetic)."""
    reference = OrtRunner(graph.model).run(inputs)
    got = OrtRunner(model).run(inputs)
    return sum(relative_error(got[n], reference[n]) for n in graph.output_names)


def test_auto_in_sample_is_never_worse_at_the_outputs_than_any_single_method_on_its_samples(auto_in_sample, graph,
                                                                                            stats):
    table, choice = auto_in_sample
    inputs = sample_inputs(graph, DataSpec(), choice.samples)
    singles = candidate_tables(graph, stats, AUTO_CANDIDATES)
    errors = {label: _output_error(graph, export_qdq(graph, t.activations, t.weights, JUDGED)[0], inputs)
              for label, t in singles.items()}
    mine = _output_error(graph, export_qdq(graph, table.activations, table.weights, JUDGED)[0], inputs)
    assert mine <= min(errors.values()) * (1 + 1e-9)


def test_autos_int8_path_computes_exactly_what_the_exported_qdq_model_computes(graph, stats):
    table = candidate_tables(graph, stats, [("entropy", {})])["entropy"]
    inputs = sample_inputs(graph, DataSpec(), 16)
    readers = consumers_of(graph, graph.quantizable)
    fixed = {name: table.activations[name] for name in readers}
    _, _, values = TwoPathRun(NodeSessions(graph), readers, fixed).run(inputs)
    exported = OrtRunner(export_qdq(graph, table.activations, table.weights, JUDGED)[0]).run(inputs)
    np.testing.assert_array_equal(values["logits"], exported["logits"])


def test_auto_takes_each_tensors_range_from_the_method_it_records(auto, graph, stats):
    table, _ = auto
    singles = candidate_tables(graph, stats, AUTO_CANDIDATES)
    for name, label in table.methods.items():
        assert table.activations[name] == singles[label].activations[name]


def test_auto_records_each_tensors_method_in_the_table(auto):
    table, choice = auto
    labels = set(choice.candidates)
    assert set(table.methods) == set(table.activations)
    assert set(table.methods.values()) <= labels
    written = json.loads(table.to_json())
    assert all(entry["method"] in labels for entry in written["activations"].values())


def test_auto_tensors_that_feed_quantized_layers_are_judged_at_those_layers(auto, graph):
    _, choice = auto
    judged = {name for name, how in choice.judged_by.items() if how == "consumers"}
    assert judged == set(graph.quantizable)


def test_calibrate_auto_writes_an_ordinary_tensorrt_cache(tmp_path):
    result = calibrate(method=Method("auto", {"samples": 16}), output=tmp_path / "m.cache", progress=False)
    ranges = read_ranges(tmp_path / "m.cache")
    assert ranges.format == "trt"
    assert (tmp_path / "m.cache").read_text().startswith("TRT-8601-EntropyCalibration2")
    assert set(ranges.amax) == set(result.table.activations)


def test_auto_does_not_depend_on_the_batch_size():
    one = calibrate(method=Method("auto", {"samples": 32}), data=DataSpec(batch_size=8), progress=False)
    two = calibrate(method=Method("auto", {"samples": 32}), data=DataSpec(batch_size=32), progress=False)
    assert one.table.activations == two.table.activations
    assert one.table.methods == two.table.methods


def test_auto_without_the_calibration_data_is_refused(tmp_path):
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(defaults.MODEL.read_bytes())
    graph = resolve_model(copy)
    stats = collect_statistics(graph, DataSpec(str(defaults.CALIBRATION_DATA), num_samples=32), progress=False)
    stats.save(tmp_path / "s.npz")
    with pytest.raises(QuantlabError, match="needs the calibration data"):
        calibrate(graph, stats=[tmp_path / "s.npz"], method="auto", progress=False)


def test_auto_refuses_parameters_it_does_not_take():
    with pytest.raises(QuantlabError, match="for method .auto.*it takes samples"):
        calibrate(method=Method("auto", {"p": 99}), progress=False)


def test_auto_candidates_cover_every_built_in_method():
    assert {method for method, _ in AUTO_CANDIDATES} == {"entropy", "mse", "percentile", "max"}


def test_tune_meets_a_reachable_budget(tuned):
    data, _ = tuned
    assert data["all_int8"]["drop"] > 0.4  # the budget binds: all INT8 misses it
    assert data["met"]
    assert data["fallback"]
    assert data["written"]["drop"] <= 0.4


def test_tune_keeps_only_fallback_steps_that_helped(tuned):
    data, _ = tuned
    kept = [step for step in data["search"] if step["action"] == "kept"]
    assert [step["layer"] for step in kept] == data["fallback"]
    scores = [data["search"][0]["score"]] + [step["score"] for step in kept]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)


def test_tune_ranks_every_quantized_layer_by_node_name(tuned, graph):
    data, _ = tuned
    names = {node.name for node in graph.model.graph.node}
    assert len(data["ranking"]) == data["quantized_layers"]
    assert set(data["ranking"]) <= names


def test_tuned_qdq_model_has_no_qdq_on_fallback_layers_and_runs(tuned):
    data, paths = tuned
    model = onnx.load(paths["qdq_model"])
    onnx.checker.check_model(model, full_check=True)
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.name in data["fallback"]:
            assert not any(i in dequantized for i in node.input)
    session = ort.InferenceSession(paths["qdq_model"].read_bytes(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": (_heldout_images(4) / 255.0).astype(np.float32)})[0]
    assert out.shape == (4, 10) and out.dtype == np.float32


def test_tuned_fallback_layers_compute_in_fp16_by_default(tuned):
    data, paths = tuned
    model = onnx.load(paths["qdq_model"])
    fp16 = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.name in data["fallback"]:
            assert node.input[1] in fp16


def test_tuned_cache_and_qdq_model_quantize_the_same_layer_inputs(tuned, graph):
    data, paths = tuned
    cache = read_ranges(paths["cache"]).amax
    model = onnx.load(paths["qdq_model"])
    # In the fp16-typed model a tensor computed in fp16 is <name>_fp16 (quantlab.qdq.remainder.retype).
    quantized = {n.input[0].removesuffix("_fp16") for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert quantized <= set(cache)
    fallback = set(data["fallback"])
    only_fallback = {name for name in graph.quantizable
                     if {n.name for n in graph.model.graph.node if name in n.input[:2]
                         and n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")} <= fallback}
    assert not (only_fallback - set(graph.output_names) - {s.name for s in graph.inputs}) & set(cache)


def test_tuned_trtexec_line_names_every_fallback_layer(tuned):
    data, _ = tuned
    for layer in data["fallback"]:
        assert f"{layer}:fp16" in data["trtexec"]
    assert "--precisionConstraints=obey" in data["trtexec"]


def test_tune_table_records_the_fallback_and_the_metric_before_and_after(tuned):
    data, paths = tuned
    table = json.loads(paths["table"].read_text())
    assert table["method"] == "auto"
    assert table["provenance"]["tune"]["fallback"] == data["fallback"]
    assert table["provenance"]["tune"]["all_int8"]["drop"] > table["provenance"]["tune"]["written"]["drop"]


def test_an_unreachable_budget_is_reported_as_missed_with_the_best_reached(graph, unlabelled):
    data = tune(graph, DataSpec(), DataSpec(str(unlabelled)), budget=Budget(max_drop=0.0, max_float_layers=0),
                search=SearchOptions(auto_samples=16, compare_methods=False), progress=False)
    assert data["all_int8"]["drop"] > 0
    assert not data["met"] and data["fallback"] == []
    assert any("was not met" in note and "(the limit, max_float_layers, is 0)" in note for note in data["notes"])


def test_the_speculative_search_takes_the_steps_of_the_sequential_one(graph, unlabelled):
    table = calibrate(method=Method("auto", {"samples": 16}), progress=False).table
    held = HeldOut(graph, DataSpec(str(unlabelled), num_samples=100))
    scorer = Scorer(graph, held, EvalOptions(metric="classification"), progress=False)
    base = scorer.score({"auto": variant(table, [], "fp16")})["auto"]
    ranking = quantized_layers(variant(table, [], "fp16").build(graph))[::-1]
    found = {lookahead: search(ranking, base, lambda chosen: variant(table, chosen, "fp16"), scorer, 0.0, 5, lookahead)
             for lookahead in (1, 4)}
    assert found[1].path == found[4].path and found[1].fallback == found[4].fallback
    assert found[4].passes < found[1].passes


def test_auto_on_a_model_with_a_fixed_batch_size_judges_whole_models(tmp_path):
    model = onnx.load(defaults.MODEL)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(model, tmp_path / "fixed.onnx")
    result = calibrate(str(tmp_path / "fixed.onnx"), DataSpec(str(defaults.CALIBRATION_DATA), num_samples=32,
                                                              batch_size=4),
                       method=Method("auto", {"samples": 8}), progress=False)
    auto = result.table.provenance["auto"]
    assert auto["samples"] == 8 and auto["winner"] in auto["network_error"]
    assert auto["network_error"][auto["winner"]] == min(auto["network_error"].values())


def test_ranking_samples_must_be_positive(graph, unlabelled):
    with pytest.raises(QuantlabError, match="ranking_samples"):
        tune(graph, DataSpec(), DataSpec(str(unlabelled)), search=SearchOptions(ranking_samples=-5), progress=False)


def test_a_budget_on_a_metric_that_is_not_a_fraction_is_refused(graph, unlabelled):
    with pytest.raises(QuantlabError, match="not a fraction"):
        tune(graph, DataSpec(), DataSpec(str(unlabelled), num_samples=32), evaluation=EvalOptions(metric="fidelity"),
             search=SearchOptions(auto_samples=8), progress=False)


def test_evaluation_data_that_overlaps_the_calibration_data_is_warned_about(graph):
    data = tune(graph, DataSpec(), DataSpec(str(defaults.CALIBRATION_DATA), num_samples=64),
                budget=Budget(max_drop=100), search=SearchOptions(auto_samples=8), progress=False)
    assert data["heldout"]["overlap_with_calibration"] == 64
    assert any("also calibration samples" in note for note in data["notes"])


def test_a_detection_metric_on_a_classifier_names_its_output_shapes():
    with pytest.raises(QuantlabError, match=r"of logits \(32, 10\)"):
        tune(None, DataSpec(), DataSpec(), evaluation=EvalOptions(metric="detection"),
             search=SearchOptions(auto_samples=8), progress=False)


def test_cli_tune_runs_on_the_embedded_default_with_no_arguments(tmp_path):
    result = run_cli("tune", "--json", "--eval-num-samples", "100", "--auto-samples", "16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (tmp_path / "fashion_mnist_cnn.tuned.qdq.onnx").is_file()
    assert (tmp_path / "fashion_mnist_cnn.tuned.cache").is_file()
    assert data["outputs"]["table"].endswith("fashion_mnist_cnn.tuned.quantlab.json")


def test_cli_tune_of_a_model_without_eval_data_is_a_one_line_error(tmp_path):
    result = run_cli("tune", str(defaults.MODEL), "--data", str(defaults.CALIBRATION_DATA), cwd=tmp_path)
    assert result.returncode == 2
    assert "--eval-data" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_tune_report_has_the_ranking_the_search_path_and_every_method(tuned):
    data, paths = tuned
    markdown = (paths["report"] / "report.md").read_text()
    assert "## Sensitivity (most sensitive first)" in markdown and "## Search path" in markdown
    for layer in data["fallback"]:
        assert layer in markdown
    assert "| auto |" in markdown
    for method in data["single_methods"]:
        assert f"| {method} |" in markdown
    assert json.loads((paths["report"] / "report.json").read_text())["fallback"] == data["fallback"]
    assert (paths["report"] / "report.html").is_file()


def test_tune_on_two_processes_gives_the_numbers_of_one(graph, unlabelled):
    def run(executor):
        return tune(graph, DataSpec(), DataSpec(str(unlabelled), num_samples=128),
                    budget=Budget(max_drop=0.0, max_float_layers=2),
                    search=SearchOptions(sensitivity="float", ranking_samples=64, auto_samples=8), progress=False,
                    executor=executor)

    here, there = run("local"), run("processes")
    assert there["executor"]["name"] == "processes" and there["executor"]["workers"] > 1
    for key in ("all_int8", "sensitivity", "ranking", "fallback", "search", "written"):
        assert here[key] == there[key], key
