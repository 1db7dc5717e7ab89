"""Q/DQ lint and precision plan: one planted defect per rule in a small hand-built graph, and the
clean default export, which must lint clean and plan INT8 convs with an fp16 remainder."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlab import defaults
from quantlab.errors import QuantlabError
from quantlab.graph import load_model
from quantlab.qdq import export_qdq
from quantlab.qdq.lint import RULES, lint
from quantlab.qdq.plan import node_flops, precision_plan

C = 32  # channels: above ModelOpt's small-layer threshold, so layers are expected in INT8
ZERO = np.int8(0)


class Graph:
    """A tiny ONNX graph builder: float input ``x`` [1, C, 8, 8], Q/DQ pairs, quantized convs."""

    def __init__(self, opset: int = 19, shape=(1, C, 8, 8)):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]

    def const(self, name: str, value) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def quantize(self, x: str, name: str, scale: float = 0.05, zero=ZERO) -> str:
        s, z = self.const(f"{name}_scale", np.float32(scale)), self.const(f"{name}_zero", np.asarray(zero))
        return self.node("QuantizeLinear", [x, s, z], f"{name}_q")

    def dequantize(self, q: str, name: str, scale: float = 0.05, zero=ZERO) -> str:
        s, z = self.const(f"{name}_dscale", np.float32(scale)), self.const(f"{name}_dzero", np.asarray(zero))
        return self.node("DequantizeLinear", [q, s, z], f"{name}_dq")

    def qdq(self, x: str, name: str, scale: float = 0.05, zero=ZERO) -> str:
        return self.dequantize(self.quantize(x, name, scale, zero), name, scale, zero)

    def weight(self, name: str, c_out: int = C, c_in: int = C, per_channel: bool = True) -> str:
        w = np.random.default_rng(0).integers(-127, 128, (c_out, c_in, 3, 3)).astype(np.int8)
        scale = np.full(c_out, 0.01, np.float32) if per_channel else np.float32(0.01)
        zero = np.zeros(c_out, np.int8) if per_channel else np.int8(0)
        inputs = [self.const(f"{name}_w", w), self.const(f"{name}_ws", scale), self.const(f"{name}_wz", zero)]
        return self.node("DequantizeLinear", inputs, f"{name}_wdq", **({"axis": 0} if per_channel else {}))

    def conv(self, x: str, name: str, c_out: int = C, c_in: int = C, float_weight: bool = False,
             per_channel: bool = True) -> str:
        if float_weight:
            w = self.const(f"{name}_w", np.full((c_out, c_in, 3, 3), 0.01, np.float32))
        else:
            w = self.weight(name, c_out, c_in, per_channel)
        return self.node("Conv", [x, w], name, pads=[1, 1, 1, 1])

    def model(self, *outputs: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", self.inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])


def fired(model: onnx.ModelProto, rule: str) -> list[str]:
    """The nodes ``rule`` names in ``model``'s lint."""
    return [f.node for f in lint(model).findings if f.rule == rule]


def severities(model: onnx.ModelProto, rule: str) -> set[str]:
    return {f.severity for f in lint(model).findings if f.rule == rule}


def quantized_conv(g: Graph, x: str = "x", name: str = "conv") -> str:
    return g.conv(g.qdq(x, f"{name}_in"), name)


# ------------------------------------------------------------------------------------------ refusals


def test_a_float_model_is_refused_with_how_to_quantize_it():
    g = Graph()
    model = g.model(g.conv("x", "conv", float_weight=True))
    with pytest.raises(QuantlabError, match="no Q/DQ") as info:
        lint(model)
    assert "quantlab calibrate" in str(info.value) and "quantlab export-qdq" in str(info.value)


def test_an_onnx_runtime_integer_model_is_refused_as_not_qdq():
    g = Graph()
    q = g.quantize("x", "in")
    w = g.const("w", np.ones((C, C, 3, 3), np.int8))
    scales = [g.const(n, np.float32(0.1)) for n in ("xs", "ws", "ys")]
    zeros = [g.const(n, np.int8(0)) for n in ("xz", "wz", "yz")]
    y = g.node("QLinearConv", [q, scales[0], zeros[0], w, scales[1], zeros[1], scales[2], zeros[2]], "qconv")
    with pytest.raises(QuantlabError, match="ONNX Runtime") as info:
        lint(g.model(g.dequantize(y, "out")))
    assert "QLinearConv" in str(info.value) and "QDQ" in str(info.value)


