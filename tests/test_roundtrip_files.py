"""Real files that TensorRT's tools wrote (../shared/trt-artifacts, INDEX.md says what each is) read
back: the facts each file holds, as the INDEX states them, and clear errors for files that are not
what they claim to be."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantlab.errors import DataError
from quantlab.roundtrip.inspect import inspect
from quantlab.roundtrip.layers import names_in, precision_of, read_layer_info
from quantlab.roundtrip.outputs import read_engine_outputs
from quantlab.roundtrip.polygraphy import PolygraphyInputs, read_inputs
from quantlab.roundtrip.trtexec import read_export_output, read_profile


@pytest.fixture(scope="module")
def real(trt_artifacts):
    """A file of ../shared/trt-artifacts by name (INDEX.md there says what each is)."""
    return lambda name: trt_artifacts / name


# ------------------------------------------------------------------------------------------ layer info


def test_detailed_qat_mobilenet_counts_int8_fp16_fp32_layers_as_the_index_says(real):
    engine = read_layer_info(real("NVIDIA__TensorRT__mobilenet.qat.onnx.engine.graph.json"))
    assert (engine.form, len(engine.layers)) == ("detailed", 73)
    assert engine.counts() == {"int8": 53, "fp16": 15, "fp32": 5}
    assert sum(1 for layer in engine.layers if layer.touches_int8) == 70


def test_a_fused_depthwise_layer_names_its_quantize_conv_and_clip_nodes(real):
    engine = read_layer_info(real("NVIDIA__TensorRT__mobilenet.qat.onnx.engine.graph.json"))
    layer = next(x for x in engine.layers if x.name.startswith("features.1.conv.0.0.weight"))
    assert layer.layer_type == "CudaDepthwiseConvolution"
    assert layer.onnx_nodes[1:] == ["QuantizeLinear_25", "Conv_29", "Clip_33"]
    assert layer.computes_int8 and layer.precision == "int8"


def test_fp16_resnet_has_no_int8_layer(real):
    engine = read_layer_info(real("NVIDIA__TensorRT__resnet.onnx.engine.graph.json"))
    assert len(engine.layers) == 36 and engine.counts() == {"fp16": 35, "fp32": 1}


def test_tensorrt_10_qat_yolo_counts_and_reads_fused_nodes_from_metadata(real):
    engine = read_layer_info(real("mathisL04__Medtronic-UCL-QAT__qat_batch32_layer_info.json"))
    assert len(engine.layers) == 245
    assert engine.counts() == {"int8": 143, "fp16": 62, "fp32": 40}
    assert sum(1 for layer in engine.layers if layer.touches_int8) == 193
    first_conv = next(x for x in engine.layers if "/model.1/conv/Conv" in x.name)
    assert "/model.1/conv/Conv" in first_conv.onnx_nodes and "/model.1/act/Mul" in first_conv.onnx_nodes


def test_implicit_ptq_yolo_engine_is_read_in_the_same_form(real):
    engine = read_layer_info(real("mathisL04__Medtronic-UCL-QAT__ptq_int8_layer_info.json"))
    layer = next(x for x in engine.layers if x.name.startswith("/model.0/conv/Conv"))
    assert layer.onnx_nodes == ["/model.0/conv/Conv", "/model.0/act/Sigmoid", "/model.0/act/Mul"]
    assert engine.counts()["int8"] > engine.counts()["fp32"]


def test_fp16_controlnet_counts_half_float_and_one_int32_layer(real):
    engine = read_layer_info(real("yuanjiechen__trt2023__layerinfo.json"))
    assert len(engine.layers) == 388 and engine.counts() == {"fp16": 351, "fp32": 36, "int32": 1}


def test_tensorrt_10_bare_datatypes_and_record_separated_metadata(real):
    engine = read_layer_info(real("NVIDIA__trt-samples-for-hackathon-cn__model-trained-exportLayerInfo.log"))
    assert len(engine.layers) == 9 and engine.counts() == {"fp32": 8, "int64": 1}
    assert engine.layers[0].onnx_nodes == ["node_conv2d", "node_relu"]
    assert engine.bindings == ["x", "y", "z"]


def test_names_only_detr_layer_info_has_names_and_bindings_but_no_types(real):
    engine = read_layer_info(real("farabimahmud__detr-logs-trtexec__detr-layer-info.json"))
    assert (engine.form, len(engine.layers)) == ("names", 840)
    assert engine.bindings == ["image", "boxes", "logits", "classes"]
    assert not engine.has_types and engine.counts() == {}
    fused = next(x for x in engine.layers if x.name.startswith("/model/model/encoder/layers.0/fc1/MatMul"))
    assert fused.onnx_nodes == ["/model/model/encoder/layers.0/fc1/MatMul", "/model/model/encoder/layers.0/fc1/Add"]


def test_names_only_and_verbose_log_of_the_same_build_list_the_same_39_layers(real):
    names = read_layer_info(real("leimao__PyTorch-Eager-Mode-Quantization-TensorRT-Acceleration__"
                                 "resnet_cifar10_int8_layer_info.json"))
    log = read_layer_info(real("leimao__PyTorch-Eager-Mode-Quantization-TensorRT-Acceleration__"
                               "resnet_cifar10_int8_build_log.txt"))
    assert log.form == "log" and [x.name for x in log.layers] == [x.name for x in names.layers]
    assert len(log.layers) == 39 and log.counts() == {"int8": 38, "fp32": 1}
    assert log.layers[-1].name == "/dequant/DequantizeLinear" and log.layers[-1].computes_int8


def test_tensorrt_11_separate_datatype_and_format_keys_are_read(tmp_path):
    layer = {"Name": "/conv/Conv", "LayerType": "CaskConvolution",
             "Inputs": [{"Name": "x", "Datatype": "Int8", "Format": "Thirty-two wide channel vectorized row major"}],
             "Outputs": [{"Name": "y", "Datatype": "Half", "Format": "Row major linear"}],
             "Metadata": "[ONNX Layer: /conv/Conv]"}
    path = tmp_path / "layers.json"
    path.write_text(json.dumps({"Layers": [layer], "Bindings": ["x", "y"]}))
    engine = read_layer_info(path)
    assert engine.layers[0].computes_int8 and engine.layers[0].precision == "fp16"


@pytest.mark.parametrize("text, precision", [
    ("Thirty-two wide channel vectorized row major Int8 format", "int8"), ("Row major linear FP32", "fp32"),
    ("Channel major FP16 format where channel % 8 == 0", "fp16"), ("Half", "fp16"), ("Float", "fp32"),
    ("Row major linear Int32", "int32"), ("UInt8", "uint8"), ("", None)])
def test_tensor_descriptions_map_to_precisions(text, precision):
    assert precision_of(text) == precision


def test_layer_names_split_into_onnx_names_outside_brackets():
    assert names_in("w + /a/Conv + PWN(PWN(/a/Sigmoid), PWN(/a/Mul))") == ["w", "/a/Conv", "/a/Sigmoid", "/a/Mul"]
    assert names_in("{ForeignNode[/x/MatMul.../x/Softmax]}") == ["/x/MatMul", "/x/Softmax"]
    assert names_in("Reformatting CopyNode for Input Tensor 0 to /a/Conv") == []
    assert names_in("__myl_MulMinMaxRounCast_myl0_0") == []


# ------------------------------------------------------------------------------------------ profiles


def test_profile_names_match_the_layer_info_of_the_same_engine(real):
    profile = read_profile(real("NVIDIA__TensorRT__mobilenet.qat.onnx.engine.profile.json"))[0]
    engine = read_layer_info(real("NVIDIA__TensorRT__mobilenet.qat.onnx.engine.graph.json"))
    assert (profile.runs, len(profile.layers)) == (6610, 73)
    result = inspect(engine, profile=profile)
    assert result.notes == [] and sum(result.time_shares().values()) == pytest.approx(1.0)
    assert max(result.time_shares(), key=result.time_shares().get) == "int8"


@pytest.mark.parametrize("name, runs, entries", [
    ("farabimahmud__detr-logs-trtexec__detr-profile.json", 641, 840),
    ("mathisL04__Medtronic-UCL-QAT__qat_batch32_per_kernel_profile.json", 3198, 245)])
def test_profiles_count_runs_and_layers(real, name, runs, entries):
    profile = read_profile(real(name))[0]
    assert (profile.runs, len(profile.layers)) == (runs, entries)


def test_tensorrt_7_profiles_concatenated_by_a_script_are_one_profile_each_without_medians(real):
    profiles = read_profile(real("shafikahdarwis__jetson-trtexec__profile_googlenet_None_int8_10.json"))
    assert len(profiles) == 7 and profiles[0].runs == 1520
    assert all(t.median_ms is None for t in profiles[0].layers)


# ------------------------------------------------------------------------------------------ outputs and inputs


def test_polygraphy_outputs_of_a_real_engine_are_read_with_their_types(real):
    engine = read_engine_outputs(real("NVIDIA__trt-samples-for-hackathon-cn__output.json"))
    assert engine.tool == "polygraphy" and engine.runner.startswith("trt-runner-N0")
    logits, argmax = engine.arrays["A-V-12-Add"], engine.arrays["A-V-14-ArgMax"]
    assert (logits.shape, logits.dtype, argmax.dtype) == ((4, 10), np.float32, np.int32)
    assert np.array_equal(logits.argmax(axis=1), argmax)  # the engine's own ArgMax agrees with its logits


def test_polygraphy_inputs_of_a_real_run_are_a_data_set_of_their_samples(real):
    feeds = read_inputs(real("NVIDIA__trt-samples-for-hackathon-cn__input.json"))
    x = feeds[0]["tensorX"]
    assert (len(feeds), x.shape, x.dtype) == (1, (4, 1, 28, 28), np.float32) and 0 <= x.min() and x.max() < 1
    data = PolygraphyInputs(real("NVIDIA__trt-samples-for-hackathon-cn__input.json"))
    assert len(data) == 4 and np.array_equal(data[3][0], x[3])
    assert PolygraphyInputs.detect(str(real("NVIDIA__trt-samples-for-hackathon-cn__input.json")))
    assert not PolygraphyInputs.detect(str(real("NVIDIA__trt-samples-for-hackathon-cn__output.json")))


def test_trtexec_implicit_batch_outputs_concatenated_over_seven_batch_sizes_stack_to_253_samples(real):
    path = real("shafikahdarwis__jetson-trtexec__output_googlenet_None_int8_10.json")
    assert [len(it["prob"]) for it in read_export_output(path)] == [1, 4, 8, 16, 32, 64, 128]
    engine = read_engine_outputs(path)
    assert engine.tool == "trtexec" and engine.arrays["prob"].shape == (253, 1000, 1, 1)
    # no calibrator was given ("Calibration: Dynamic"): every probability is about 1/1000
    assert np.allclose(engine.arrays["prob"], 1e-3, atol=2e-4)


# ------------------------------------------------------------------------------------------ bad files


def test_a_truncated_layer_info_says_it_is_truncated(real, tmp_path):
    text = real("NVIDIA__TensorRT__resnet.onnx.engine.graph.json").read_text()
    cut = tmp_path / "layers.json"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_layer_info(cut)


def test_a_profile_given_as_layer_info_is_named_for_what_it_is(real):
    with pytest.raises(DataError, match="looks like --exportProfile output"):
        read_layer_info(real("NVIDIA__TensorRT__mobilenet.qat.onnx.engine.profile.json"))


def test_layer_info_given_as_engine_outputs_is_refused(real):
    with pytest.raises(DataError, match="not trtexec --exportOutput output"):
        read_engine_outputs(real("NVIDIA__TensorRT__resnet.onnx.engine.graph.json"))


def test_polygraphy_inputs_given_as_outputs_are_refused(real):
    with pytest.raises(DataError, match="holds inputs"):
        read_engine_outputs(real("NVIDIA__trt-samples-for-hackathon-cn__input.json"))


def test_a_text_file_that_is_neither_json_nor_a_build_log_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match="Engine Layer"):
        read_layer_info(path)
