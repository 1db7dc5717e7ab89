"""The default INT8 arithmetic is TensorRT's: checked against an exact integer reference.

TensorRT runs an INT8 Conv/Gemm as int8 x int8 products summed exactly in int32, then scales the
sum by s_x * s_w[c] and adds the float bias. Here real layers of the embedded model are computed
that way in numpy (int64 accumulation: exact) from the Q/DQ model's own int8 weights and scales,
and compared with what the evaluation engine's default runner computes for the same layer.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quantlab import defaults
from quantlab.calibrate import calibrate
from quantlab.data import read_idx
from quantlab.evaluation.engine import OrtRunner, execution_verdict
from quantlab.graph import load_model
from quantlab.qdq import QdqOptions, export_qdq
from quantlab.workload import DataSpec


@pytest.fixture(scope="module")
def quantized():
    graph = load_model(defaults.MODEL)
    table = calibrate(graph, DataSpec(num_samples=128), method="percentile", progress=False).table
    # INT8 layers against an integer reference: every compute input quantized, nothing else rounded.
    exact = QdqOptions(placement="compute", high_precision="fp32")
    model, _ = export_qdq(graph, table.activations, table.weights, exact)
    images = read_idx(defaults.HELDOUT_DATA)[:8].astype(np.float32)[:, None] / 255
    return graph, model, images


def quantize(x: np.ndarray, scale: float) -> np.ndarray:
    """QuantizeLinear with zero point 0: round half to even, saturate to [-127, 127] (int8 symmetric)."""
    return np.clip(np.rint(x / np.float32(scale)), -128, 127).astype(np.int64)


def conv_int(qx: np.ndarray, qw: np.ndarray, strides, pads, group: int) -> np.ndarray:
    """Integer 2-D convolution, int64 accumulation (exact for int8 operands)."""
    n, c, h, w = qx.shape
    out_c, per_group, kh, kw = qw.shape
    padded = np.pad(qx, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (padded.shape[2] - kh) // strides[0] + 1
    ow = (padded.shape[3] - kw) // strides[1] + 1
    out = np.zeros((n, out_c, oh, ow), dtype=np.int64)
    per_out = out_c // group
    for g in range(group):
        xs = padded[:, g * per_group:(g + 1) * per_group]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i:i + strides[0] * oh:strides[0], j:j + strides[1] * ow:strides[1]]
                weights = qw[g * per_out:(g + 1) * per_out, :, i, j]
                out[:, g * per_out:(g + 1) * per_out] += np.einsum("nchw,oc->nohw", patch, weights)
    return out


def parts(model: onnx.ModelProto, node: onnx.NodeProto):
    """The int8 weight, its per-channel scales, the activation scale and the bias of a quantized node."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    act_dq, w_dq = producer[node.input[0]], producer[node.input[1]]
    act_q = producer[act_dq.input[0]]
    bias = inits[node.input[2]] if len(node.input) > 2 else None
    weight, weight_scales = inits[w_dq.input[0]].astype(np.int64), inits[w_dq.input[1]]
    return act_q.input[0], weight, weight_scales, float(inits[act_q.input[1]]), bias


def test_quantized_convolutions_match_int32_accumulation_to_float_rounding(quantized):
    graph, model, images = quantized
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1].endswith("_weight_dequantized")][:4]
    assert len(convs) == 4
    names = [c.output[0] for c in convs] + [parts(model, c)[0] for c in convs]
    outputs = OrtRunner(model, names).run({"image": images})
    for conv in convs:
        source, qw, w_scale, x_scale, bias = parts(model, conv)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        acc = conv_int(quantize(outputs[source], x_scale), qw, attrs.get("strides", [1, 1]),
                       attrs.get("pads", [0, 0, 0, 0]), attrs.get("group", 1))
        exact = acc * (np.float64(x_scale) * w_scale.astype(np.float64))[None, :, None, None]
        if bias is not None:
            exact = exact + bias[None, :, None, None]
        got = outputs[conv.output[0]].astype(np.float64)
        assert np.abs(got - exact).max() <= 1e-5 * np.abs(exact).max(), conv.name


def test_the_quantized_gemm_matches_int32_accumulation_to_float_rounding(quantized):
    graph, model, images = quantized
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    source, qw, w_scale, x_scale, bias = parts(model, gemm)
    outputs = OrtRunner(model, [gemm.output[0], source]).run({"image": images})
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    w = qw if trans_b else qw.T  # [out, in]
    scales = w_scale.astype(np.float64)
    acc = quantize(outputs[source], x_scale) @ w.T
    exact = acc * (x_scale * scales)[None, :] + bias[None, :]
    got = outputs[gemm.output[0]].astype(np.float64)
    assert np.abs(got - exact).max() <= 1e-5 * np.abs(exact).max()


def fusable_conv() -> onnx.ModelProto:
    """Q -> DQ -> Conv (per-channel int8 weight) -> Q -> DQ: a pattern ONNX Runtime fuses into QLinearConv."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    scales = (np.abs(weight).max(axis=(1, 2, 3)) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(np.clip(np.rint(weight / scales[:, None, None, None]), -127, 127).astype(np.int8),
                                     "W_int8"),
             numpy_helper.from_array(scales, "W_s"), numpy_helper.from_array(np.zeros(4, np.int8), "W_z"),
             numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s2"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B")]
    nodes = [onnx.helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             onnx.helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["x_dequantized"]),
             onnx.helper.make_node("DequantizeLinear", ["W_int8", "W_s", "W_z"], ["W_weight_dequantized"], axis=0),
             onnx.helper.make_node("Conv", ["x_dequantized", "W_weight_dequantized", "B"], ["c"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("QuantizeLinear", ["c", "s2", "z"], ["cq"]),
             onnx.helper.make_node("DequantizeLinear", ["cq", "s2", "z"], ["y"])]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def test_a_pattern_onnxruntime_fuses_into_an_integer_kernel_runs_as_written_by_default():
    model = fusable_conv()
    assert execution_verdict(model, "onnxruntime")["integer_ops"] == {"QLinearConv": 1}
    verdict = execution_verdict(model, "tensorrt")
    assert verdict["integer_ops"] == {} and verdict["fused_ops"] == 0 and verdict["quantized_ops"] == 1


def test_onnxruntime_arithmetic_is_reported_as_fused_of_quantized_ops():
    verdict = execution_verdict(fusable_conv(), "onnxruntime")
    assert "1 of 1 quantized ops fused into integer kernels" in verdict["verdict"]


def test_the_fusable_conv_matches_int32_accumulation_under_the_default_arithmetic():
    model = fusable_conv()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    outputs = OrtRunner(model, ["c"]).run({"x": x})
    _, qw, w_scale, x_scale, bias = parts(model, conv)
    exact = conv_int(quantize(x, x_scale), qw, [1, 1], [1, 1, 1, 1], 1) * (
        np.float64(x_scale) * w_scale.astype(np.float64))[None, :, None, None] + bias[None, :, None, None]
    assert np.abs(outputs["c"] - exact).max() <= 1e-5 * np.abs(exact).max()