# ------------------------------------------------------------------------------------------ rules


def test_per_channel_qdq_below_opset_13_is_an_error_on_the_first_one():
    g = Graph(opset=12)
    model = g.model(quantized_conv(g))
    assert fired(model, "opset") == ["conv_wdq"]
    assert severities(model, "opset") == {"error"}


def test_a_quantize_node_no_dequantize_reads_is_an_error():
    g = Graph()
    manual = g.node("Cast", [g.quantize("x", "bad")], "manual_dequantize", to=TensorProto.FLOAT)
    model = g.model(quantized_conv(g), manual)
    assert fired(model, "dangling-q") == ["bad_q"]
    assert severities(model, "dangling-q") == {"error"}


def test_a_dequantize_node_fed_by_no_quantize_is_an_error():
    g = Graph()
    raw = g.node("Cast", ["x"], "to_int8", to=TensorProto.INT8)
    model = g.model(g.conv(g.dequantize(raw, "orphan"), "conv"))
    assert fired(model, "dangling-dq") == ["orphan_dq"]
    assert "conv_wdq" not in fired(model, "dangling-dq")  # a weight DQ reads a constant: fine


def test_a_dequantize_read_by_an_op_without_int8_kernel_is_a_warning():
    g = Graph()
    dq = g.qdq("x", "shared")
    sigmoid = g.node("Sigmoid", [dq], "sigmoid")
    flat = g.node("Flatten", [dq], "flatten")  # commutes: the DQ moves past it to the Softmax
    softmax = g.node("Softmax", [flat], "softmax")
    model = g.model(g.conv(dq, "conv"), sigmoid, softmax)
    assert sorted(fired(model, "no-int8-kernel")) == ["sigmoid", "softmax"]
    assert severities(model, "no-int8-kernel") == {"warning"}


def test_a_residual_add_with_one_float_input_is_a_warning():
    g = Graph()
    bn_inputs = [g.const(f"bn_{k}", np.full(C, v, np.float32)) for k, v in
                 (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0))]
    bn = g.node("BatchNormalization", [quantized_conv(g)] + bn_inputs, "bn")
    one_sided = g.node("Add", [bn, "x"], "one_sided")
    both = g.node("Add", [g.conv(g.qdq(one_sided, "c2_in"), "conv2"), g.qdq(one_sided, "skip")], "both_quantized")
    model = g.model(both)
    assert fired(model, "residual-one-side") == ["one_sided"]
    groups = {n.node: n.group for n in precision_plan(model).nodes}
    assert groups["one_sided"] == "one_sided" and groups["both_quantized"] == "conv2"  # fused only when quantized


def test_a_concat_of_different_scales_or_of_mixed_inputs_is_a_warning():
    g = Graph()
    mixed = g.node("Concat", [g.qdq("x", "a", 0.05), "x"], "mixed", axis=1)
    apart = g.node("Concat", [g.qdq("x", "b", 0.05), g.qdq("x", "c", 0.08)], "apart", axis=1)
    shared = g.node("Concat", [g.qdq("x", "d", 0.05), g.qdq("x", "e", 0.05)], "shared", axis=1)
    model = g.model(mixed, apart, shared)
    assert sorted(fired(model, "concat-scales")) == ["apart", "mixed"]


def test_a_qdq_pair_between_a_conv_and_its_activation_is_an_error():
    g = Graph()
    relu = g.node("Relu", [g.qdq(quantized_conv(g), "between")], "relu")
    model = g.model(relu)
    assert fired(model, "qdq-between-conv-and-activation") == ["between_q"]
    # it builds: the Conv writes INT8 and the activation runs apart, so a lost fusion, not an error
    assert severities(model, "qdq-between-conv-and-activation") == {"warning"}
    assert "relu" not in fired(model, "no-int8-kernel")  # reported once, by this rule


