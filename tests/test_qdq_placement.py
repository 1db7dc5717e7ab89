"""Q/DQ placement rules and the typed remainder, each on a small graph built for it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlab.errors import QuantlabError
from quantlab.graph import load_model
from quantlab.qdq import MeasuredRange, QdqOptions, export_qdq
from quantlab.qdq.remainder import element_types, rounded

from conftest import run_cli

RNG = np.random.default_rng(0)


def conv(name: str, x: str, y: str, c_in: int, c_out: int, k: int = 3, group: int = 1) -> tuple:
    w = numpy_helper.from_array(RNG.normal(0, 0.2, (c_out, c_in // group, k, k)).astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array(RNG.normal(0, 0.1, c_out).astype(np.float32), f"{name}.b")
    node = helper.make_node("Conv", [x, w.name, b.name], [y], name=name, pads=[k // 2] * 4, group=group)
    return node, [w, b]


def model_of(nodes_and_inits: list, inputs: list, outputs: list, extra_inits=()) -> onnx.ModelProto:
    nodes = [n for n, _ in nodes_and_inits]
    inits = [i for _, group in nodes_and_inits for i in group] + list(extra_inits)
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def image(name: str = "x", c: int = 16, hw: int = 8) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, hw, hw])


def output(name: str, rank: int = 4) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}_{k}" for k in range(rank)])


def export(model: onnx.ModelProto, placement: str = "tensorrt", amax: float = 2.0, *, ranges=None, measured=None,
           emulate: bool = False, **options):
    graph = load_model(model)
    amaxes = {name: amax for name in graph.activations} | (ranges or {})
    return export_qdq(graph, amaxes, None, QdqOptions(placement=placement, **options), measured=measured,
                      emulate=emulate)


def quantized_inputs(model: onnx.ModelProto) -> list[str]:
    """The tensors each QuantizeLinear reads (graph order)."""
    return [node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"]


def residual_block() -> onnx.ModelProto:
    first, inits1 = conv("first", "x", "a", 16, 16)
    second, inits2 = conv("second", "a", "b", 16, 16)
    add = helper.make_node("Add", ["b", "x"], ["y"], name="add")
    return model_of([(first, inits1), (second, inits2), (add, [])], [image()], [output("y")])


# --- placement rules -----------------------------------------------------------------------------

def test_compute_placement_quantizes_only_the_inputs_of_compute_ops():
    model, _ = export(residual_block(), "compute", high_precision="fp32")
    assert sorted(quantized_inputs(model)) == ["a", "x"]
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert "x" in add.input  # the skip stays float


def test_residual_skip_rule_feeds_the_add_from_the_skip_tensors_dequantize():
    model, report = export(residual_block(), "tensorrt", high_precision="fp32")
    add = next(n for n in model.graph.node if n.op_type == "Add")
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    assert sorted(producers.get(name, "input") for name in add.input) == ["Conv", "DequantizeLinear"]
    assert report.applied["residual-skip"] == 1
    assert quantized_inputs(model).count("x") == 1  # shared with the first Conv's input


def test_a_disabled_rule_is_not_applied():
    model, report = export(residual_block(), "tensorrt", high_precision="fp32", disabled_rules=["residual-skip"])
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert "x" in add.input and "residual-skip" not in report.applied


def test_an_unknown_rule_is_refused_with_the_list_of_rules():
    with pytest.raises(QuantlabError, match="unknown placement rule 'residual'.*compute-inputs"):
        QdqOptions(disabled_rules=["residual"])


def test_small_convs_and_gemms_stay_in_float_under_tensorrt_only():
    small, inits1 = conv("small", "x", "a", 3, 4, k=1)  # 3 -> 4 channels, 1x1: no ModelOpt exception holds
    flat = helper.make_node("Flatten", ["a"], ["f"], name="flat")
    w = numpy_helper.from_array(RNG.normal(0, 0.1, (256, 10)).astype(np.float32), "fc.w")
    gemm = helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc")
    model = model_of([(small, inits1), (flat, []), (gemm, [w])], [image(c=3)], [output("y", 2)])
    _, trt = export(model, "tensorrt", high_precision="fp32")
    assert set(trt.float_layers) == {"small", "fc"}
    assert "N=10" in trt.float_layers["fc"]
    _, compute = export(model, "compute", high_precision="fp32")
    assert compute.float_layers == {} and len(compute.quantized_weights) == 2


def test_a_tensor_read_directly_and_through_maxpool_is_quantized_once_before_both():
    left, inits1 = conv("left", "x", "l", 16, 16)
    pool = helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    right, inits2 = conv("right", "p", "r", 16, 16)
    model = model_of([(left, inits1), (pool, []), (right, inits2)], [image()], [output("l"), output("r")])
    shared, report = export(model, "tensorrt", high_precision="fp32")
    assert quantized_inputs(shared) == ["x"] and report.applied["commuting-share"] == 1
    separate, _ = export(model, "compute", high_precision="fp32")
    assert sorted(quantized_inputs(separate)) == ["p", "x"]


def test_concat_inputs_and_output_share_the_largest_range():
    a, inits_a = conv("a", "x", "ya", 16, 16)
    b, inits_b = conv("b", "x", "yb", 16, 16)
    cat = helper.make_node("Concat", ["ya", "yb"], ["cat"], name="cat", axis=1)
    head, inits_h = conv("head", "cat", "y", 32, 16)
    model = model_of([(a, inits_a), (b, inits_b), (cat, []), (head, inits_h)], [image()], [output("y")])
    qdq, report = export(model, "tensorrt", high_precision="fp32", ranges={"ya": 3.0, "yb": 5.0})
    assert {"ya", "yb", "cat"} <= set(quantized_inputs(qdq))
    scales = {node.input[0]: numpy_helper.to_array(next(i for i in qdq.graph.initializer if i.name == node.input[1]))
              for node in qdq.graph.node if node.op_type == "QuantizeLinear"}
    assert scales["ya"] == scales["yb"] == scales["cat"] == np.float32(5.0 / 127)
    assert report.shared_scales["ya"]["amax"] == 5.0 and report.shared_scales["ya"]["own_amax"] == 3.0


def test_average_pooling_before_a_quantized_layer_reads_a_quantized_input():
    body, inits = conv("body", "x", "a", 16, 32)
    relu = helper.make_node("Relu", ["a"], ["r"], name="relu")
    gap = helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap")
    flat = helper.make_node("Flatten", ["g"], ["f"], name="flat")
    w = numpy_helper.from_array(RNG.normal(0, 0.1, (32, 32)).astype(np.float32), "fc.w")
    gemm = helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc")
    model = model_of([(body, inits), (relu, []), (gap, []), (flat, []), (gemm, [w])], [image()], [output("y", 2)])
    qdq, report = export(model, "tensorrt", high_precision="fp32")
    assert "r" in quantized_inputs(qdq) and report.applied["pooling"] == 1
    gap_node = next(n for n in qdq.graph.node if n.op_type == "GlobalAveragePool")
    assert gap_node.input[0].endswith("_dequantized")


# --- the typed remainder -------------------------------------------------------------------------

def mixed_block() -> onnx.ModelProto:
    body, inits = conv("body", "x", "a", 16, 16)
    relu = helper.make_node("Relu", ["a"], ["r"], name="relu")
    red = helper.make_node("ReduceSum", ["r"], ["s"], name="sum", keepdims=1)
    exp = helper.make_node("Exp", ["r"], ["e"], name="exp")
    return model_of([(body, inits), (relu, []), (red, []), (exp, [])], [image()], [output("s"), output("e")])


def test_the_remainder_is_fp16_with_graph_io_types_unchanged():
    model, report = export(mixed_block(), measured={"r": MeasuredRange(2.0), "e": MeasuredRange(7.4)})
    types = element_types(model)
    assert types["x"] == types["e"] == types["s"] == TensorProto.FLOAT
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    assert types[relu.output[0]] == TensorProto.FLOAT16
    onnx.checker.check_model(model, full_check=True)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_a_tensor_measured_beyond_the_fp16_margin_keeps_its_ops_in_fp32_with_the_reason():
    _, report = export(mixed_block(), measured={"r": MeasuredRange(2.0), "e": MeasuredRange(9.1e4)})
    assert report.precisions["exp"].precision == "fp32"
    assert "max |x| 9.1e+04" in report.precisions["exp"].reason
    assert report.precisions["relu"].precision == "fp16"
    assert "fp32: e: max |x| 9.1e+04" in report.summary()


def test_a_tensor_mostly_below_fp16_normal_keeps_its_ops_in_fp32():
    _, report = export(mixed_block(), measured={"r": MeasuredRange(0.01, below_normal=0.4)})
    assert report.precisions["relu"].precision == "fp32"
    assert "below fp16's smallest normal" in report.precisions["relu"].reason


def test_a_reduction_whose_fp16_sum_could_overflow_stays_fp32():
    # ReduceSum over 16 x 8 x 8 = 1024 values of up to 30: a running sum could reach 30720 > 16376.
    _, report = export(mixed_block(), measured={"r": MeasuredRange(30.0)})
    assert report.precisions["sum"].precision == "fp32" and "1024 values" in report.precisions["sum"].reason
    _, small = export(mixed_block(), measured={"r": MeasuredRange(3.0)})
    assert small.precisions["sum"].precision == "fp16"


def test_bf16_remainder_has_no_range_rule():
    model, report = export(mixed_block(), high_precision="bf16", measured={"e": MeasuredRange(9.1e4)})
    assert report.precisions["exp"].precision == "bf16"
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    assert element_types(model)[relu.output[0]] == TensorProto.BFLOAT16


def test_the_fp32_remainder_adds_no_casts_and_keeps_an_opset_above_13():
    model, _ = export(mixed_block(), high_precision="fp32")
    assert not any(n.op_type == "Cast" for n in model.graph.node)
    assert model.opset_import[0].version == 17  # kept: already above 13


def test_the_scored_model_rounds_each_fp16_tensor_as_a_float64_reference_does():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])
    w = numpy_helper.from_array(RNG.normal(0, 1, (64,)).astype(np.float32), "w")
    mul = helper.make_node("Mul", ["x", "w"], ["m"], name="mul")
    relu = helper.make_node("Relu", ["m"], ["y"], name="relu")
    model = model_of([(mul, [w]), (relu, [])], [x], [output("y", 2), output("m", 2)])
    emulated = rounded(model, {0: TensorProto.FLOAT16, 1: TensorProto.FLOAT16})
    data = RNG.normal(0, 3, (4, 64)).astype(np.float32)
    got_y, got_m = ort.InferenceSession(emulated.SerializeToString()).run(["y", "m"], {"x": data})
    x16 = data.astype(np.float16).astype(np.float64)
    w16 = numpy_helper.to_array(w).astype(np.float16).astype(np.float64)
    reference = (x16 * w16).astype(np.float16)  # the product of two fp16 values, rounded once to fp16
    assert np.array_equal(got_m, reference.astype(np.float32))
    assert np.array_equal(got_y, np.maximum(reference, 0).astype(np.float32))
    assert not np.array_equal(got_m, data * numpy_helper.to_array(w))  # fp32 arithmetic would differ


def test_the_scored_model_keeps_the_tensor_names_of_the_written_one():
    graph_model = mixed_block()
    written, _ = export(graph_model)
    scored, _ = export(graph_model, emulate=True)
    names = {o for n in scored.graph.node for o in n.output}
    assert {"a", "r", "s", "e"} <= names
    assert any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16 for n in scored.graph.node)
    assert element_types(written)["e"] == TensorProto.FLOAT


# --- the commands --------------------------------------------------------------------------------

def test_calibrate_to_an_onnx_name_writes_the_typed_qdq_model_and_its_table(tmp_path):
    run_cli("calibrate", "-o", "m.qdq.onnx", "-q", cwd=tmp_path, check=True)
    model = onnx.load(tmp_path / "m.qdq.onnx")
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert TensorProto.FLOAT16 in set(element_types(model).values())
    assert not (tmp_path / "m.cache").exists()
    import json

    table = json.loads((tmp_path / "m.qdq.quantlab.json").read_text())
    assert table["provenance"]["qdq"]["placement"] == "tensorrt" and table["provenance"]["measured"]


def test_calibrate_refuses_a_cache_format_under_an_onnx_name(tmp_path):
    result = run_cli("calibrate", "-o", "m.onnx", "--format", "cache", "-q", cwd=tmp_path)
    assert result.returncode != 0 and "names an ONNX file" in result.stderr
    assert not list(tmp_path.iterdir())


def test_a_matmul_of_two_activations_stays_in_float_under_tensorrt_only():
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 4, 16, 32])
    k = helper.make_tensor_value_info("k", TensorProto.FLOAT, [1, 4, 32, 16])
    scores = helper.make_node("MatMul", ["q", "k"], ["s"], name="scores")
    softmax = helper.make_node("Softmax", ["s"], ["y"], name="softmax", axis=-1)
    model = model_of([(scores, []), (softmax, [])], [q, k], [output("y")])
    trt, report = export(model, "tensorrt", high_precision="fp32")
    assert quantized_inputs(trt) == [] and "attention" in report.float_layers["scores"]
    compute, _ = export(model, "compute", high_precision="fp32")
    assert sorted(quantized_inputs(compute)) == ["k", "q"]


def test_any_typed_model_is_scored_like_quantlabs_own_export():
    # emulated() reads the precision plan from the file (a ModelOpt export has no other); on quantlab's
    # own typed export it gives the very model the evaluation scores, to the bit.
    from quantlab import defaults
    from quantlab.qdq.remainder import emulated

    graph = load_model(defaults.MODEL)
    amax = {name: 4.0 for name in graph.activations}
    typed, _ = export_qdq(graph, amax)
    scored, _ = export_qdq(graph, amax, emulate=True)
    data = RNG.random((8, 1, 28, 28), dtype=np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = [ort.InferenceSession(m.SerializeToString(), options).run(None, {"image": data})[0]
           for m in (emulated(typed), scored)]
    assert np.array_equal(run[0], run[1])
    assert all(init.data_type != TensorProto.FLOAT16 for init in emulated(typed).graph.initializer)
