"""The normalised working copy: real exports' quirks on small graphs built with onnx.helper.

Each graph reproduces one thing real exports do (paddle2onnx's Constant weights, torch's -1
batch, a YOLO head's Shape-derived grid, opset 11), and each test checks calibrate/export on
it the way a user would meet it.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantlab.calibrate import calibrate
from quantlab.errors import DataError, ModelError
from quantlab.graph import load_model, upgrade_opset
from quantlab.qdq import QdqOptions, export_qdq
from quantlab.workload import DataSpec

RNG = np.random.default_rng(7)
W = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)

# These graphs are about how weights are found and quantized: the placement that quantizes every
# compute input (no small-layer rule on these tiny layers) and an fp32 remainder.
WEIGHTS_ONLY = QdqOptions(placement="compute", high_precision="fp32")


def conv_model(*, batch="N", opset=13, weight_as="initializer", extra_nodes=(), extra_outputs=(),
               extra_initializers=(), spatial=(8, 8)) -> onnx.ModelProto:
    """x [batch, 3, H, W] -> Conv(W, B) -> Relu -> y, the weight given in one of the ways exports give it."""
    nodes, inits = [], [numpy_helper.from_array(B, "B"), *extra_initializers]
    if weight_as == "initializer":
        inits.append(numpy_helper.from_array(W, "W"))
    elif weight_as == "constant":
        nodes.append(helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W, "W_value")))
    elif weight_as == "identity-chain":  # paddle2onnx: initializer -> Identity -> Conv
        inits.append(numpy_helper.from_array(W.reshape(4, 27), "W_flat"))
        inits.append(numpy_helper.from_array(np.array([4, 3, 3, 3], np.int64), "W_shape"))
        nodes += [helper.make_node("Identity", ["W_flat"], ["W_id"]),
                  helper.make_node("Cast", ["W_id"], ["W_cast"], to=TensorProto.FLOAT),
                  helper.make_node("Reshape", ["W_cast", "W_shape"], ["W"])]
    elif weight_as == "dequantized":  # a model that is already partly quantized
        inits += [numpy_helper.from_array(np.clip(np.rint(W / 0.02), -127, 127).astype(np.int8), "W_q"),
                  numpy_helper.from_array(np.array(0.02, np.float32), "W_s"),
                  numpy_helper.from_array(np.array(0, np.int8), "W_z")]
        nodes.append(helper.make_node("DequantizeLinear", ["W_q", "W_s", "W_z"], ["W"]))
    nodes += [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c"], ["y"], name="relu"), *extra_nodes]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, *spatial])
    outputs = [out("y"), *extra_outputs]
    graph = helper.make_graph(nodes, "g", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def out(name: str, rank: int = 4) -> onnx.ValueInfoProto:
    """A float graph output of known rank and unknown dimensions."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}_{k}" for k in range(rank)])