def test_a_weight_with_one_output_channel_has_one_scale_and_is_not_flagged():
    g = Graph()
    model = g.model(g.conv(g.qdq("x", "in"), "dfl", c_out=1, per_channel=False))  # YOLOv8's DFL conv: 1 channel
    assert fired(model, "weight-per-tensor") == []


def test_per_tensor_conv_weights_are_a_warning():
    g = Graph()
    model = g.model(g.conv(g.qdq("x", "in"), "per_tensor", per_channel=False))
    assert fired(model, "weight-per-tensor") == ["per_tensor"]


def test_a_non_zero_or_uint8_zero_point_is_an_error():
    g = Graph()
    shifted = g.conv(g.qdq("x", "shifted", zero=np.int8(3)), "c1")
    unsigned = g.conv(g.qdq("x", "unsigned", zero=np.uint8(128)), "c2")
    model = g.model(shifted, unsigned)
    assert sorted(fired(model, "zero-point")) == ["shifted_q", "unsigned_q"]  # each pair once, on its Q
    messages = {f.node: f.message for f in lint(model).findings if f.rule == "zero-point"}
    assert "uint8" in messages["unsigned_q"] and "symmetric" in messages["shifted_q"]


def test_a_float64_scale_is_an_error():
    g = Graph()
    model = g.model(quantized_conv(g))
    scale = next(init for init in model.graph.initializer if init.name == "conv_in_dscale")
    scale.CopyFrom(numpy_helper.from_array(np.float64(0.05), "conv_in_dscale"))
    assert fired(model, "scale-type") == ["conv_in_dq"]


def test_a_zero_scale_is_an_error_and_a_subnormal_fp16_scale_a_warning():
    g = Graph()
    model = g.model(quantized_conv(g, name="zero"), quantized_conv(g, name="tiny"))
    scales = {init.name: init for init in model.graph.initializer}
    scales["zero_in_dscale"].CopyFrom(numpy_helper.from_array(np.float32(0.0), "zero_in_dscale"))
    scales["tiny_in_dscale"].CopyFrom(numpy_helper.from_array(np.float16(1e-6), "tiny_in_dscale"))
    found = {f.node: f.severity for f in lint(model).findings if f.rule == "scale-value"}
    assert found == {"zero_in_dq": "error", "tiny_in_dq": "warning"}


def test_an_int32_bias_dequantize_is_an_error_tensorrt_cannot_parse():
    g = Graph()
    bias = g.node("DequantizeLinear", [g.const("b", np.zeros(C, np.int32)), g.const("bs", np.float32(1e-4))], "bias")
    w = g.weight("conv")
    model = g.model(g.node("Conv", [g.qdq("x", "in"), w, bias], "conv", pads=[1, 1, 1, 1]))
    assert fired(model, "int32-bias") == ["bias"]
    assert "QuantizeBias" in lint(model).errors[0].message
    assert fired(model, "out-of-scope") == []


def test_int4_qdq_is_out_of_scope_and_does_not_crash():
    g = Graph(opset=21)
    zero = helper.make_tensor("int4_zero", TensorProto.INT4, [], [0])
    g.initializers.append(zero)
    s = g.const("int4_scale", np.float32(0.5))
    q = g.node("QuantizeLinear", ["x", s, "int4_zero"], "int4_q")
    dq = g.node("DequantizeLinear", [q, s, "int4_zero"], "int4_dq")
    result = lint(g.model(g.conv(dq, "conv")))
    scoped = [f for f in result.findings if f.rule == "out-of-scope"]
    assert [(f.node, f.severity) for f in scoped] == [("int4_q", "warning")]
    assert "out of scope" in scoped[0].message and "int4" in scoped[0].message
    assert not [f for f in result.errors if f.node in ("int4_q", "int4_dq")]


def test_float32_compute_is_one_summary_warning_naming_the_largest():
    g = Graph()
    conv = quantized_conv(g)
    model = g.model(g.node("Sigmoid", [g.node("Relu", [conv], "relu")], "sigmoid"))
    found = [f for f in lint(model).findings if f.rule == "fp32-region"]
    assert len(found) == 1 and found[0].severity == "warning"
    assert "2 compute op(s)" in found[0].message and "'relu'" in found[0].message


