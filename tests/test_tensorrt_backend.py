"""TensorRT backend: path choice, calibrator class, trtexec lines, and the no-TensorRT behaviour.

The parts that need TensorRT and a GPU run only where ``import tensorrt`` works and a CUDA device
is present; everything else runs everywhere, without fake TensorRT modules.
"""

from __future__ import annotations

import importlib.util

import pytest

from quantlab import defaults
from quantlab.backends.tensorrt import calibrator_class_name, choose_build_path, trtexec_command
from quantlab.errors import QuantlabError
from quantlab.formats.ranges import read_ranges

from conftest import run_cli

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def has_cuda_device() -> bool:
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False


needs_tensorrt = pytest.mark.skipif(not (HAS_TENSORRT and has_cuda_device()),
                                    reason="needs TensorRT and an NVIDIA GPU (pip install tensorrt pycuda, on a "
                                           "machine with one; this one has neither)")


@pytest.mark.parametrize("version", [(8, 6, 1), (9, 3, 0), (10, 3, 0)])
def test_a_cache_builds_implicitly_through_tensorrt_10(version):
    plan = choose_build_path(version, has_cache=True, model_has_qdq=False)
    assert plan.path == "implicit" and plan.int8_flag and not plan.strongly_typed


def test_tensorrt_11_refuses_a_cache_and_points_to_export_qdq():
    with pytest.raises(QuantlabError, match="removed implicit INT8.*export-qdq"):
        choose_build_path((11, 0, 0), has_cache=True, model_has_qdq=False)


@pytest.mark.parametrize("version,strongly,flag", [((8, 6, 1), False, True), ((10, 3, 0), True, False),
                                                   ((11, 0, 0), True, False)])
def test_a_qdq_model_builds_explicitly(version, strongly, flag):
    plan = choose_build_path(version, has_cache=False, model_has_qdq=True)
    assert (plan.path, plan.strongly_typed, plan.int8_flag) == ("explicit", strongly, flag)


def test_a_plain_model_without_cache_has_nothing_to_build_int8_from():
    with pytest.raises(QuantlabError, match="no Q/DQ nodes and no --cache"):
        choose_build_path((10, 3, 0), has_cache=False, model_has_qdq=False)


def test_the_calibrator_class_follows_the_real_cache_headers(shared_caches):
    minmax = read_ranges(shared_caches / "nt4sth__Torch-TensorRT-VGG16__calibration.cache").trt.algorithm
    entropy = read_ranges(shared_caches / "NicolaSansoni__DeepStream-Yolo__calib.table").trt.algorithm
    assert calibrator_class_name(minmax) == "IInt8MinMaxCalibrator"
    assert calibrator_class_name(entropy) == "IInt8EntropyCalibrator2"
    assert calibrator_class_name("EntropyCalibration") == "IInt8EntropyCalibrator"
    with pytest.raises(QuantlabError, match="TensorRT 4 header"):
        calibrator_class_name(None)


def test_trtexec_lines_for_each_path():
    implicit = choose_build_path((8, 6, 1), has_cache=True, model_has_qdq=False)
    assert trtexec_command("m.onnx", "m.plan", implicit, cache="m.cache", fp16=True) == \
        "trtexec --onnx=m.onnx --int8 --calib=m.cache --fp16 --saveEngine=m.plan"
    explicit8 = choose_build_path((8, 6, 1), has_cache=False, model_has_qdq=True)
    assert trtexec_command("q.onnx", "q.plan", explicit8) == "trtexec --onnx=q.onnx --int8 --saveEngine=q.plan"
    explicit10 = choose_build_path((10, 3, 0), has_cache=False, model_has_qdq=True)
    assert trtexec_command("q.onnx", "q.plan", explicit10) == \
        "trtexec --onnx=q.onnx --stronglyTyped --saveEngine=q.plan"
    explicit11 = choose_build_path((11, 0, 0), has_cache=False, model_has_qdq=True)
    assert trtexec_command("q.onnx", "q.plan", explicit11) == "trtexec --onnx=q.onnx --saveEngine=q.plan"
    shapes = {"image": {"min": [1, 1, 28, 28], "opt": [8, 1, 28, 28], "max": [32, 1, 28, 28]}}
    assert "--optShapes=image:8x1x28x28" in trtexec_command("q.onnx", "q.plan", explicit10, shapes=shapes)


def test_print_trtexec_works_without_tensorrt(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    out = run_cli("build", str(defaults.MODEL), "--cache", "m.cache", "-o", "m.plan", "--print-trtexec",
                  "--trt-version", "8.6.1", cwd=tmp_path, check=True).stdout.strip()
    assert out == f"trtexec --onnx={defaults.MODEL} --int8 --calib=m.cache --saveEngine=m.plan"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the missing-TensorRT message cannot show")
def test_build_without_tensorrt_names_the_package_and_prints_trtexec(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    proc = run_cli("build", str(defaults.MODEL), "--cache", "m.cache", "-o", "m.plan", cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "m.plan").exists()
    message = proc.stderr.strip()
    assert message.count("\n") == 0
    assert "'tensorrt'" in message and "pip install '.[tensorrt]'" in message
    assert "trtexec --onnx=" in message and "--calib=m.cache" in message


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_compare_on_tensorrt_without_tensorrt_is_a_clear_error(tmp_path):
    run_cli("calibrate", "--num-samples", "16", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    proc = run_cli("compare", "--cache", "m.cache", "--backend", "tensorrt", cwd=tmp_path)
    assert proc.returncode == 2 and "TensorRT is not installed" in proc.stderr


@needs_tensorrt
@pytest.mark.parametrize("path", ["implicit", "explicit"])
def test_embedded_model_builds_and_keeps_accuracy_on_tensorrt(tmp_path, path):
    import json

    from quantlab.backends.tensorrt import installed_version

    run_cli("calibrate", "--method", "percentile", "-o", "m.cache", "-q", cwd=tmp_path, check=True)
    if path == "implicit":
        if installed_version()[0] >= 11:
            pytest.skip("TensorRT 11 has no implicit INT8")
        run_cli("build", str(defaults.MODEL), "--cache", "m.cache", "-o", "m.plan", cwd=tmp_path, check=True)
    else:
        run_cli("export-qdq", "--cache", "m.cache", "-o", "q.onnx", cwd=tmp_path, check=True)
        run_cli("build", "q.onnx", "-o", "m.plan", cwd=tmp_path, check=True)
    assert (tmp_path / "m.plan").stat().st_size > 0
    report = json.loads(run_cli("compare", "--cache", "m.cache", "--backend", "tensorrt", "--json", "-q",
                                cwd=tmp_path, check=True).stdout)
    logits = report["outputs"][0]
    assert logits["int8_top1"] > logits["fp32_top1"] - 0.02