def save(model: onnx.ModelProto, tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def images(n=16) -> np.ndarray:
    return RNG.random((n, 3, 8, 8), dtype=np.float32)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("weight_as", ["constant", "identity-chain"])
def test_weights_given_through_constant_nodes_or_identity_chains_are_quantized(tmp_path, weight_as):
    graph = load_model(save(conv_model(weight_as=weight_as), tmp_path))
    assert [(w.name, w.axis) for w in graph.weights] == [("W", 0)]
    model, report = export_qdq(graph, {"x": 1.0, "c": 4.0, "y": 4.0}, None, WEIGHTS_ONLY)
    assert report.quantized_weights == ["W"]
    assert any(n.op_type == "DequantizeLinear" and n.output[0].endswith("weight_dequantized") for n in model.graph.node)


def test_the_normalised_copy_computes_what_the_original_computes(tmp_path):
    original = conv_model(weight_as="identity-chain")
    graph = load_model(save(original, tmp_path))
    x = images(2)

    def run(model):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    np.testing.assert_array_equal(run(graph.model), run(original))
    assert "folded" in " ".join(graph.normalisation)


def test_the_users_file_is_never_modified(tmp_path):
    path = save(conv_model(weight_as="constant"), tmp_path)
    before = path.read_bytes()
    graph = load_model(path)
    export_qdq(graph, {"x": 1.0, "c": 4.0, "y": 4.0}, None, WEIGHTS_ONLY)
    assert path.read_bytes() == before
    assert graph.sha256 == __import__("hashlib").sha256(before).hexdigest()


def test_an_already_quantized_weight_is_reported_by_name_not_skipped_silently(tmp_path):
    graph = load_model(save(conv_model(weight_as="dequantized"), tmp_path))
    assert graph.weights == [] and "already quantized" in graph.unquantizable_weights["conv"]
    _, report = export_qdq(graph, {"x": 1.0, "c": 4.0, "y": 4.0}, None, WEIGHTS_ONLY)
    assert "conv" in report.skipped_weights and report.quantized_weights == []


def test_matmul_with_a_constant_left_operand_is_quantized_along_its_rows(tmp_path):
    w = RNG.standard_normal((5, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
                              [out("y", 3)], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    loaded = load_model(save(model, tmp_path))
    assert [(s.name, s.index, s.axis) for s in loaded.weights] == [("W", 0, 0)]
    qdq, report = export_qdq(loaded, {"x": 3.0, "y": 10.0}, None, WEIGHTS_ONLY)
    assert report.quantized_weights == ["W"]
    result = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": RNG.random((2, 4, 6), dtype=np.float32)})[0]
    assert result.shape == (2, 5, 6)


# ---------------------------------------------------------------- opset


def test_an_opset_11_model_is_brought_to_13_for_export_and_says_so(tmp_path):
    graph = load_model(save(conv_model(opset=11), tmp_path))
    model, report = export_qdq(graph, {"x": 1.0, "c": 4.0, "y": 4.0}, None, WEIGHTS_ONLY)
    assert next(o.version for o in model.opset_import if o.domain == "") == 13
    assert any("opset 11 to 13" in note for note in report.notes)
    onnx.checker.check_model(model)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": images(1)})


def test_upgrading_keeps_every_node_output_name(tmp_path):
    original = conv_model(opset=11)
    upgraded, was = upgrade_opset(original, 13)
    assert was == 11
    assert {o for n in original.graph.node for o in n.output} <= {o for n in upgraded.graph.node for o in n.output}


def test_a_model_at_opset_13_or_later_is_left_as_it_is():
    model = conv_model(opset=17)
    assert upgrade_opset(model, 13) == (model, None)


def test_an_opset_that_cannot_be_converted_names_the_op_that_blocks_it():
    # onnx.version_converter has no adapter for opset 1's Pad.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    graph = helper.make_graph([helper.make_node("Pad", ["x"], ["y"], paddings=[0, 0, 1, 1])], "g", [x], [out("y", 2)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 1)])
    with pytest.raises(ModelError, match="from opset 1 to 13.*its Pad nodes"):
        upgrade_opset(model, 13)


# ---------------------------------------------------------------- batch and shapes


@pytest.mark.parametrize("batch", [-1, 0, "batch_size"])
def test_a_batch_axis_written_as_minus_one_zero_or_a_string_is_dynamic(tmp_path, batch):
    model = conv_model(batch=1)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    if isinstance(batch, str):
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = batch
    else:
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    path = save(model, tmp_path)
    np.save(tmp_path / "x.npy", images(20))
    result = calibrate(str(path), DataSpec(str(tmp_path / "x.npy"), batch_size=8), progress=False)
    assert result.statistics.num_samples == 20
    assert load_model(path).inputs[0].fixed_batch is None


def test_dynamic_height_and_width_with_images_of_different_sizes_ask_for_a_resize(tmp_path):
    path = save(conv_model(spatial=("H", "W")), tmp_path)
    samples = [(RNG.integers(0, 255, (h, 12, 3), dtype=np.uint8), None) for h in (10, 14)]
    with pytest.raises(DataError, match="dynamic axes .*resize"):
        calibrate(str(path), DataSpec(samples, batch_size=2), progress=False)


def test_the_table_records_the_shape_a_dynamic_model_was_calibrated_at(tmp_path):
    path = save(conv_model(spatial=("H", "W")), tmp_path)
    np.save(tmp_path / "x.npy", RNG.random((6, 3, 16, 24), dtype=np.float32))
    result = calibrate(str(path), DataSpec(str(tmp_path / "x.npy")), progress=False)
    assert result.table.provenance["data"]["input_shapes"] == {"x": [[3, 16, 24]]}


# ---------------------------------------------------------------- data-independent tensors


def yolo_grid_model() -> onnx.ModelProto:
    """A YOLO-head-like anchor grid: Shape(x) -> ... -> ConstantOfShape/Range -> float grid, added to y."""
    extra = [
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "three"], ["width"], axis=0),
        helper.make_node("Range", ["zero", "width", "one"], ["steps"]),
        helper.make_node("Cast", ["steps"], ["grid"], to=TensorProto.FLOAT),
        helper.make_node("Shape", ["c"], ["c_shape"]),
        helper.make_node("ConstantOfShape", ["c_shape"], ["zeros"],
                         value=numpy_helper.from_array(np.array([0.0], np.float32), "v")),
        helper.make_node("Add", ["y", "grid"], ["shifted"], name="add_grid"),
        helper.make_node("Add", ["shifted", "zeros"], ["z"], name="add_zeros"),
    ]
    constants = [numpy_helper.from_array(np.array(value, np.int64), name)
                 for name, value in (("three", 3), ("zero", 0), ("one", 1))]
    return conv_model(extra_nodes=extra, extra_outputs=[out("z")], extra_initializers=constants)


def test_tensors_computed_from_shapes_are_data_independent_and_get_no_range(tmp_path):
    graph = load_model(save(yolo_grid_model(), tmp_path))
    assert {"grid", "zeros"} <= set(graph.data_independent)
    assert not {"grid", "zeros", "steps", "x_shape"} & set(graph.activations)
    assert {"shifted", "z"} <= set(graph.activations)


def test_an_all_zero_data_independent_tensor_does_not_stop_calibration(tmp_path):
    path = save(yolo_grid_model(), tmp_path)
    np.save(tmp_path / "x.npy", images(8))
    result = calibrate(str(path), DataSpec(str(tmp_path / "x.npy")), progress=False)
    assert "zeros" not in result.table.activations and "z" in result.table.activations


def test_a_cache_from_the_normalised_model_names_only_tensors_of_the_original(tmp_path):
    original = yolo_grid_model()
    path = save(original, tmp_path)
    np.save(tmp_path / "x.npy", images(8))
    result = calibrate(str(path), DataSpec(str(tmp_path / "x.npy")), progress=False)
    names = {vi.name for vi in original.graph.input} | {o for n in original.graph.node for o in n.output}
    assert set(result.table.activations) <= names


def test_a_weight_shared_by_two_convs_is_quantized_once_and_used_by_both(tmp_path):
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "W"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [out("y")], [numpy_helper.from_array(W, "W")])
    loaded = load_model(save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path))
    assert [spec.node for spec in loaded.weights] == ["conv_a", "conv_b"]
    model, report = export_qdq(loaded, {"x": 1.0, "a": 4.0, "b": 4.0, "y": 8.0}, None, WEIGHTS_ONLY)
    assert report.quantized_weights == ["W"]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs[0].input[1] == convs[1].input[1] == "W_weight_dequantized"


def test_an_initializer_read_only_inside_a_subgraph_survives_normalisation(tmp_path):
    then_branch = helper.make_graph([helper.make_node("Add", ["x", "offset"], ["then_out"])], "then", [],
                                    [out("then_out", 2)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["else_out"])], "else", [],
                                    [out("else_out", 2)])
    nodes = [helper.make_node("Constant", [], ["flag"], value=numpy_helper.from_array(np.array(True), "f")),
             helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [out("y", 2)], [numpy_helper.from_array(np.ones(4, np.float32), "offset")])
    loaded = load_model(save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path))
    assert "offset" in {init.name for init in loaded.model.graph.initializer}
    x = RNG.random((2, 4), dtype=np.float32)
    result = ort.InferenceSession(loaded.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(result, x + 1)