def test_an_unquantized_layer_is_a_warning_unless_it_is_too_small_for_int8():
    g = Graph()
    big = g.conv(quantized_conv(g), "float_big", float_weight=True)
    small = g.conv(g.qdq(big, "s_in"), "small_first", c_out=4)  # keeps INT8 weights: fine
    tiny = g.conv(small, "float_tiny", c_out=4, c_in=4, float_weight=True)  # < 16 channels: float is right
    model = g.model(tiny)
    found = [f for f in lint(model).findings if f.rule == "unquantized-layer"]
    assert [f.node for f in found] == ["float_big"]
    assert "MFLOPs" in found[0].message


def test_every_rule_has_a_test_above():
    names = set(RULES)
    tested = {"opset", "dangling-q", "dangling-dq", "no-int8-kernel", "residual-one-side", "concat-scales",
              "qdq-between-conv-and-activation", "weight-per-tensor", "zero-point", "int32-bias", "scale-type",
              "scale-value", "out-of-scope",
              "fp32-region", "unquantized-layer"}
    assert names == tested


def test_the_result_is_json_and_its_exit_code_follows_cache_lint():
    g = Graph()
    clean = Graph()
    warned = lint(g.model(g.conv(g.qdq("x", "in"), "pt", per_channel=False)))
    assert warned.exit_code == 1
    errored = lint(clean.model(clean.conv(clean.qdq("x", "in", zero=np.int8(3)), "asym")))  # a non-zero zero point
    assert errored.exit_code == 2
    data = json.loads(json.dumps(errored.to_dict()))
    assert data["exit_code"] == 2 and data["errors"] == len(errored.errors)
    assert {"severity", "rule", "node", "message"} <= set(data["findings"][0])


# ------------------------------------------------------------------------------------------ the default export


@pytest.fixture(scope="module")
def default_export() -> onnx.ModelProto:
    graph = load_model(defaults.MODEL)
    model, _ = export_qdq(graph, {name: 4.0 for name in graph.activations})
    return model


def test_a_clean_quantlab_export_lints_clean(default_export):
    result = lint(default_export)
    assert result.errors == []
    assert result.warnings == []
    assert result.exit_code == 0
    assert result.qdq_pairs > 0 and result.int8_layers == result.compute_layers - 1  # the classifier stays float


def test_the_plan_of_the_default_export_is_int8_convs_and_an_fp16_rest(default_export):
    plan = precision_plan(default_export)
    by_node = {n.node: n for n in plan.nodes}
    convs = [n for n in plan.nodes if n.op_type == "Conv"]
    assert convs and all(n.precision == "int8" for n in convs)
    assert all(n.precision == "fp16" for n in plan.nodes if n.op_type != "Conv")
    assert by_node["/classifier/Gemm"].precision == "fp16"  # left in float by the small-layer rule
    assert sum(plan.shares().values()) == pytest.approx(1.0)
    assert plan.shares()["int8"] > 0.9
    assert by_node["/features/features.2/Clip"].group == "/features/features.0/Conv"
    assert by_node["/features/features.4/Add"].group == "/features/features.4/block/block.6/Conv"
    table = plan.table(limit=5)
    assert table.startswith("INT8 ") and "of FLOPs" in table.splitlines()[0]
    assert "more groups" in table and "assumed: input 'image'" in table
    assert json.loads(json.dumps(plan.to_dict()))["counts"] == plan.counts()


def test_conv_flops_are_twice_the_macs_and_follow_the_given_input_shape():
    g = Graph(shape=(1, C, "h", "w"))
    model = g.model(quantized_conv(g))
    default = node_flops(model)
    assert default["conv"] == 2 * (C * 224 * 224) * C * 9
    assert node_flops(model, {"x": [2, C, 8, 8]})["conv"] == 2 * (2 * C * 64) * C * 9
    with pytest.raises(QuantlabError, match="not an input"):
        node_flops(model, {"image": [1, C, 8, 8]})
