"""Q/DQ export: the bridge from any cache to TensorRT 11's explicit quantization, run in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantlab import defaults
from quantlab.data import IdxDataset
from quantlab.errors import QuantlabError
from quantlab.formats.ranges import read_ranges
from quantlab.graph import load_model
from quantlab.qdq import QdqOptions, export_qdq

from conftest import run_cli


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qdq")
    run_cli("calibrate", "--method", "max", "-o", "m.cache", "-q", cwd=folder, check=True)
    return folder


def heldout():
    data = IdxDataset(defaults.HELDOUT_DATA)
    return (data.images.astype(np.float32) / 255)[:, None], data.labels


def test_legacy_cache_becomes_the_same_qdq_model_as_the_table(calibrated):
    run_cli("cache", "convert", "m.cache", "--to", "ort-flatbuffers", "-o", "legacy.flatbuffers",
            cwd=calibrated, check=True)
    run_cli("export-qdq", "--cache", "m.quantlab.json", "-o", "from_table.onnx", cwd=calibrated, check=True)
    run_cli("export-qdq", "--cache", "m.cache", "-o", "from_trt.onnx", cwd=calibrated, check=True)
    run_cli("export-qdq", "--cache", "legacy.flatbuffers", "-o", "from_ort.onnx", cwd=calibrated, check=True)
    table = (calibrated / "from_table.onnx").read_bytes()
    assert (calibrated / "from_trt.onnx").read_bytes() == table
    assert (calibrated / "from_ort.onnx").read_bytes() == table


def test_qdq_model_passes_the_checker_and_keeps_accuracy_in_onnxruntime(calibrated):
    run_cli("export-qdq", "--cache", "m.cache", "-o", "q.onnx", cwd=calibrated, check=True)
    model = onnx.load(calibrated / "q.onnx")
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    # every compute input but the classifier's: its Gemm (N=10) stays float by the small-layers rule
    assert ops.count("QuantizeLinear") == len(load_model(defaults.MODEL).quantizable) - 1
    x, y = heldout()
    fp32 = ort.InferenceSession(str(defaults.MODEL)).run(None, {"image": x})[0].argmax(1)
    int8 = ort.InferenceSession(str(calibrated / "q.onnx")).run(None, {"image": x})[0].argmax(1)
    # 1000 held-out Fashion-MNIST test images, max calibration on 512 training images.
    assert (fp32 == int8).mean() > 0.97
    assert (int8 == y).mean() > (fp32 == y).mean() - 0.02


def test_weights_are_int8_with_per_channel_scales():
    graph = load_model(defaults.MODEL)
    amax = {name: 4.0 for name in graph.activations}
    model, report = export_qdq(graph, amax, None, QdqOptions(placement="compute"))
    inits = {i.name: i for i in model.graph.initializer}
    assert len(report.quantized_weights) == 18
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.name.endswith("_weight_DequantizeLinear"):
            assert inits[node.input[0]].data_type == onnx.TensorProto.INT8
            assert len(inits[node.input[1]].dims) == 1  # one scale per output channel


def test_cache_of_another_model_is_a_clear_error(shared_caches):
    graph = load_model(defaults.MODEL)
    other = read_ranges(shared_caches / "liujuanLT__model_convert__calibration.cache")
    with pytest.raises(QuantlabError, match="no range in the cache.*match no tensor"):
        export_qdq(graph, other.amax)


def test_unmatched_entries_are_listed_not_dropped():
    graph = load_model(defaults.MODEL)
    amax = {name: 4.0 for name in graph.activations}
    amax["a_tensor_from_elsewhere"] = 1.0
    _, report = export_qdq(graph, amax)
    assert report.unmatched_ranges == ["a_tensor_from_elsewhere"]


def test_excluded_op_types_stay_in_float():
    graph = load_model(defaults.MODEL)
    model, report = export_qdq(graph, {name: 4.0 for name in graph.activations}, None, QdqOptions(exclude_ops=["Gemm"]))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    assert not any(name.endswith("dequantized") for name in gemm.input)
    assert len(report.skipped_nodes) == 1


def test_residual_placement_feeds_the_skip_input_of_conv_add_through_qdq():
    graph = load_model(defaults.MODEL)
    amax = {name: 4.0 for name in graph.activations}
    model, _ = export_qdq(graph, amax, None, QdqOptions(placement="residual"))
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 3
    for add in adds:
        kinds = sorted(producers[name] for name in add.input)
        assert kinds == ["Conv", "DequantizeLinear"], kinds
    compute, _ = export_qdq(graph, amax, None, QdqOptions(placement="compute"))
    assert all("DequantizeLinear" not in {producers_of(compute)[i] for i in n.input}
               for n in compute.graph.node if n.op_type == "Add")


def producers_of(model):
    return {out: node.op_type for node in model.graph.node for out in node.output}


def test_a_qdq_scope_cache_covers_every_tensor_the_qdq_export_needs(calibrated):
    run_cli("calibrate", "--method", "max", "--tensors", "qdq", "-o", "qdq_only.cache", "-q", cwd=calibrated,
            check=True)
    run_cli("export-qdq", "--cache", "qdq_only.cache", "-o", "from_qdq_only.onnx", cwd=calibrated, check=True)
    model = onnx.load(calibrated / "from_qdq_only.onnx")
    onnx.checker.check_model(model)
    ranges = read_ranges(calibrated / "qdq_only.cache").amax
    assert len(ranges) < len(read_ranges(calibrated / "m.cache").amax)
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") == len(ranges) - 1  # less the classifier's
